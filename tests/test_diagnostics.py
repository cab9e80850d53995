"""Weight diagnostics on cases with a known answer: MD frames used as proposals."""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm_reference import energies_forces

from proseflow.evaluation.diagnostics import (
    angle_deviation,
    bond_deviation,
    diagnose,
    energy_terms,
    force_field_angles,
    force_field_bonds,
    switch_com_correction,
    term_energies_kT,
    weight_spread,
)
from proseflow.flow.preprocess import com_log_density
from proseflow.physics import trajectory_io
from proseflow.physics.md import MDProtocol, MDSystem, simulate
from proseflow.physics.system import create_system, kT_kJ_per_mol

T = 310.0


@pytest.fixture(scope="module")
def md_frames(tmp_path_factory, peptide):
    """A real MD of AA: 240 frames every 50 fs after 1 ps of burn-in (OpenMM, paper force field)."""
    top, pos = peptide("AA")
    out = tmp_path_factory.mktemp("md") / "AA.h5"
    protocol = MDProtocol(burn_in_ps=1.0, length_ps=12.0, save_interval_ps=0.05, seed=3, platform="CPU")
    simulate([MDSystem("AA", top, pos, out)], protocol, out.parent / "work", threads=1, progress=False)
    data = trajectory_io.read(out)
    return top, data["positions_nm"].astype(np.float64), data["energy_kJ_per_mol"].astype(np.float64) / kT_kJ_per_mol(T)


def test_terms_sum_to_openmm_energy_and_bonds_match_their_formula(md_frames):
    top, x, _ = md_frames
    terms = term_energies_kT(top, x[:20], T)
    assert set(terms) == {"bonds", "angles", "torsions", "nonbonded", "implicit_solvent"}
    for k, e in zip((0, 19), energies_forces(top, x[[0, 19]])[0] / kT_kJ_per_mol(T), strict=True):
        assert sum(v[k] for v in terms.values()) == pytest.approx(e, rel=1e-6, abs=1e-6)
    pairs, r0, _ = force_field_bonds(top)
    bond_system = create_system(top)  # kept alive while its force is read (a temporary System is freed)
    bond_force = next(f for f in bond_system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    k_bond = np.array([bond_force.getBondParameters(i)[3]._value for i in range(bond_force.getNumBonds())])
    r = np.linalg.norm(x[:20, pairs[:, 1]] - x[:20, pairs[:, 0]], axis=-1)
    np.testing.assert_allclose(terms["bonds"], (0.5 * k_bond * (r - r0) ** 2).sum(-1) / kT_kJ_per_mol(T), rtol=1e-9)


def test_angle_deviation_matches_openmm_angle_energy(md_frames):
    """The angles and their equilibria reproduce OpenMM's HarmonicAngleForce energy (independent: the force
    field's own computation); MD vs MD gives a ratio near 1, a distorted copy a ratio far above it."""
    top, x, _ = md_frames
    triples, theta0 = force_field_angles(top)
    assert len(triples) == 39  # AA (issue 20: 39 angles)
    system = create_system(top)
    force = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicAngleForce))
    k = np.array([force.getAngleParameters(i)[4]._value for i in range(force.getNumAngles())])
    from proseflow.evaluation.diagnostics import bond_angles_rad

    theta = bond_angles_rad(x[:10], triples)
    expected = (0.5 * k * (theta - theta0) ** 2).sum(-1) / kT_kJ_per_mol(T)
    np.testing.assert_allclose(term_energies_kT(top, x[:10], T)["angles"], expected, rtol=1e-6)
    same = angle_deviation(top, x[0::2], x[1::2])
    assert same["n_angles"] == 39 and 0.8 < same["ratio"] < 1.25 and 0.02 < same["md_rms_rad"] < 0.3
    rng = np.random.default_rng(0)
    noisy = x[1::2] + rng.normal(0, 0.01, x[1::2].shape)  # 0.01 nm per coordinate: angles widen several-fold
    assert angle_deviation(top, x[0::2], noisy)["ratio"] > 1.5


def test_md_frames_as_proposals_give_md_like_diagnostics(md_frames):
    """Even frames = 'MD', odd frames = 'proposals' with the exact density (log q = -E/kT + const)."""
    top, x, e_kT = md_frames
    md, prop, e_prop = x[0::2], x[1::2], e_kT[1::2]
    bonds = bond_deviation(top, md, prop)
    assert {"C-H", "C-C", "C-N", "C-O", "N-H"} <= set(bonds)
    assert bonds["C-H"]["n_bonds"] == 8 and bonds["N-H"]["n_bonds"] == 4  # AA: 2 methyls + 2 HA; NH3+ + amide H
    for key, row in bonds.items():
        assert 0.7 < row["ratio"] < 1.4, (key, row)
        assert 0.0005 < row["md_rms_nm"] < 0.01, (key, row)  # thermal bond fluctuations: ~1-5 pm at 310 K
    # bonds stretched by 10% have a ratio far above 1
    stretched = prop * 1.1
    assert bond_deviation(top, md, stretched)["C-H"]["ratio"] > 3  # +11 pm on a ~3 pm thermal RMS

    log_q = -e_prop + 7.0
    spread = weight_spread(e_prop, log_q)
    assert spread["log_weight_var"] < 1e-8
    assert spread["top1pct_weight_share"] == pytest.approx(math.ceil(0.01 * len(e_prop)) / len(e_prop))
    assert spread["ess_no_drop"] == pytest.approx(1.0)
    # a broad Gaussian as the proposal: weights spread, one sample holds a large share
    g = np.random.default_rng(0).normal(size=(len(e_prop), 3 * prop.shape[1]))
    spread_g = weight_spread(e_prop, -0.5 * (g**2).sum(-1))
    assert spread_g["log_weight_var"] > 1 and spread_g["top1pct_weight_share"] > 0.05 and spread_g["ess_no_drop"] < 0.5

    terms_md, terms_prop = term_energies_kT(top, md, T), term_energies_kT(top, prop, T)
    table = energy_terms(terms_md, terms_prop, np.zeros(len(prop)))  # uniform weights: the SNIS mean is the mean
    for key in terms_md:
        assert table[key]["snis_mean_kT"] == pytest.approx(terms_prop[key].mean())
        assert table[key]["md_mean_kT"] == pytest.approx(terms_md[key].mean())
    assert table["total"]["md_mean_kT"] == pytest.approx(np.mean(e_kT[0::2]), rel=1e-4, abs=1e-3)  # = OpenMM's
    # bonded terms of two halves of one equilibrium run agree within a few kT (each ~ N_dof/2 kT)
    assert abs(table["bonds"]["proposal_median_kT"] - table["bonds"]["md_mean_kT"]) < 5


def test_com_correction_switch_matches_the_densities():
    """log q_gaussian - log q_chi = log h_chi(c) - log h_gaussian(c), from preprocess.com_log_density."""
    rng = np.random.default_rng(1)
    c = rng.normal(scale=0.2, size=(50, 3))
    n = 23
    log_q_chi = rng.normal(size=50)
    got = switch_com_correction(log_q_chi, c, "chi", "gaussian")
    ct, nt = torch.as_tensor(c), torch.full((50,), n)
    expected = log_q_chi + (com_log_density(ct, nt, "chi") - com_log_density(ct, nt, "gaussian")).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(switch_com_correction(got, c, "gaussian", "chi"), log_q_chi, atol=1e-12)
    with pytest.raises(ValueError, match="unknown centre-of-mass correction 'bogus'"):
        switch_com_correction(log_q_chi, c, "chi", "bogus")


def test_diagnose_has_stable_keys(md_frames):
    top, x, e_kT = md_frames
    c = np.random.default_rng(2).normal(scale=0.2, size=(40, 3))
    d = diagnose(top, T, x[:40], x[40:80], e_kT[40:80], -e_kT[40:80], np.zeros(40), centroid_flow=c,
                 drop_top_fraction=0.0)
    assert set(d) == {"energy_terms", "bond_deviation", "weights"}
    assert set(d["energy_terms"]["bonds"]) == {"md_mean_kT", "proposal_median_kT", "snis_mean_kT"}
    assert set(d["bond_deviation"]["C-H"]) == {"n_bonds", "md_rms_nm", "proposal_rms_nm", "ratio"}
    assert set(d["weights"]["ess"]) == {"chi", "gaussian"}
    assert d["weights"]["ess"]["chi"] == pytest.approx(1.0)  # exact density, chi: the weights do not depend on c
    # the other correction makes them vary with c: its Kish ESS from the two densities of c (preprocess), exactly
    ct, nt = torch.as_tensor(c), torch.full((40,), x.shape[1])
    # log q under the gaussian correction = log q_chi + log h_chi(c) - log h_gaussian(c); here -E - log q_chi = 0
    log_w = (com_log_density(ct, nt, "gaussian") - com_log_density(ct, nt, "chi")).numpy()
    w = np.exp(log_w - log_w.max())
    assert d["weights"]["ess"]["gaussian"] == pytest.approx(w.sum() ** 2 / (40 * (w**2).sum()), rel=1e-9)
    assert d["weights"]["ess"]["gaussian"] < 0.9
