import mdtraj as md
import numpy as np
import ot
import pytest
from scipy.spatial.distance import jensenshannon

from proseflow.evaluation.metrics import (
    as_trajectory,
    backbone_dihedrals,
    energy_w2,
    jensen_shannon,
    kmeans_jsd,
    subsample,
    subsample_indices,
    tica_w2,
    torus_cost_matrix,
    torus_w2,
)
from proseflow.physics.structures import build_peptide


def test_energy_w2_self_is_zero_and_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, size=200_000)
    assert energy_w2(a, a) == 0.0
    b = rng.normal(-0.5, 1.2, size=200_000)
    expected = np.sqrt((1.0 + 0.5) ** 2 + (2.0 - 1.2) ** 2)
    assert energy_w2(a, b) == pytest.approx(expected, rel=0.01)
    c = rng.normal(-0.5, 1.2, size=150_000)  # unequal sizes use the quantile path
    assert energy_w2(a, c) == pytest.approx(expected, rel=0.01)


def test_energy_w2_weighted_matches_exact_ot():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=60), rng.normal(0.3, 1.5, size=45)
    wa, wb = rng.exponential(size=60), rng.exponential(size=45)
    reference = np.sqrt(ot.emd2(wa / wa.sum(), wb / wb.sum(), (a[:, None] - b[None]) ** 2))
    assert energy_w2(a, b, wa, wb) == pytest.approx(reference, rel=1e-8)
    # equal weights give the unweighted value; zero weights remove samples
    assert energy_w2(a, b, np.full(60, 3.0), None) == pytest.approx(energy_w2(a, b), rel=1e-12)
    same = rng.normal(size=60)
    assert energy_w2(a, same, np.ones(60), np.ones(60)) == pytest.approx(energy_w2(a, same), rel=1e-12)
    w_with_zero = np.r_[np.ones(45), np.zeros(5)]
    b_extra = np.r_[b, np.full(5, np.inf)]
    assert energy_w2(a, b_extra, None, w_with_zero) == pytest.approx(energy_w2(a, b), rel=1e-12)
    assert energy_w2(a, b_extra) == np.inf


def test_torus_w2_wraparound_and_shift_invariance():
    rng = np.random.default_rng(2)
    near_plus_pi = np.pi - 0.05 + 0.02 * rng.normal(size=(200, 2))
    near_minus_pi = -np.pi + 0.05 + 0.02 * rng.normal(size=(200, 2))
    w_torus = torus_w2(near_plus_pi, near_minus_pi)
    w_euclid = tica_w2(near_plus_pi, near_minus_pi)
    assert w_torus < 0.2 and w_euclid > 8.0
    assert w_torus == pytest.approx(np.sqrt(2) * 0.1, abs=0.03)
    assert torus_w2(near_plus_pi + 2 * np.pi, near_minus_pi - 4 * np.pi) == pytest.approx(w_torus, abs=1e-9)
    assert torus_w2(near_plus_pi, near_plus_pi) == pytest.approx(0.0, abs=1e-9)


def test_torus_cost_matrix_against_bruteforce():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-7, 7, size=(5, 3)), rng.uniform(-7, 7, size=(4, 3))
    brute = np.zeros((5, 4))
    for i in range(5):
        for j in range(4):
            for k in range(3):
                d = abs(a[i, k] - b[j, k]) % (2 * np.pi)
                brute[i, j] += min(d, 2 * np.pi - d) ** 2
    assert np.allclose(torus_cost_matrix(a, b), brute)


def test_tica_w2_of_shifted_clouds_is_the_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 2))
    shift = np.array([0.6, -0.8])
    assert tica_w2(a, a + shift) == pytest.approx(1.0, rel=1e-9)  # translation: exact OT is the shift
    b = rng.normal(size=(2000, 2)) + shift  # independent samples: close to the shift
    assert tica_w2(rng.normal(size=(2000, 2)), b) == pytest.approx(1.0, abs=0.15)


def test_jsd_and_kmeans_jsd():
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.5, 0.0])
    assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q) ** 2)
    rng = np.random.default_rng(5)
    ref = np.concatenate([rng.normal(-2, 0.5, size=(1000, 2)), rng.normal(2, 0.5, size=(1000, 2))])
    same = np.concatenate([rng.normal(-2, 0.5, size=(1000, 2)), rng.normal(2, 0.5, size=(1000, 2))])
    one_mode = rng.normal(2, 0.5, size=(2000, 2))
    assert kmeans_jsd(ref, same, k=10) < 0.01
    # mode histograms (1/2, 1/2) vs (0, 1): JSD = 0.5 ln(4/3) + 0.25 ln 2 + 0.25 ln(2/3)
    expected = 0.5 * np.log(4 / 3) + 0.25 * np.log(2) + 0.25 * np.log(2 / 3)
    assert kmeans_jsd(ref, one_mode, k=10) == pytest.approx(expected, abs=0.01)
    # weights that remove one mode of the samples
    w = np.r_[np.ones(1000), np.zeros(1000)]
    assert kmeans_jsd(ref, same, k=10, w_samples=w) == pytest.approx(expected, abs=0.01)
    # torus: angles near +pi and -pi are the same cluster
    ang = np.pi - 0.1 + 0.05 * rng.normal(size=(500, 2))
    assert kmeans_jsd(ang, ang - 2 * np.pi, k=5, torus=True) < 1e-12


def test_subsample():
    idx = subsample_indices(100_000, 1000, seed=0)
    assert len(idx) == 1000 == len(np.unique(idx))
    assert np.array_equal(idx, subsample_indices(100_000, 1000, seed=0))
    a, b, c = subsample(np.arange(50), np.arange(50) * 2, None, n_max=10, seed=1)
    assert np.array_equal(b, 2 * a) and c is None and len(a) == 10
    assert len(subsample(np.arange(5), n_max=10)[0]) == 5


def test_backbone_dihedrals_shape_and_values():
    top, x = build_peptide("AGT")
    traj = as_trajectory(np.stack([x, x]), top)
    dih = backbone_dihedrals(traj)
    assert dih.shape == (2, 4)
    ca = [a.index for a in traj.topology.atoms if a.name == "CA"]
    n = [a.index for a in traj.topology.atoms if a.name == "N"]
    c = [a.index for a in traj.topology.atoms if a.name == "C"]
    phi2 = md.compute_dihedrals(traj, [[c[0], n[1], ca[1], c[1]]])[0, 0]
    psi1 = md.compute_dihedrals(traj, [[n[0], ca[0], c[0], n[1]]])[0, 0]
    assert dih[0, 0] == pytest.approx(phi2, abs=1e-5) and dih[0, 2] == pytest.approx(psi1, abs=1e-5)
