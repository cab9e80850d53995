"""The OpenMM energy API against a fresh OpenMM Context and finite differences."""

import numpy as np
import pytest
from openmm_reference import energies_forces

from proseflow.physics.energy import OpenMMEnergy, make_energy
from proseflow.physics.system import kT_kJ_per_mol

T = 310.0


def _frames(pos, n, scale, seed=0):
    rng = np.random.default_rng(seed)
    return pos[None] + scale * rng.standard_normal((n, *pos.shape))


@pytest.mark.parametrize("n_workers", [1, 2])
def test_matches_fresh_context(peptide, n_workers):
    top, pos = peptide("KW")
    x = _frames(pos, 40, 0.01)
    with OpenMMEnergy(top, T, platform="CPU", n_workers=n_workers, chunk_size=8) as energy:
        e, f = energy.energy_and_forces_kT(x)
        e_only = energy.energy_kT(x)
    e_ref, f_ref = energies_forces(top, x)
    kT = kT_kJ_per_mol(T)
    np.testing.assert_allclose(e * kT, e_ref, rtol=1e-6)
    np.testing.assert_allclose(e_only, e, rtol=1e-6)  # CPU platform: mixed precision, paths differ ~1e-8
    np.testing.assert_allclose(f * kT, f_ref, rtol=1e-4, atol=1e-3 * np.abs(f_ref).max())


def test_forces_match_finite_differences(peptide):
    top, pos = peptide("AHG")
    energy = make_energy(top, T, backend="openmm", platform="Reference", n_workers=1)
    x = _frames(pos, 1, 0.005, seed=2)
    _, f = energy.energy_and_forces_kT(x)
    rng = np.random.default_rng(1)
    h = 1e-5
    for _ in range(6):
        i, d = rng.integers(len(pos)), rng.integers(3)
        xp, xm = x.copy(), x.copy()
        xp[0, i, d] += h
        xm[0, i, d] -= h
        fd = -(energy.energy_kT(xp)[0] - energy.energy_kT(xm)[0]) / (2 * h)
        assert fd == pytest.approx(f[0, i, d], rel=1e-4, abs=1e-3)


def test_non_finite_input_is_rejected(peptide):
    top, pos = peptide("AA")
    x = _frames(pos, 3, 0.01)
    x[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite coordinates.*batch index 1"):
        OpenMMEnergy(top, T, platform="CPU", n_workers=1).energy_kT(x)
    with pytest.raises(ValueError, match=r"shape \[B, 23, 3\]"):
        OpenMMEnergy(top, T, platform="CPU", n_workers=1).energy_kT(x[:, :5])


def test_overlapping_atoms_give_inf_not_crash(peptide):
    top, pos = peptide("AA")
    x = np.stack([pos, pos.copy(), pos])
    x[1, 1] = x[1, 0]  # two atoms on top of each other
    x[1, 5] = x[1, 0]
    e = OpenMMEnergy(top, T, platform="CPU", n_workers=1).energy_kT(x)
    assert np.isfinite(e[[0, 2]]).all() and e[0] == e[2]
    assert e[1] == np.inf or e[1] > 1e6


def test_sequence_input_and_unknown_backend():
    energy = make_energy("AA", T, platform="CPU", n_workers=1)
    assert energy.n_atoms == 23
    with pytest.raises(ValueError, match="unknown energy backend 'jax'"):
        make_energy("AA", T, backend="jax")
