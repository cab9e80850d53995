"""The one sample-set type every sampler writes and every reader reads (issue 19)."""

import numpy as np
import pytest

from proseflow.samplers.sample_set import SampleSet, SampleSetError


def good(n=12, atoms=5, **changes):
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=n)
    log_w -= np.logaddexp.reduce(log_w)
    fields = dict(positions_nm=rng.normal(size=(n, atoms, 3)).astype(np.float32), energy_kT=rng.normal(size=n),
                  log_weights=log_w, ess=0.4, n_distinct=9, n_energy_evals=n, wall_time_s=2.5, temperature_K=310.0,
                  extras={"log_q": rng.normal(size=n), "resampled_indices": np.array([0, 3, 3, 7])})
    return SampleSet(**{**fields, **changes})


def test_round_trip_keeps_every_field_and_extra(tmp_path):
    s = good()
    s.save(tmp_path / "snis.npz")
    back = SampleSet.load(tmp_path / "snis.npz")
    for name in SampleSet.REQUIRED:
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    np.testing.assert_array_equal(back.resampled_indices, [0, 3, 3, 7])
    np.testing.assert_array_equal(back.get("log_q"), s.extras["log_q"])
    assert back.get("not_written") is None and len(back) == 12


@pytest.mark.parametrize("changes,field", [
    (dict(energy_kT=np.zeros(11)), "energy_kT"),
    (dict(log_weights=np.zeros(12)), "log_weights"),  # not normalised
    (dict(positions_nm=np.zeros((12, 5))), "positions_nm"),
    (dict(positions_nm=np.full((12, 5, 3), np.nan)), "positions_nm"),
    (dict(ess=1.7), "ess"),
    (dict(n_distinct=2.5), "n_distinct"),
    (dict(temperature_K=float("nan")), "temperature_K"),
    (dict(extras={"resampled_indices": np.array([0, 12])}), "resampled_indices"),
    (dict(extras={"log_q": np.zeros(3)}), "log_q"),
])
def test_writing_a_malformed_set_fails_naming_the_field_and_leaves_no_file(tmp_path, changes, field):
    path = tmp_path / "smc_mala.npz"
    with pytest.raises(SampleSetError, match=f"smc_mala.npz: field '{field}'"):
        good(**changes).save(path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_file_without_a_field_or_a_corrupt_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "snis.npz"
    s = good()
    np.savez(path, **{k: getattr(s, k) for k in SampleSet.REQUIRED if k != "n_energy_evals"})
    with pytest.raises(SampleSetError, match=r"snis.npz: sample file without the field\(s\) \['n_energy_evals'\]"):
        SampleSet.load(path)
    s.save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(SampleSetError, match="snis.npz: not a readable sample file .* rerun the rule"):
        SampleSet.load(path)


def test_every_writer_and_reader_goes_through_the_type():
    """No stage writes or reads a sample file with bare np.savez/np.load: the sample, SNIS, SMC, self-improvement,
    evaluation, budget and export code all name SampleSet (the proposals file is the sample stage's own)."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "proseflow"
    for rel in ("stages/sampling.py", "stages/evaluation.py", "samplers/export.py", "evaluation/budget.py",
                "verify.py"):
        assert "SampleSet" in (src / rel).read_text(), rel
    run = (src / "stages/sampling.py").read_text()
    for fn in ("def run_snis", "def run_smc", "def run_self_improve"):
        body = run.split(fn, 1)[1].split("\ndef ", 1)[0]
        assert "SampleSet(" in body and "save_npz" not in body, fn
