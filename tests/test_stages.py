"""Each sampling and evaluation stage through its entry point (:func:`proseflow.stages.run.run`, what every rule
calls) on small real inputs, against numbers computed independently (issue 23): the sample stage's log q is the
closed-form density of an identity flow; the SNIS stage's weights are -E/kT - log q with E from an OpenMM
Context built here; the evaluate stage's W2s are ~0 for the reference itself, the known shift for a shifted copy,
and the reference again only when the weights are applied.
"""

import json
import math

import numpy as np
import pytest
import torch
from openmm_reference import energies_forces

from proseflow.flow.checkpoint import save_model
from proseflow.flow.model import ProseFlow
from proseflow.flow.train import TrainConfig, flow_config
from proseflow.physics.md import MDProtocol, MDSystem, simulate
from proseflow.physics.structures import write_pdb
from proseflow.physics.system import kT_kJ_per_mol
from proseflow.samplers.sample_set import SampleSet
from proseflow.stages import settings as S
from proseflow.stages.run import run

SCALE = 0.35
T_K = 310.0


def _run(stage: str, settings, inputs: dict, outputs: dict) -> None:
    run(stage, settings.to_json(), inputs, outputs)


def _openmm_energy_kT(topology, positions_nm: np.ndarray) -> np.ndarray:
    """E/kT of each configuration from OpenMM's Reference platform: independent of the stages' energy backends."""
    return energies_forces(topology, positions_nm)[0] / kT_kJ_per_mol(T_K)


@pytest.fixture(scope="module")
def gg_files(tmp_path_factory, peptide):
    """GG's structure and an identity flow (a freshly built flow: its output layers start at zero) as files."""
    d = tmp_path_factory.mktemp("gg")
    top, pos = peptide("GG")
    write_pdb(d / "GG.pdb", top, pos)
    torch.manual_seed(0)
    save_model(ProseFlow(flow_config(TrainConfig(model_preset="tiny"))), d / "model.pt", {"scale_nm": SCALE})
    return d, top, pos


def test_sample_stage_writes_the_closed_form_density_of_an_identity_flow(gg_files):
    """Identity flow, exact (gaussian) centre-of-mass correction: x = SCALE z centred, so log q (nm) is the
    density of N(0, SCALE^2) on the (3N - 3)-dim centred subspace; with prior_std 0.8 the spread is 0.8x."""
    d, top, _ = gg_files
    files = {"model": [str(d / "model.pt")], "structure": [str(d / "GG.pdb")]}
    s = S.SampleSettings(n_proposals=300, batch_size=150, com_correction="gaussian", seed=4)
    _run("sample", s, files, {"proposals": [str(d / "p.npz")]})
    p = np.load(d / "p.npz")
    y = p["positions_nm"].astype(np.float64)
    n = y.shape[1]
    assert y.shape == (300, n, 3) and np.allclose(y.mean(axis=1), 0, atol=1e-5)
    closed = -(y**2).sum(axis=(1, 2)) / (2 * SCALE**2) - 0.5 * (3 * n - 3) * math.log(2 * math.pi * SCALE**2)
    np.testing.assert_allclose(p["log_q"], closed, atol=5e-4)
    assert int(p["n_chirality_fixed"]) == 0 and p["chirality_ok"].all()  # GG has no chiral centre

    narrow = S.SampleSettings(n_proposals=300, batch_size=300, com_correction="gaussian", seed=4, prior_std=0.8)
    _run("sample", narrow, files, {"proposals": [str(d / "p08.npz")]})
    q = np.load(d / "p08.npz")
    var = float((q["positions_nm"].astype(np.float64) ** 2).mean())
    expected = (0.8 * SCALE) ** 2 * (n - 1) / n  # per centred coordinate
    assert abs(var / expected - 1) < 0.05 and float(q["prior_std"]) == 0.8


def test_snis_stage_weights_are_minus_energy_minus_log_q(gg_files, tmp_path):
    """Configurations near GG's minimum with a made-up log q: the SNIS stage's log weights are -E/kT - log q
    normalised (E from an OpenMM Context built here), the top 10% of the weights are dropped (zero weight),
    and its ESS is 1 / (N sum w^2) of what is left, N counting all proposals."""
    d, top, pos = gg_files
    rng = np.random.default_rng(0)
    x = pos[None] + rng.normal(0, 0.004, (50, *pos.shape))
    log_q = rng.normal(0, 2.0, 50)
    np.savez(tmp_path / "prop.npz", positions_nm=x.astype(np.float32), log_q=log_q, chirality_ok=np.ones(50, bool),
             n_chirality_fixed=0, n_chirality_unfixable=0, wall_time_s=0.0)
    s = S.SnisSettings(temperature_K=T_K, energy_backend="torch", drop_top_fraction=0.1, seed=0)
    _run("snis", s, {"proposals": [str(tmp_path / "prop.npz")], "structure": [str(d / "GG.pdb")]},
         {"snis": [str(tmp_path / "snis.npz")]})
    out = SampleSet.load(tmp_path / "snis.npz")

    e = _openmm_energy_kT(top, x.astype(np.float32))
    np.testing.assert_allclose(out.energy_kT, e, rtol=1e-4, atol=1e-3)
    log_w = -e - log_q
    kept = np.argsort(log_w)[:45]  # the top 10% (5 of 50) dropped
    w = np.zeros(50)
    w[kept] = np.exp(log_w[kept] - log_w[kept].max())
    w /= w.sum()
    np.testing.assert_allclose(np.exp(out.log_weights), w, atol=1e-6)
    assert int(out.get("n_dropped")) == 5
    assert out.ess == pytest.approx(1.0 / (w**2).sum() / 50, rel=1e-6)  # ESS as a fraction of all proposals


@pytest.fixture(scope="module")
def aa_reference(tmp_path_factory, peptide):
    """A real AA MD (240 frames, 50 fs apart after 1 ps of burn-in), its structure and its TICA model."""
    d = tmp_path_factory.mktemp("aa")
    top, pos = peptide("AA")
    write_pdb(d / "AA.pdb", top, pos)
    protocol = MDProtocol(burn_in_ps=1.0, length_ps=12.0, save_interval_ps=0.05, seed=3, platform="CPU")
    simulate([MDSystem("AA", top, pos, d / "AA.h5")], protocol, d / "work", threads=1, progress=False)
    _run("tica", S.TicaSettings(lag_ps=0.5, stride=1), {"md": [str(d / "AA.h5")]}, {"tica": [str(d / "tica.npz")]})
    return d, top


def test_evaluate_stage_scores_known_sets(aa_reference, tmp_path):
    """Sets built from the reference frames themselves: 'snis' is the reference plus 240 copies 8 kT higher that
    carry weight zero; 'shifted' is the reference with every energy 2 kT higher. The evaluate stage must find
    E-W2 ~ 0 for the weighted SNIS set, ~8 kT-ish for its unweighted proposal, 2 kT for the shift, and torsion
    W2 ~ 0 wherever the configurations are the reference's."""
    from proseflow.physics import trajectory_io

    d, top = aa_reference
    md = trajectory_io.read(str(d / "AA.h5"))
    x = md["positions_nm"]
    e = _openmm_energy_kT(top, x)
    n = len(e)
    common = {"ess": 0.5, "n_distinct": n, "n_energy_evals": 2 * n, "temperature_K": T_K, "wall_time_s": 1.0}
    log_w = np.concatenate([np.full(n, -math.log(n)), np.full(n, -np.inf)])
    SampleSet(positions_nm=np.concatenate([x, x]), energy_kT=np.concatenate([e, e + 8.0]), log_weights=log_w,
              extras={"log_q": np.zeros(2 * n), "drop_top_fraction": 0.0}, **common).save(tmp_path / "snis.npz")
    SampleSet(positions_nm=x, energy_kT=e + 2.0, log_weights=np.full(n, -math.log(n)),
              **{**common, "n_energy_evals": n}).save(tmp_path / "shifted.npz")

    # weighted sets are resampled (n_metric draws): many draws keep that noise small
    s = S.EvaluateSettings(model="m", temperature_K=T_K, reference_frames=n, n_metric=40 * n, kmeans_k=3, seed=0)
    inputs = {"structure": [str(d / "AA.pdb")], "md": [str(d / "AA.h5")], "tica": [str(d / "tica.npz")],
              "samplers": [str(tmp_path / "snis.npz"), str(tmp_path / "shifted.npz")]}
    _run("evaluate", s, inputs, {"json": [str(tmp_path / "AA.json")], "html": [str(tmp_path / "AA.html")]})
    m = json.loads((tmp_path / "AA.json").read_text())["metrics"]

    # the weighted SNIS set is the reference (resampling noise only); unweighted it is not
    assert m["snis"]["energy_w2"] < 0.2 and m["snis"]["torus_w2"] < 0.05 and m["snis"]["tica_w2"] < 0.2
    # the unweighted proposal is used as is: the exact 1-D W2 against the reference counted twice (same law)
    exact = np.sqrt(np.mean((np.sort(np.concatenate([e, e + 8.0])) - np.sort(np.concatenate([e, e]))) ** 2))
    assert m["proposal"]["energy_w2"] == pytest.approx(exact, abs=1e-2) and exact > 3.0
    assert m["proposal"]["torus_w2"] < 1e-6 and m["proposal"]["tica_w2"] < 1e-6  # the reference's own configurations
    assert m["shifted"]["energy_w2"] == pytest.approx(2.0, abs=0.2) and m["shifted"]["torus_w2"] < 0.05
    assert m["snis"]["n_distinct"] == n and m["shifted"]["ess"] == 0.5
    assert (tmp_path / "AA.html").stat().st_size > 10_000
    # each TICA state's median energy: MD's frames, and the proposals (each frame once at E and once at E + 8 kT)
    for state in json.loads((tmp_path / "AA.json").read_text())["states"]:
        med = state["median_energy_kT"]
        assert med["MD"] < med["proposals"] < med["MD"] + 8.0, state


def test_smc_stage_returns_force_field_energies_and_its_own_schedule(gg_files, tmp_path):
    """The SMC stage (ULA, the config's step size and levels): every returned energy is the force field's at the
    returned configuration (an OpenMM Context built here), the weights are normalised, the schedule has the
    configured levels and step size, and the energy evaluations are the particles x (levels + 1) it states."""
    from proseflow.samplers.config import SMCConfig

    d, top, _ = gg_files
    smc = SMCConfig.for_kernel("ula", n_levels=4, step_size=1e-6, drop_top_fraction=0.0, max_target_energy=None)
    s = S.SmcSettings(kernel="ula", n_particles=24, smc=smc, temperature_K=T_K, energy_backend="torch",
                      batch_size=24, seed=2)
    _run("smc", s, {"model": [str(d / "model.pt")], "structure": [str(d / "GG.pdb")]},
         {"samples": [str(tmp_path / "smc.npz")]})
    out = SampleSet.load(tmp_path / "smc.npz")
    assert len(out) == 24
    # an identity flow's GG is far from any minimum (about 3e5 kT): what is checked is the stage's bookkeeping
    np.testing.assert_allclose(out.energy_kT, _openmm_energy_kT(top, out.positions_nm), rtol=1e-4, atol=1e-2)
    assert np.exp(out.log_weights).sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(out.get("t_schedule"), np.linspace(0, 1, 5), atol=1e-12)
    assert np.allclose(out.get("step_sizes"), 1e-6) and str(out.get("kernel")) == "ula"
    assert out.n_energy_evals == 24 * 5


def test_budget_stage_prices_md_prefixes_and_flow_prefixes(aa_reference, tmp_path):
    """MD at a budget of B energy evaluations is its first B steps (B / 50 frames here): at the full length it is
    the reference itself (W2 exactly 0); a budget longer than the file is a row that says so. The flow's rows
    reweight the first B proposals on their own: with log q = -E/kT every weight is equal, so the ESS is exactly 1
    at every budget, and the set of all proposals (the reference frames) scores as the reference."""
    from proseflow.physics import trajectory_io

    d, top = aa_reference
    x = trajectory_io.read(str(d / "AA.h5"))["positions_nm"]
    e = _openmm_energy_kT(top, x)
    n = len(e)
    SampleSet(positions_nm=x, energy_kT=e, log_weights=np.full(n, -math.log(n)), ess=1.0, n_distinct=n,
              n_energy_evals=n, temperature_K=T_K, wall_time_s=1.0,
              extras={"log_q": -e, "drop_top_fraction": 0.0}).save(tmp_path / "snis.npz")
    s = S.BudgetSettings(budgets=[100, n, 50 * n, 100 * n], map_budget=50 * n, temperature_K=T_K, reference_frames=n,
                         n_metric=40 * n, kmeans_k=3, drop_top_fraction=0.0, seed=0)
    inputs = {"md": [str(d / "AA.h5")], "snis": [str(tmp_path / "snis.npz")], "structure": [str(d / "AA.pdb")],
              "tica": [str(d / "tica.npz")]}
    _run("budget", s, inputs, {"json": [str(tmp_path / "b.json")], "maps": [str(tmp_path / "maps.npz")]})
    rows = {(r["sampler"], r["budget"]): r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}

    md_full = rows[("md", 50 * n)]  # 50 steps per frame: all n frames, i.e. the reference
    assert md_full["status"] == "ok" and md_full["energy_w2"] < 1e-9 and md_full["torus_w2"] < 1e-9
    assert rows[("md", 100)]["energy_w2"] > md_full["energy_w2"] + 0.1  # two frames are not the distribution
    assert rows[("md", 100 * n)]["status"].startswith("skipped: needs")
    for b in (100, n):
        assert rows[("flow", b)]["status"] == "ok" and rows[("flow", b)]["ess"] == pytest.approx(1.0, abs=1e-12)
    assert rows[("flow", n)]["energy_w2"] < 0.2 and rows[("flow", n)]["torus_w2"] < 0.05
    assert rows[("flow", 50 * n)]["status"].startswith("skipped: needs")


def test_temperature_stage_tabulates_each_condition(tmp_path):
    """The temperature stage, given the evaluation files of two conditions in the order of its priors: one CSV row
    per condition with that condition's SNIS figures, and a page linking each condition's own page."""
    import pandas as pd

    paths = []
    for t, prior, ess in ((310.0, "plain", 0.12), (400.0, "scaled", 0.034)):
        p = tmp_path / "eval" / f"T{t:g}K_{prior}" / "WA.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"sequence": "WA", "metadata": {"temperature_K": t}, "metrics": {
            "snis": {"ess": ess, "energy_w2": t / 100, "torus_w2": 0.25, "tica_w2": 0.5},
            "smc_amala": {"ess": 0.9, "energy_w2": 9.0, "torus_w2": 9.0, "tica_w2": 9.0}}}))
        paths.append(str(p))
    out = {"csv": [str(tmp_path / "eval" / "temperature.csv")], "html": [str(tmp_path / "eval" / "temperature.html")]}
    _run("temperature", S.TemperatureSettings(priors=["plain", "scaled"]), {"evals": paths}, out)
    df = pd.read_csv(out["csv"][0])
    assert df[["temperature_K", "prior"]].values.tolist() == [[310.0, "plain"], [400.0, "scaled"]]
    np.testing.assert_allclose(df["ess"], [0.12, 0.034])
    np.testing.assert_allclose(df["energy_w2"], [3.1, 4.0])  # SNIS's, not another sampler's
    html = (tmp_path / "eval" / "temperature.html").read_text()
    assert 'href="T400K_scaled/WA.html"' in html and 'href="T310K_plain/WA.html"' in html
