"""`proseflow plan`: the bill of a config from a throughputs file, without running anything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proseflow import plan as P
from proseflow.stages import settings as S

ROOT = Path(__file__).resolve().parents[1]
RATES = {"hardware": "test", "md_atom_steps_per_s": 1.0e5,
         "train": {p: {"batch": 16, "atoms": 157, "s_per_step": 0.5} for p in ("tiny", "small", "paper", "released")},
         "flow_atom_samples_per_s": {p: 1.0e4 for p in ("tiny", "small", "paper", "released")},
         "energy_atom_evals_per_s": 2.0e5, "store_bytes_per_atom_frame": 6.0, "eval_s_per_job": 10.0,
         "measured": ["md_atom_steps_per_s"]}


def rates(tmp_path, **over):
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({**RATES, **over}))
    return path


@pytest.mark.parametrize("seq", ["AA", "WA", "GYDP", "DGVAHALS", "RKWY"])
def test_atom_counts_match_the_built_peptides(seq):
    from proseflow.physics.structures import build_peptide

    assert P.atoms_of(seq) == build_peptide(seq)[0].getNumAtoms()


def test_the_arithmetic_on_a_small_config(tmp_path):
    """Each row is rate x work as the module docstring states it, recomputed here from the config by hand."""
    config = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")
    t = P.Throughputs.load(rates(tmp_path))
    rows = {r["stage"]: r for r in P.make_plan(config, t)["rows"]}
    md = config["md"]
    # reference MD of the test systems the demo simulates (AA's and WA's are shipped files)
    ref = md["reference"]
    steps = (md["burn_in_ps"] + ref["length_ps"]) * 1000 / md["timestep_fs"]
    simulated = ["DGVAHALS"] + [f"WA@{T}" for T in (400.0,)]  # temperature transfer: WA at 400 K
    atoms = sum(P.atoms_of(s.split("@")[0]) for s in simulated)
    assert rows["md_reference"]["jobs"] == 2
    assert rows["md_reference"]["seconds"] == pytest.approx(atoms * steps / 1.0e5)
    assert rows["md_reference"]["basis"] == "measured"
    # training MD: the drawn sets at their expected size
    tr = md["train"]
    counts = {int(k): v for k, v in config["sequences"]["train_counts"].items() if v}
    steps = (md["burn_in_ps"] + tr["length_ps"]) * 1000 / md["timestep_fs"]
    expected = sum(c * (16.2 * n + 3) for n, c in counts.items())
    assert rows["md_train"]["seconds"] == pytest.approx(expected * steps / 1.0e5)
    # training: steps x s/step x tokens / probe tokens, padded to the expected longest system
    tc = config["train"]
    padded = P.expected_longest(max(counts))
    assert rows["train (prose)"]["seconds"] == pytest.approx(tc["max_steps"] * 0.5 * tc["batch_size"] * padded / (16 * 157))
    assert "train (prose) compile" not in rows  # 150 steps: train.compile auto stays eager
    # SNIS: one energy per proposal; AA and WA with their shipped models' own proposals, the rest with the demo's
    n_aa, n_wa, n_shared = 10000, 5000, config["sampling"]["n_proposals"]
    snis = (n_aa * P.atoms_of("AA") + n_wa * P.atoms_of("WA") + n_shared * P.atoms_of("DGVAHALS")  # eval models
            + n_shared * (P.atoms_of("AA") * 2 + P.atoms_of("WA") * 2 + P.atoms_of("DGVAHALS"))  # variants (Table 3)
            + n_wa * P.atoms_of("WA") * 2) / 2.0e5  # temperature transfer: WA at 400 K, two priors (310 K: WA's page)
    assert rows["snis"]["jobs"] == 3 + 5 + 2 and rows["snis"]["seconds"] == pytest.approx(snis)
    plan = P.make_plan(config, t)
    assert plan["total_s"] == pytest.approx(sum(r["seconds"] for r in plan["rows"]))
    assert plan["dominant"] == max(plan["rows"], key=lambda r: r["seconds"])["stage"]


def test_a_named_training_set_and_a_resized_variant_are_priced_as_they_are(tmp_path):
    """A named training set is priced by its own atoms (not a drawn set's expected size); a variant that overrides
    its preset's channels costs its parameters over the preset's (the AA study: 64 of small's 128 channels)."""
    config = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "study_aa.yaml", ROOT / "configs" / "study_aa_long.yaml")
    t = P.Throughputs.load(rates(tmp_path))
    rows = {r["stage"]: r for r in P.make_plan(config, t)["rows"]}
    cfg = S.build("train", config, model="aa_long").config
    assert cfg.model["channels"] == 64 and cfg.model_preset == "small"
    size = P._parameters("small", {"channels": 64}) / P._parameters("small", {})
    assert 0.2 < size < 0.3
    expected = cfg.max_steps * 0.5 * size * cfg.batch_size * P.atoms_of("AA") / (16 * 157)
    assert rows["train (aa_long)"]["seconds"] == pytest.approx(expected)
    assert rows["train (aa_long)"]["basis"].endswith("scaled")


def test_md_is_priced_per_context_by_its_atom_pairs(tmp_path):
    """With the pair model, each context (a job of batched systems, or one system's replicas as copies) costs
    steps x (overhead + pairs / rate): recomputed here by hand for the demo's reference and validation MD."""
    config = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")
    t = P.Throughputs.load(rates(tmp_path, md_step_overhead_s=1e-3, md_pair_steps_per_s=4e6))
    rows = {r["stage"]: r for r in P.make_plan(config, t)["rows"]}
    md = config["md"]
    steps = (md["burn_in_ps"] + md["reference"]["length_ps"]) * 1000 / md["timestep_fs"]
    pairs = [n * (n - 1) / 2 for n in (P.atoms_of("DGVAHALS"), P.atoms_of("WA"))]  # WA at 400 K (310 K's is shipped)
    assert rows["md_reference"]["seconds"] == pytest.approx(steps * (2 * 1e-3 + sum(pairs) / 4e6))
    val = (md["burn_in_ps"] + md["val"]["length_ps"]) * 1000 / md["timestep_fs"]
    pairs_val = sum(P.atoms_of(s) * (P.atoms_of(s) - 1) / 2 for s in config["sequences"]["val"])
    assert rows["md_val"]["seconds"] == pytest.approx(val * (1 * 1e-3 + pairs_val / 4e6))  # one job of 2 systems
    with pytest.raises(P.ThroughputsError, match="come together"):
        P.Throughputs.load(rates(tmp_path, md_step_overhead_s=1e-3))


def test_the_paper_config_at_the_papers_rate_costs_the_papers_training():
    """500k steps at 260 iterations per H100-hour: about 1,900 H100-hours (PAPER.md)."""
    config = S.load_config(ROOT / "config.yaml")
    t = P.Throughputs.load(ROOT / "benchmarks" / "throughputs" / "paper_h100.json")
    row = next(r for r in P.make_plan(config, t)["rows"] if r["stage"] == "train (prose)")
    assert row["seconds"] / 3600 == pytest.approx(500_000 / 260, rel=0.01) and row["basis"] == "quoted"


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_preset_has_a_plan(tmp_path, preset):
    base = ("study_aa.yaml",) if preset.startswith("study_aa_") else ()  # add-ons layer over the AA study
    config = S.load_config(ROOT / "config.yaml", *(ROOT / "configs" / p for p in (*base, preset)))
    plan = P.make_plan(config, P.Throughputs.load(rates(tmp_path)))
    assert plan["total_s"] > 0 and plan["rows"]


@pytest.mark.parametrize("over,message", [
    ({"md_atom_steps_per_s": -1.0}, "md_atom_steps_per_s must be a positive number, got -1.0"),
    ({"eval_s_per_job": "fast"}, "eval_s_per_job must be a positive number, got 'fast'"),
    ({"train": {"tiny": {"batch": 16, "atoms": 157}}}, "train.tiny has no 's_per_step'"),
    ({"md_steps_per_s": 1.0}, "unknown key(s) ['md_steps_per_s']"),
])
def test_a_bad_throughputs_file_is_refused_naming_the_key(tmp_path, over, message):
    path = rates(tmp_path, **over)
    with pytest.raises(P.ThroughputsError) as e:
        P.Throughputs.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_a_missing_rate_is_named(tmp_path):
    data = {k: v for k, v in RATES.items() if k != "energy_atom_evals_per_s"}
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(data))
    with pytest.raises(P.ThroughputsError, match=r"missing key\(s\) \['energy_atom_evals_per_s'\]"):
        P.Throughputs.load(path)
    config = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")
    no_tiny = P.Throughputs.load(rates(tmp_path, train={"small": RATES["train"]["small"]}))
    with pytest.raises(P.ThroughputsError, match="no training rate for preset 'tiny'"):
        P.make_plan(config, no_tiny)


def test_the_command_prints_the_bill_and_runs_nothing(tmp_path):
    for name in ("config.yaml",):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    path = rates(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "proseflow", "plan", "--configfile", "configs/demo.yaml",
                           "--throughputs", str(path), "--json", "plan.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dominated by" in proc.stdout and "md_reference" in proc.stdout and "+/- 30%" in proc.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "configs", "plan.json", "rates.json"]
    bad = subprocess.run([sys.executable, "-m", "proseflow", "plan", "--throughputs", str(tmp_path / "none.json")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "none.json: cannot read a throughputs file" in bad.stdout
    folder = subprocess.run([sys.executable, "-m", "proseflow", "plan", "--configfile", "configs/demo.yaml",
                             "--throughputs", str(path), "--compare", "configs"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert folder.returncode == 2 and "--compare 'configs' is not a file" in folder.stdout, folder.stdout + folder.stderr


def test_job_times_read_a_snakemake_log():
    """Per stage, each job's wall time from its start stamp to its "Finished jobid" (jobs side by side overlap)."""
    log = """[Mon Dec  7 06:21:07 2026]
localrule sample_smc:
    output: results/samples/prose/WA/smc_mala.npz
    jobid: 22
    wildcards: model=prose, seq=WA, kernel=mala
    threads: 2
[Mon Dec  7 06:21:09 2026]
rule simulate_batch:
    jobid: 3
    wildcards: split=val, batch=00000
[Mon Dec  7 06:21:15 2026]
Finished jobid: 22 (Rule: sample_smc)
[Mon Dec  7 06:22:09 2026]
Finished jobid: 3 (Rule: simulate_batch)
"""
    assert P.job_times(log) == {"smc_mala": 8.0, "md_val": 60.0}


def test_a_model_used_as_is_is_priced_by_the_config_in_its_file(tmp_path, monkeypatch):
    """The demo's shipped AA and dipeptide models are 64-channel files under ``preset: small`` (128 channels): their
    sampling is priced by the file's own size, and only theirs (AA: 10,000 proposals; WA: 5,000 for its page and
    for each of the temperature study's two conditions at 400 K)."""
    monkeypatch.chdir(ROOT)
    config = S.load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")
    t = P.Throughputs.load(rates(tmp_path))
    shipped = {m: P.file_flow_config(config["models"][m]) for m in ("aa", "dipeptides")}
    assert all(fc is not None and fc["channels"] == 64 for fc in shipped.values())
    assert P.file_flow_config(config["models"]["prose"]) is None  # trained here: sized by its preset
    size = {m: P._size_factor("small", {}, fc) for m, fc in shipped.items()}
    assert all(0.1 < s < 0.5 for s in size.values())
    by_file = {r["stage"]: r for r in P.make_plan(config, t)["rows"]}["sample"]["seconds"]
    monkeypatch.setattr(P, "file_flow_config", lambda spec: None)
    by_preset = {r["stage"]: r for r in P.make_plan(config, t)["rows"]}["sample"]["seconds"]
    saved = ((1 - size["aa"]) * 10_000 * P.atoms_of("AA") + (1 - size["dipeptides"]) * 5_000 * 3 * P.atoms_of("WA")) / 1.0e4
    assert by_preset - by_file == pytest.approx(saved)
