"""MD vs flow at equal cost: budgets -> frames/proposals, curves against a reference, the page."""

import base64
import html
import re

import numpy as np
import pytest

from proseflow.evaluation import budget
from proseflow.evaluation.evaluate import project, reference, sampler_metrics
from proseflow.evaluation.registry import W2
from proseflow.evaluation.tica import fit_tica
from proseflow.physics import trajectory_io
from proseflow.physics.system import kT_kJ_per_mol
from proseflow.report.budget_page import write_budget_page
from proseflow.report.kit import format_value
from proseflow.samplers.snis import snis

T_K = 300.0
N_FRAMES = 240
PROTOCOL = {"timestep_fs": 1.0, "save_interval_ps": 0.1, "burn_in_ps": 1.0, "temperature_K": T_K,
            "md_steps_per_s": 1000.0}  # 100 steps per frame


def stationary_walk(x0, n, seed, a=0.9, sigma_nm=0.03):
    """AR(1) perturbations of a structure: a stationary, correlated random walk."""
    rng = np.random.default_rng(seed)
    y = np.zeros_like(x0)
    out = np.empty((n, *x0.shape), dtype=np.float32)
    for t in range(n):
        y = a * y + np.sqrt(1 - a * a) * sigma_nm * rng.normal(size=x0.shape)
        out[t] = x0 + y
    return out


@pytest.fixture(scope="module")
def system(tmp_path_factory, peptide):
    topology, x0 = peptide("AA")
    tmp = tmp_path_factory.mktemp("budget")
    positions = stationary_walk(x0, N_FRAMES, seed=1)
    rng = np.random.default_rng(2)
    energy = np.zeros(N_FRAMES)
    for t in range(1, N_FRAMES):
        energy[t] = 0.8 * energy[t - 1] + rng.normal(scale=5.0)
    energy -= 200.0
    md_path = tmp / "AA.h5"
    trajectory_io.create(md_path, topology, PROTOCOL)
    trajectory_io.append(md_path, positions, 0.1 * np.arange(1, N_FRAMES + 1), energy)
    tica_model = fit_tica(positions, lag=5, koopman=False, topology=topology)
    ref = reference(md_path, topology, tica_model, T_K, N_FRAMES)
    # a SNIS file: proposals = another walk, arbitrary log q and energies (kT)
    n_prop = 150
    prop = stationary_walk(x0, n_prop, seed=3, a=0.0, sigma_nm=0.05)
    log_q = rng.normal(size=n_prop)
    e_kT = rng.normal(-80.0, 3.0, size=n_prop)
    e_kT[:3] = np.inf  # failed energies get zero weight
    snis_path = tmp / "snis.npz"
    from proseflow.samplers.sample_set import SampleSet
    from proseflow.samplers.snis import snis as snis_weights

    r = snis_weights(-e_kT, log_q, drop_top_fraction=0.0, rng=0)
    SampleSet(positions_nm=prop, energy_kT=e_kT, log_weights=r.log_weights, ess=r.ess, n_distinct=r.n_distinct,
              n_energy_evals=n_prop, wall_time_s=15.0, temperature_K=T_K,
              extras={"log_q": log_q, "resampled_indices": r.indices}).save(snis_path)
    return dict(topology=topology, md=md_path, tica=tica_model, ref=ref, snis=snis_path, n_prop=n_prop,
                prop=prop, log_q=log_q, e_kT=e_kT, energy=energy)


def test_budget_to_frames():
    assert budget.steps_per_frame(1.0, 0.1) == 100
    assert budget.md_frames_for_budget(1000, 1.0, 0.1) == 10
    assert budget.md_frames_for_budget(1099, 1.0, 0.1) == 10
    assert budget.md_frames_for_budget(1e6, 2.0, 10.0) == 200  # 5000 steps per 10 ps frame
    assert budget.md_frames_for_budget(99, 1.0, 0.1) == 0
    with pytest.raises(ValueError):
        budget.steps_per_frame(2.0, 0.0031)


def test_md_curve_frames_skips_and_wall_time(system):
    rows = budget.md_budget_curve(system["md"], system["topology"], system["tica"], system["ref"],
                                  [100, 1000, 1e6, N_FRAMES * 100], n_metric=N_FRAMES, sequence="AA")
    by_b = {r["budget"]: r for r in rows}
    assert by_b[100]["status"].startswith("skipped") and np.isnan(by_b[100]["energy_w2"])  # 1 frame
    assert by_b[1_000_000]["status"].startswith("skipped")  # 10000 frames > 240
    assert by_b[1000]["status"] == "ok" and by_b[1000]["n_samples"] == 10
    assert by_b[1000]["wall_time_s"] == pytest.approx(1.0)  # 1000 steps at 1000 steps/s
    assert all(r["sequence"] == "AA" and r["sampler"] == "md" for r in rows)
    full = by_b[N_FRAMES * 100]
    assert full["n_samples"] == N_FRAMES and full["n_energy_evals"] == N_FRAMES * 100
    # the whole trajectory against a reference made of the same frames
    for m in ("energy_w2", "torus_w2", "tica_w2"):
        assert full[m] == pytest.approx(0.0, abs=1e-5), m


def test_md_curve_equals_sampler_metrics_on_prefix(system):
    """Projecting only the scored frames gives the same numbers as sampler_metrics on the whole prefix."""
    n, n_metric = 60, 25
    rows = budget.md_budget_curve(system["md"], system["topology"], system["tica"], system["ref"], [n * 100],
                                  n_metric=n_metric, seed=4)
    data = trajectory_io.read(system["md"], stop=n)
    prefix = project(data["positions_nm"], data["energy_kJ_per_mol"] / kT_kJ_per_mol(T_K), system["topology"],
                     system["tica"])
    direct = sampler_metrics(system["ref"], prefix, None, n_metric, seed=4, n_energy_evals=n * 100)
    for m in ("energy_w2", "torus_w2", "tica_w2", "tica_jsd", "mean_energy_kT"):
        assert rows[0][m] == pytest.approx(direct[m], rel=1e-6, abs=1e-9), m


def test_md_w2_shrinks_with_budget(system):
    """The longest budget is half the trajectory, not the reference itself (whose W2 would be 0 by construction)."""
    rows = budget.md_budget_curve(system["md"], system["topology"], system["tica"], system["ref"],
                                  [300, 3000, N_FRAMES * 50], n_metric=N_FRAMES)
    for m in ("energy_w2", "torus_w2", "tica_w2"):
        w = [r[m] for r in rows]
        assert np.all(np.isfinite(w)), m
        assert w[-1] < w[0], (m, w)
        assert max(w) < 10 * w[0] + 1e-6, (m, w)  # never blows up


def test_flow_curve_reproduces_snis(system):
    n = system["n_prop"]
    rows = budget.flow_budget_curve(system["snis"], system["topology"], system["tica"], system["ref"],
                                    [50, n, n + 1], n_metric=100, seed=0, drop_top_fraction=0.02, sequence="AA")
    by_b = {r["budget"]: r for r in rows}
    assert by_b[n + 1]["status"].startswith("skipped")
    full = by_b[n]
    r = snis(-system["e_kT"], system["log_q"], drop_top_fraction=0.02)
    assert full["ess"] == pytest.approx(r.ess, rel=1e-12)
    assert full["n_nonfinite"] == 3 and full["wall_time_s"] == pytest.approx(15.0)
    r50 = snis(-system["e_kT"][:50], system["log_q"][:50], drop_top_fraction=0.02)
    assert by_b[50]["ess"] == pytest.approx(r50.ess, rel=1e-12)
    assert by_b[50]["wall_time_s"] == pytest.approx(15.0 * 50 / n)
    # same numbers as sampler_metrics on the whole projected, weighted set
    proj = project(system["prop"], system["e_kT"], system["topology"], system["tica"])
    direct = sampler_metrics(system["ref"], proj, r.log_weights, 100, seed=0, n_energy_evals=n)
    for m in ("energy_w2", "torus_w2", "tica_w2", "tica_jsd", "ess"):
        assert full[m] == pytest.approx(direct[m], rel=1e-6, abs=1e-9), m


def test_tica_maps(system):
    md_tica, flow_tica, w = budget.budget_tica_maps(system["md"], system["snis"], system["topology"],
                                                    system["tica"], 5000, n_metric=40)
    assert md_tica.shape == (40, 2) and flow_tica.shape == (40, 2) and w is None
    assert np.isfinite(md_tica).all() and np.isfinite(flow_tica).all()
    # the same sets with the MD frame / proposal behind each point: the budget page's 3D viewer
    sets = budget.budget_map_sets(system["md"], system["snis"], system["topology"], system["tica"], 5000,
                                  n_metric=40)
    np.testing.assert_array_equal(sets.md_tica, md_tica)
    np.testing.assert_array_equal(sets.flow_tica, flow_tica)
    assert sets.md_frames.max() < 50  # 5000 evaluations = the first 50 frames
    np.testing.assert_allclose(system["tica"].transform(trajectory_io.read(system["md"])["positions_nm"][sets.md_frames]),
                               md_tica, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(system["tica"].transform(system["prop"][sets.flow_index]), flow_tica, rtol=1e-5,
                               atol=1e-6)


def test_budget_viewer_shows_the_states_each_sampler_found(system):
    from proseflow.evaluation import conformations

    sets = budget.budget_map_sets(system["md"], system["snis"], system["topology"], system["tica"], 5000,
                                  n_metric=40)
    frames = np.arange(N_FRAMES)
    data, summary = conformations.budget_conformations(system["topology"], system["md"], frames, system["ref"].tica, sets,
                                         system["prop"], k=3, seed=0)
    assert 1 <= len(data["scenes"]) <= 3 and len(summary) == len(data["scenes"])
    for scene, st in zip(data["scenes"], summary, strict=True):
        assert scene["models"][0]["name"] == "MD reference"
        shown = {m["name"] for m in scene["models"]}
        for name in ("MD at budget", "flow at budget"):
            assert (name in shown) == (st["representative"][name] is not None)
        if st["representative"]["MD at budget"] is not None:
            assert st["representative"]["MD at budget"] in set(sets.md_frames)
        if st["representative"]["flow at budget"] is not None:
            assert st["representative"]["flow at budget"] in set(sets.flow_index)
        assert sum(1 for _ in scene["models"]) == len(shown)
    assert sum(st["population"]["MD reference"] for st in summary) == pytest.approx(1.0)


def _assert_self_contained(text):
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', text, re.I)
    assert "<link" not in text.lower() and "@import" not in text
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', text)
    assert srcs and len(srcs) == text.count("<img")
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def _synthetic_rows(seq, seed, with_wall=True):
    rng = np.random.default_rng(seed)
    rows = []
    for sampler, scale in (("md", 3.0), ("flow", 1.0)):
        for b in (1000, 10_000, 100_000):
            rows.append({"sequence": seq, "sampler": sampler, "budget": b, "status": "ok", "n_samples": b // 10,
                         "wall_time_s": b * (1e-3 if sampler == "md" else 1e-4) if with_wall else float("nan"),
                         "ess": float("nan") if sampler == "md" else rng.uniform(0.01, 0.3),
                         **{m: scale * rng.uniform(0.5, 1.5) / np.log10(b) for m in W2}})
    rows.append({"sequence": seq, "sampler": "md", "budget": 10, "status": "skipped: 0 frame(s) < 2",
                 "n_samples": 0, "wall_time_s": 0.01, "ess": float("nan"),
                 **{m: float("nan") for m in W2}})
    return rows


def test_budget_page_and_csv(tmp_path):
    import pandas as pd

    curves = {"AAAA": _synthetic_rows("AAAA", 0), "WGDE": _synthetic_rows("WGDE", 1, with_wall=False)}
    rng = np.random.default_rng(0)
    maps = {"AAAA": (rng.normal(size=(300, 2)), rng.normal(1, 1, size=(300, 2)), None)}
    scene = {"label": "state 1", "info": "MD reference 60.0%", "models": [
        {"name": "MD reference", "color": "#7f7f7f", "pdb": "ATOM      1  N   ALA A   1       0.000   0.000   0.000\n"}]}
    viewers = {"AAAA": {"scenes": [scene], "columns": ["state"], "rows": [["1"]]}}
    path = write_budget_page(tmp_path / "budget.html", curves, maps, map_budget=1e6, viewers=viewers)
    text = path.read_text()
    assert '<option value="0">AAAA: state 1</option>' in text and 'href="#viewer"' in text
    text = re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", text, flags=re.S)  # the embedded 3Dmol.js, data
    _assert_self_contained(text)
    assert text.count("<img") == 1 + 2 + 1  # mean, one per system, one map
    for rows in curves.values():
        for r in rows:
            for k in ("budget", "wall_time_s", "ess", *W2):
                assert format_value(r[k], k) in text, (r, k)
            assert html.escape(r["status"]) in text
    means = budget.mean_curves(curves)
    assert set(means["budget"]) == {1000, 10_000, 100_000}  # the skipped budget is not averaged
    md = means[(means["sampler"] == "md") & (means["budget"] == 1000)].iloc[0]
    assert md["energy_w2"] == pytest.approx(np.mean([curves[s][0]["energy_w2"] for s in curves]))
    csv = budget.write_budget_csv(tmp_path / "budget.csv", curves)
    df = pd.read_csv(csv)
    assert len(df) == 14 and list(df.columns[:4]) == ["sequence", "sampler", "budget", "status"]


def test_noise_floor_is_zero_for_identical_halves_and_the_shift_for_shifted_energies(system, tmp_path):
    """The reference's noise floor (proseflow.evaluation.evaluate.noise_floor) compares its two halves: a file
    whose second half repeats the first gives W2 0 on every metric; adding c kT to the second half's energies
    gives an energy W2 of exactly c (1-D W2 of a shifted distribution) and leaves the other two at 0."""
    from proseflow.evaluation.evaluate import noise_floor

    data = trajectory_io.read(system["md"])
    half = N_FRAMES // 2
    pos = np.concatenate([data["positions_nm"][:half]] * 2)
    kT = kT_kJ_per_mol(T_K)
    for shift_kT in (0.0, 3.0):
        e = np.concatenate([data["energy_kJ_per_mol"][:half], data["energy_kJ_per_mol"][:half] + shift_kT * kT])
        path = tmp_path / f"halves_{shift_kT}.h5"
        trajectory_io.create(path, system["topology"], PROTOCOL)
        trajectory_io.append(path, pos, 0.1 * np.arange(1, N_FRAMES + 1), e)
        floor = noise_floor(path, system["topology"], system["tica"], T_K, n_metric=N_FRAMES)
        assert floor["n_per_half"] == half
        assert floor["energy_w2"] == pytest.approx(shift_kT, abs=1e-3)
        assert floor["torus_w2"] == pytest.approx(0.0, abs=1e-6) and floor["tica_w2"] == pytest.approx(0.0, abs=1e-6)
    real = noise_floor(system["md"], system["topology"], system["tica"], T_K, n_metric=N_FRAMES)
    assert real["energy_w2"] > 0.1 and real["torus_w2"] > 0  # two different halves of a random walk differ
