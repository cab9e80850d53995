import mdtraj as md
import numpy as np
import pytest
from deeptime.covariance import KoopmanWeightingEstimator
from deeptime.decomposition import TICA

from proseflow.evaluation.metrics import as_trajectory
from proseflow.evaluation.tica import TicaModel, compute_features, feature_spec, fit_tica
from proseflow.physics.structures import build_peptide


def _two_state_process(n_frames=20_000, seed=0):
    """3-D series: coordinate 0 hops slowly between wells at -1 and +1, coordinates 1-2 are fast noise;
    then mixed linearly so the slow direction is not a feature axis."""
    rng = np.random.default_rng(seed)
    flips = rng.uniform(size=n_frames) < 0.002
    state = np.cumsum(flips) % 2
    x = np.stack([2.0 * state - 1 + 0.3 * rng.normal(size=n_frames),
                  rng.normal(size=n_frames), rng.normal(size=n_frames)], axis=1)
    mixing = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.3], [0.0, 0.1, 1.0]])
    return x @ mixing, state, mixing


def test_tica_recovers_slow_coordinate_and_matches_deeptime():
    features, state, mixing = _two_state_process()
    model = fit_tica(features, lag=10, dim=2, koopman=True, chunk_frames=3000)
    tic1 = model.transform(features)[:, 0]
    assert abs(np.corrcoef(tic1, state)[0, 1]) > 0.9
    # in the unmixed coordinates the first TIC points along the slow axis
    direction = mixing @ model.projection[:, 0]  # tic1 = features @ p = unmixed @ (mixing @ p)
    direction /= np.linalg.norm(direction)
    assert abs(direction[0]) > 0.95
    assert model.eigenvalues[0] > 0.8 > 0.1 > abs(model.eigenvalues[1])
    # chunked accumulation equals deeptime's own fit with the Koopman model as the keyword `weights=`
    koopman = KoopmanWeightingEstimator(lagtime=10).fit(features).fetch_model()
    reference = TICA(lagtime=10, dim=2).fit(features, weights=koopman).fetch_model()
    assert np.allclose(model.transform(features), reference.transform(features), atol=1e-8)
    unweighted = fit_tica(features, lag=10, koopman=False)
    assert np.allclose(unweighted.transform(features), TICA(lagtime=10, dim=2).fit(features).transform(features),
                       atol=1e-8)


def test_koopman_weights_change_a_nonequilibrium_fit():
    # a trajectory started far from equilibrium: reweighting must change the estimate (the authors' trap)
    rng = np.random.default_rng(1)
    x = np.zeros((5000, 2))
    for t in range(1, len(x)):
        x[t] = 0.99 * x[t - 1] + 0.1 * rng.normal(size=2)
    x[:, 0] += 5.0 * np.exp(-np.arange(len(x)) / 500)
    weighted, plain = fit_tica(x, lag=5), fit_tica(x, lag=5, koopman=False)
    assert not np.allclose(weighted.mean, plain.mean, atol=1e-3)


def test_features_and_roundtrip(tmp_path):
    top, x0 = build_peptide("MC", minimize=False)
    mdtop = md.Topology.from_openmm(top)
    rng = np.random.default_rng(2)
    xyz = x0[None] + 0.02 * rng.normal(size=(300, len(x0), 3))
    traj = as_trajectory(xyz, top)
    spec = feature_spec(mdtop)
    cns = [a.index for a in mdtop.atoms if a.element.symbol in ("C", "N", "S")]
    assert len(spec.pair_indices) == len(cns) * (len(cns) - 1) // 2
    assert any(mdtop.atom(i).element.symbol == "S" for i in spec.pair_indices.ravel())
    assert len(spec.dihedral_indices) == 1 + 1 + 1  # phi(2), psi(1), omega(1)
    features = compute_features(traj.xyz, spec, chunk_frames=64)
    dist = md.compute_distances(traj, spec.pair_indices, periodic=False)
    dih = md.compute_dihedrals(traj, spec.dihedral_indices, periodic=False)
    expected = np.concatenate([dist, np.sin(dih), np.cos(dih)], axis=1)
    assert np.allclose(features, expected, atol=1e-4)

    model = fit_tica(traj, lag=3, dim=2)
    path = tmp_path / "tica.model"
    model.save(path)
    loaded = TicaModel.load(path)
    assert loaded.lag_frames == 3 and loaded.koopman and loaded.dim == 2
    assert np.array_equal(loaded.spec.pair_indices, spec.pair_indices)
    tics = model.transform(traj)
    assert tics.shape == (300, 2)
    assert np.allclose(loaded.transform(xyz), tics, atol=1e-6)
    assert np.allclose(loaded.transform(features), (features - model.mean) @ model.projection)
    assert np.allclose(fit_tica(xyz.astype(np.float32), lag=3, topology=top).projection, model.projection,
                       atol=1e-6)


def test_errors():
    with pytest.raises(ValueError):
        fit_tica(np.zeros((5, 3)), lag=10)
    with pytest.raises(ValueError):
        fit_tica(np.zeros((50, 4, 3)), lag=2)


def test_replicas_never_pair_across_boundaries():
    """Two replicas one after another: the fit equals deeptime's on the list of the two trajectories."""
    rng = np.random.default_rng(3)
    a, b = (np.cumsum(rng.normal(size=(4000, 3)), axis=0) * 0.01 + rng.normal(size=(4000, 3)) for _ in range(2))
    b += 50.0  # a jump at the boundary that a pair across it would see as a slow process
    model = fit_tica(np.concatenate([a, b]), lag=10, dim=2, koopman=False, scaling=None, n_segments=2)
    ref = TICA(lagtime=10, dim=2, scaling=None).fit([a, b]).fetch_model()
    np.testing.assert_allclose(np.abs(model.projection), np.abs(ref.singular_vectors_left[:, :2]), atol=1e-6)
    joined = fit_tica(np.concatenate([a, b]), lag=10, dim=2, koopman=False, scaling=None)
    assert not np.allclose(np.abs(joined.projection), np.abs(model.projection), atol=1e-3)
    with pytest.raises(ValueError, match="equal replicas"):
        fit_tica(np.concatenate([a, b[:-1]]), lag=10, koopman=False, n_segments=2)
