"""Real Snakemake runs of the workflow in a scratch copy of the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import mdtraj
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {
    "sequences": {"train_counts": {2: 2, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}, "val": ["AL"], "test": ["WA"]},
    "md": {"burn_in_ps": 0.05, "checkpoint_interval_s": 30,
           "train": {"length_ps": 0.5, "save_interval_ps": 0.05, "systems_per_job": 2},
           "val": {"length_ps": 0.5, "save_interval_ps": 0.05, "systems_per_job": 2},
           "reference": {"length_ps": 0.5, "save_interval_ps": 0.05}},
}


@pytest.fixture
def workdir(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("workflow", "configs", "envs", "src", "models"):  # models: the demo's shipped files (read only)
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return tmp_path


def run(workdir, *args, check=True, configs=("tiny.yaml",)):
    proc = subprocess.run([*SNAKEMAKE, *args, "--cores", "2", "--configfile", *configs], cwd=workdir,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def test_any_sequence_target_builds_only_what_it_needs(workdir):
    proc = run(workdir, "results/md/GYDPETGTWG.h5")
    log = proc.stdout + proc.stderr
    assert "enumerate_sequences" not in log and "simulate_batch" not in log
    traj = mdtraj.load(str(workdir / "results/md/GYDPETGTWG.h5"))
    assert traj.n_frames == 10 and traj.n_residues == 10
    assert (workdir / "results/structures/GYDPETGTWG.pdb").exists()


def test_invalid_target_fails_early_naming_the_letter(workdir):
    proc = run(workdir, "results/md/GXDP.h5", check=False)
    assert proc.returncode != 0
    assert "invalid residue letter(s) 'X'" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists() or not list((workdir / "results").rglob("*.h5"))


def test_malformed_config_is_named(workdir):
    (workdir / "bad.yaml").write_text(yaml.safe_dump({"md": {"timestep_fs": "fast"}}))
    proc = run(workdir, "-n", check=False, configs=("tiny.yaml", "bad.yaml"))
    assert proc.returncode != 0 and "timestep_fs" in proc.stdout + proc.stderr


def test_batched_training_md_and_test_md(workdir):
    run(workdir, "results/md/train/batch00000", "results/md/WA.h5")
    batch = workdir / "results/md/train/batch00000"
    train = (workdir / "results/sequences/train.csv").read_text().split()[1:]
    assert len(train) == 2
    for row in train:
        seq = row.split(",")[0]
        traj = mdtraj.load(str(batch / f"{seq}.h5"))
        assert traj.n_frames == 10 and traj.n_residues == 2
        assert (batch / f"{seq}.pdb").exists()
    assert not list(batch.parent.glob(".*"))  # no leftover work or tmp dirs


def test_paper_config_dry_run(workdir):
    proc = subprocess.run([*SNAKEMAKE, "-n", "--cores", "2", "--quiet", "rules"], cwd=workdir, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "simulate_batch" in proc.stdout and "343" in proc.stdout


def test_temperature_transfer_at_the_config_temperature_reuses_the_reference_md(workdir):
    """The demo's temperature study (WA at 310 and 400 K): 310 K is the config's own temperature, so its pages
    read results/md/WA.h5; only 400 K gets an MD of its own (the demo used to run WA's 310 K MD twice)."""
    dry = run(workdir, "-n", "results/eval/T310K_plain/WA.json", "results/eval/T400K_plain/WA.json",
              configs=("configs/demo.yaml",)).stdout
    assert "results/md/WA_400K.h5" in dry and "results/md/WA.h5" in dry and "_310K" not in dry, dry[-3000:]
    # and the temperature page reads WA's main evaluation for both priors at 310 K (the same proposal, the same seed)
    # rather than sampling, reweighting and evaluating it twice more
    dry = run(workdir, "-n", "results/eval/temperature.html", configs=("configs/demo.yaml",)).stdout
    assert "T400K_plain/WA.json" in dry and "T400K_scaled/WA.json" in dry and "results/eval/WA.json" in dry
    assert "T310K_" not in dry, dry[-3000:]


def test_lower_case_target_says_sequences_are_upper_case(workdir):
    proc = run(workdir, "-n", "results/md/gydp.h5", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MissingRule" not in log
    assert "upper-case one-letter amino-acid codes" in log and "did you mean GYDP?" in log


def test_named_pages_are_not_read_as_lower_case_sequences(workdir):
    """results/eval/budget.html fits results/eval/{cond}{seq}.html with seq "t"; a rule makes it as named."""
    proc = run(workdir, "-n", "--forcerun", "budget_report", "results/eval/budget.html", "results/eval/temperature.html",
               "results/eval/summary.html", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "invalid target" not in log, log[-2000:]


@pytest.mark.parametrize("configs", [(), ("configs/demo.yaml",)])
def test_workflow_is_lint_clean(workdir, configs):
    """`snakemake --lint` reports nothing for the paper config and the demo preset."""
    args = [*SNAKEMAKE, "--lint", *(["--configfile", *configs] if configs else [])]
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out and "good condition" in out, out[-3000:]


TYPOS = [  # (preset fragment, what the error must say): issue 19's typos and a wrong type
    ("train: {lrr: 1.0e-3}", "train.lrr: unknown key; did you mean train.lr?"),
    ("smc: {ula: {n_level: 50}}", "smc.ula.n_level: unknown key; did you mean smc.ula.n_levels?"),
    ("models: {prose: {preset: tiny, overrides: {chanels: 64}}}",
     "models.prose.overrides.chanels: unknown key; did you mean models.prose.overrides.channels?"),
    ("train: {lr: fast}", "train.lr: expected a number, got 'fast'"),
]


@pytest.mark.parametrize("base", [(), ("configs/demo.yaml",)], ids=["config.yaml", "demo"])
@pytest.mark.parametrize("fragment,message", TYPOS, ids=["train.lrr", "smc.ula.n_level", "overrides.chanels", "lr=fast"])
def test_a_typo_fails_the_dry_run_naming_the_key(workdir, base, fragment, message):
    """A typo or a wrong type fails `snakemake -n` (seconds), not the training job after every MD job has run."""
    (workdir / "typo.yaml").write_text(fragment + "\n")
    proc = run(workdir, "-n", check=False, configs=(*base, "typo.yaml") if base else ("typo.yaml",))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-2000:]
    assert "Traceback" not in out and not (workdir / "results").exists()


@pytest.mark.slow
def test_an_imported_model_is_evaluated_without_training(workdir):
    """configs/released.yaml with the fixture's weights: the dry run imports and never trains or runs training MD;
    a system's page made from the imported (random-weight) model renders and says the model is imported."""
    fixture = REPO / "tests" / "data" / "prose-fixture" / "prose_fixture.pth"
    (workdir / "imported.yaml").write_text(yaml.safe_dump({
        "models": {"prose_released": {"preset": "released", "weights": str(fixture), "overrides": {"head_dim": 16}}},
        "sampling": {"n_proposals": 64, "batch_size": 64},
        "md": {"reference": {"length_ps": 4.0, "save_interval_ps": 0.02}},
        "eval": {"n_metric": 50, "reference_frames": 200, "tica_lag_ps": 0.1, "kmeans_k": 3},
        "samplers": ["snis"]}))
    configs = ("configs/released.yaml", "tiny.yaml", "imported.yaml")
    dry = run(workdir, "-n", configs=configs)
    out = dry.stdout + dry.stderr
    assert "import_model" in out and "train_model" not in out and "simulate_batch" not in out
    run(workdir, "results/eval/WA.html", configs=configs)
    page = (workdir / "results/eval/WA.html").read_text()
    assert "imported from" in page and "prose_fixture.pth" in page
    import json

    meta = json.loads((workdir / "results/eval/WA.json").read_text())["metadata"]
    assert meta["model"] == "prose_released" and meta["model_source"].startswith("imported")
    assert (workdir / "results/models/prose_released/provenance.json").is_file()


def test_a_complete_tree_stays_complete_whichever_way_snakemake_starts(workdir, tmp_path_factory):
    """No rule's params or shell text holds the interpreter or the checkout path: after a run with
    `python -m snakemake`, the venv's `snakemake` script and a moved checkout both plan 0 jobs (issue 19)."""
    target = "results/md/GA.h5"
    run(workdir, target)
    script = Path(sys.executable).with_name("snakemake")
    for cmd, cwd in (([str(script)], workdir), (SNAKEMAKE, None)):
        if cwd is None:  # the same tree in another place: a moved checkout
            cwd = tmp_path_factory.mktemp("moved") / "checkout"
            shutil.move(str(workdir), str(cwd))
        proc = subprocess.run([*cmd, "-n", target, "--cores", "2", "--configfile", "tiny.yaml"], cwd=cwd,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Nothing to be done" in out, out[-2000:]


@pytest.mark.parametrize("target,seq", [("results/eval/dgvahals.html", "dgvahals"),
                                        ("results/eval/T400K_scaled/wa.html", "wa")])
def test_a_lower_case_page_target_names_the_whole_sequence(workdir, target, seq):
    """issue 19: the {cond} segment no longer swallows the sequence's letters ('s' is not upper case), and a
    page under a temperature condition gets the same message instead of a bare MissingRuleException."""
    proc = run(workdir, "-n", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid target" in out and repr(seq) in out and "upper case" in out, out[-1500:]
    assert "MissingRuleException" not in out


def _shipped_aa(workdir, **extra):
    """A config evaluating AA with the shipped model and reference MD (models/aa), small budgets."""
    aa = REPO / "models" / "aa"
    cfg = {"sequences": {"test": ["AA"]},
           "md": {"reference_files": {"AA": str(aa / "reference_md.h5")}},
           "models": {"aa": {"preset": "small", "file": str(aa / "model.pt"), "systems": ["AA"],
                             "settings": {"sampling": {"n_proposals": 96, "batch_size": 96},
                                          "eval": {"n_metric": 60, "reference_frames": 400, "tica_lag_ps": 10.0,
                                                   "kmeans_k": 3}}}},
           "samplers": ["snis"], **extra}
    (workdir / "shipped.yaml").write_text(yaml.safe_dump(cfg))
    return ("tiny.yaml", "shipped.yaml")


@pytest.mark.slow
def test_a_shipped_model_and_reference_are_used_as_is(workdir):
    """models.<name>.file + systems and md.reference_files: the dry run copies the model and the reference MD
    instead of training or simulating for AA; AA's page is the shipped model's, with its own sampling settings
    (96 proposals where the shared ones say 1000), says it is shipped and that AA was in its training set."""
    import json

    configs = _shipped_aa(workdir)
    dry = run(workdir, "-n", "results/eval/AA.html", configs=configs)
    out = dry.stdout + dry.stderr
    assert "import_model" in out and "adopt_reference" in out
    assert "simulate_reference" not in out and "train_model" not in out
    run(workdir, "results/eval/AA.html", configs=configs)
    result = json.loads((workdir / "results/eval/AA.json").read_text())
    meta = result["metadata"]
    assert result["model"] == "aa" and meta["model_source"].startswith("shipped from")
    assert meta["in_training_set"] is True  # the shipped model's own training set (PROVENANCE.json), not this run's
    assert len(np.load(workdir / "results/samples/aa/AA/proposals.npz")["log_q"]) == 96
    assert meta["tica_lag_frames"] == 20  # 10 ps at the shipped file's 0.5 ps spacing, not the config's MD spacing
    page = (workdir / "results/eval/AA.html").read_text()
    assert "shipped from" in page and "Noise floor of the reference" in page
    assert result["noise_floor"]["replicas"] == 10 and result["noise_floor"]["energy_w2"] > 0
    copied = mdtraj.load(str(workdir / "results/md/AA.h5"))
    assert copied.n_frames == 10000 and copied.n_atoms == 23


def test_a_reference_file_of_another_system_is_refused(workdir):
    """A reference MD file must be the system's: AA's trajectory given for WA fails naming both."""
    aa = REPO / "models" / "aa" / "reference_md.h5"
    (workdir / "wrong.yaml").write_text(yaml.safe_dump({"md": {"reference_files": {"WA": str(aa)}}}))
    proc = run(workdir, "results/md/WA.h5", check=False, configs=("tiny.yaml", "wrong.yaml"))
    log = (workdir / "logs/md/WA.adopt.log").read_text()
    assert proc.returncode != 0 and "'AA', not 'WA'" in log
    assert not (workdir / "results/md/WA.h5").exists()


@pytest.mark.parametrize("fragment,message", [
    ({"systems": ["GG"]}, "models.aa.systems: 'GG' is not an evaluated system"),
    ({"settings": {"sampling": {"n_proposal": 10}}}, "did you mean"),
])
def test_a_bad_shipped_model_setting_fails_the_dry_run(workdir, fragment, message):
    configs = _shipped_aa(workdir)
    cfg = yaml.safe_load((workdir / "shipped.yaml").read_text())
    cfg["models"]["aa"].update(fragment)
    (workdir / "shipped.yaml").write_text(yaml.safe_dump(cfg))
    proc = run(workdir, "-n", check=False, configs=configs)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
