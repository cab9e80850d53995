"""TICA of the reference MD (PAPER.md section 5).

Features: all pairwise distances (nm) between the carbon, nitrogen and sulfur atoms (by element, every
C/N/S including side chains), then sin and cos of every backbone phi, psi and omega (mdtraj definitions).
TICA: deeptime ``TICA(lagtime=lag, dim=2)`` (default kinetic-map scaling), with Koopman reweighting
(``KoopmanWeightingEstimator``) passed as the keyword ``weights=``: deeptime ignores a positional second
argument to ``fit``, which silently gave the authors an unweighted TICA.

``TicaModel`` stores the feature spec (atom index pairs and dihedral quadruples), the feature mean and
the projection matrix, so it projects positions [B, N, 3] nm of the same atom order without a topology.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import mdtraj as md
import numpy as np

from proseflow.artefacts import save_npz
from proseflow.physics.structures import dihedrals_rad

FEATURE_ELEMENTS = ("C", "N", "S")


@dataclass
class FeatureSpec:
    pair_indices: np.ndarray  # [P, 2] atom indices, distances in nm
    dihedral_indices: np.ndarray  # [D, 4] atom indices, features sin then cos

    @property
    def n_features(self) -> int:
        return len(self.pair_indices) + 2 * len(self.dihedral_indices)


def feature_spec(topology) -> FeatureSpec:
    """C/N/S pair distances + phi, psi, omega dihedrals of an OpenMM or mdtraj topology."""
    if not isinstance(topology, md.Topology):
        topology = md.Topology.from_openmm(topology)
    atoms = [a.index for a in topology.atoms if a.element is not None and a.element.symbol in FEATURE_ELEMENTS]
    i, j = np.triu_indices(len(atoms), k=1)
    pairs = np.stack([np.asarray(atoms)[i], np.asarray(atoms)[j]], axis=1).astype(np.int64)
    dummy = md.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    quads = [fn(dummy)[0] for fn in (md.compute_phi, md.compute_psi, md.compute_omega)]
    dihedrals = np.concatenate([q.reshape(-1, 4) for q in quads], axis=0).astype(np.int64)
    return FeatureSpec(pair_indices=pairs.reshape(-1, 2), dihedral_indices=dihedrals)


def compute_features(positions_nm: np.ndarray, spec: FeatureSpec, chunk_frames: int = 2000) -> np.ndarray:
    """[B, F] float64 features of positions [B, N, 3] (or [N, 3]) nm, in chunks to bound memory."""
    x_all = np.asarray(positions_nm, dtype=np.float64)
    x_all = x_all[None] if x_all.ndim == 2 else x_all
    out = np.empty((len(x_all), spec.n_features))
    n_pairs = len(spec.pair_indices)
    n_dih = len(spec.dihedral_indices)
    for start in range(0, len(x_all), chunk_frames):
        x = x_all[start:start + chunk_frames]
        rows = slice(start, start + len(x))
        d = x[:, spec.pair_indices[:, 0]] - x[:, spec.pair_indices[:, 1]]
        out[rows, :n_pairs] = np.sqrt(np.sum(d * d, axis=-1))
        angles = dihedrals_rad(x, spec.dihedral_indices)
        out[rows, n_pairs:n_pairs + n_dih] = np.sin(angles)
        out[rows, n_pairs + n_dih:] = np.cos(angles)
    return out


@dataclass
class TicaModel:
    mean: np.ndarray  # [F] feature mean (Koopman-weighted when koopman)
    projection: np.ndarray  # [F, dim]: tics = (features - mean) @ projection
    eigenvalues: np.ndarray  # [dim] autocorrelations at the lag
    lag_frames: int
    koopman: bool
    scaling: str | None = "kinetic_map"
    spec: FeatureSpec | None = None  # None when fitted on raw features
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.projection.shape[1]

    def features(self, data) -> np.ndarray:
        """Features of an mdtraj Trajectory, positions [B, N, 3] nm, or a features array [T, F] (returned as is)."""
        if isinstance(data, md.Trajectory):
            data = data.xyz
        data = np.asarray(data, dtype=np.float64)
        is_positions = data.ndim == 3 or (data.ndim == 2 and data.shape[1] == 3 and self.spec is not None)
        if not is_positions:
            if data.ndim != 2 or data.shape[1] != len(self.mean):
                raise ValueError(f"features must be [T, {len(self.mean)}], got {data.shape}")
            return data
        if self.spec is None:
            raise ValueError("model fitted on raw features: pass features, not positions")
        return compute_features(data, self.spec)

    def transform(self, data) -> np.ndarray:
        """[T, dim] TICA coordinates of a Trajectory, positions [B, N, 3] nm or features [T, F]."""
        return (self.features(data) - self.mean) @ self.projection

    def save(self, path) -> None:
        arrays = dict(mean=self.mean, projection=self.projection, eigenvalues=self.eigenvalues)
        if self.spec is not None:
            arrays.update(pair_indices=self.spec.pair_indices, dihedral_indices=self.spec.dihedral_indices)
        info = dict(lag_frames=self.lag_frames, koopman=self.koopman, scaling=self.scaling, meta=self.meta)
        save_npz(path, info=np.array(json.dumps(info)), **arrays)

    @classmethod
    def load(cls, path) -> TicaModel:
        with np.load(path, allow_pickle=False) as f:
            info = json.loads(str(f["info"]))
            spec = None
            if "pair_indices" in f:
                spec = FeatureSpec(pair_indices=f["pair_indices"], dihedral_indices=f["dihedral_indices"])
            return cls(mean=f["mean"], projection=f["projection"], eigenvalues=f["eigenvalues"],
                       lag_frames=int(info["lag_frames"]), koopman=bool(info["koopman"]),
                       scaling=info["scaling"], spec=spec, meta=info.get("meta", {}))


def _lagged_chunks(features_of, n_frames: int, lag: int, chunk_frames: int, n_segments: int = 1):
    """(x_t, x_t+lag) blocks over all t in [0, T - lag) of each of ``n_segments`` equal, independent
    trajectories stored one after another (pairs never cross a boundary); ``features_of(start, stop)``
    gives rows start:stop of the whole series."""
    seg = n_frames // n_segments
    for first in range(0, seg * n_segments, seg):
        for start in range(first, first + seg - lag, chunk_frames):
            stop = min(start + chunk_frames, first + seg - lag)
            block = features_of(start, stop + lag)
            yield block[: stop - start], block[lag:]


def fit_tica(data, lag: int = 100, dim: int = 2, koopman: bool = True, topology=None,
             scaling: str | None = "kinetic_map", epsilon: float = 1e-6, chunk_frames: int = 20_000,
             n_segments: int = 1) -> TicaModel:
    """Fit TICA on ONE reference time series: an mdtraj Trajectory, positions [T, N, 3] nm (then ``topology``
    is required) or a features array [T, F]. ``lag`` in frames (100 frames = 1 ns at 10 ps/frame).
    ``n_segments`` > 1: the series is that many independent replicas of equal length, one after another.

    Covariances are accumulated in chunks of ``chunk_frames`` (features of 5 us of an 8-mer would not fit
    in memory at once); the result equals deeptime's ``TICA.fit(features, weights=koopman_model)``.
    """

    spec = None
    if isinstance(data, md.Trajectory):
        spec, xyz = feature_spec(data.topology), data.xyz
    else:
        data = np.asarray(data)
        if data.ndim == 3:
            if topology is None:
                raise ValueError("positions need a topology")
            spec, xyz = feature_spec(topology), data
    if spec is not None:
        def features_of(start, stop):
            return compute_features(xyz[start:stop], spec)
    else:
        features = np.asarray(data, dtype=np.float64)

        def features_of(start, stop):
            return features[start:stop]
    n_frames = len(data)
    if n_segments < 1 or n_frames % n_segments:
        raise ValueError(f"{n_frames} frames do not split into {n_segments} equal replicas")
    if n_frames // n_segments <= lag:
        raise ValueError(f"{n_frames // n_segments} frames per replica is not more than the lag {lag}")
    n_pairs = n_frames - n_segments * lag
    n_features = features_of(0, 1).shape[1]
    if koopman and n_pairs <= n_features:
        raise ValueError(
            f"Koopman-reweighted TICA needs more time-lagged pairs ({n_pairs}) than features ({n_features}): "
            "the covariance matrices are singular. Use a longer reference trajectory (or a smaller stride).")

    def chunks():
        return _lagged_chunks(features_of, n_frames, lag, chunk_frames, n_segments)

    # deeptime's eigensolvers can fail on nearly singular covariances of short, strongly correlated
    # trajectories (eig_qr assertions, NaN Koopman weights); retry with a larger truncation epsilon, and as
    # a last resort fit without Koopman weights (recorded in the model, logged as a warning).
    log = logging.getLogger(__name__)
    attempts = [(koopman, eps) for eps in (epsilon, 1e-5, 1e-4, 1e-3) if eps >= epsilon]
    if koopman:
        attempts.append((False, epsilon))
    errors = []
    for use_koopman, eps in attempts:
        try:
            model = _fit_with_epsilon(chunks, lag, dim, use_koopman, scaling, eps)
            if not np.isfinite(model.singular_vectors_left[:, : model.output_dimension]).all():
                raise ValueError("non-finite TICA projection")
            break
        except (AssertionError, np.linalg.LinAlgError, ValueError) as e:  # noqa: PERF203
            errors.append(f"koopman={use_koopman}, epsilon={eps:g}: {type(e).__name__}: {e}")
            log.warning("TICA fit failed (%s); retrying", errors[-1])
    else:
        raise ValueError("TICA fit failed: " + "; ".join(errors))
    if koopman and not use_koopman:
        log.warning("Koopman reweighting could not be estimated on this trajectory; TICA fitted WITHOUT it")
    koopman = use_koopman
    out_dim = model.output_dimension
    return TicaModel(mean=np.asarray(model.mean_0, dtype=np.float64),
                     projection=np.asarray(model.singular_vectors_left[:, :out_dim], dtype=np.float64),
                     eigenvalues=np.asarray(model.singular_values[:out_dim], dtype=np.float64),
                     lag_frames=int(lag), koopman=bool(koopman), scaling=scaling, spec=spec)


def _fit_with_epsilon(chunks, lag, dim, koopman, scaling, epsilon):
    from deeptime.covariance import KoopmanWeightingEstimator
    from deeptime.decomposition import TICA

    weights = None
    if koopman:
        koopman_estimator = KoopmanWeightingEstimator(lagtime=lag, epsilon=epsilon)
        for x, y in chunks():
            koopman_estimator.partial_fit((x, y))
        weights = koopman_estimator.fetch_model()  # has .weights(X): deeptime applies it per chunk
    covariance = TICA.covariance_estimator(lagtime=lag)
    for x, y in chunks():
        covariance.partial_fit((x, y), weights=weights)  # keyword: TICA.fit(X, w) would ignore w
    return TICA(lagtime=lag, dim=dim, scaling=scaling, epsilon=epsilon).fit_from_covariances(
        covariance.fetch_model()).fetch_model()
