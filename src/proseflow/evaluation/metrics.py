"""Distribution metrics between samples and reference MD (PAPER.md section 5).

- ``energy_w2``: exact 1-D Wasserstein-2 between (weighted) empirical energy distributions (in kT).
- ``torus_w2``: exact OT over backbone dihedrals, cost sum_d min(|d|, 2pi-|d|)^2 (radians), sqrt of it.
- ``tica_w2``: exact OT, squared Euclidean cost, sqrt of it (first TICA components).
- ``kmeans_jsd``: Jensen-Shannon divergence (natural log, so in [0, ln 2]) between k-means histograms,
  clusters fitted on the reference (``fit_kmeans``; the pages' 3D viewer shows the same states).
Exact OT is O(n^2) memory: subsample both sets to at most ``n_max`` (1e4) first with ``subsample``.
"""

from __future__ import annotations

import mdtraj as md
import numpy as np

TWO_PI = 2.0 * np.pi
OT_MAX_ITER = 100_000_000


def subsample_indices(n_total: int, n_max: int = 10_000, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """Sorted indices of at most ``n_max`` of ``n_total`` items, without replacement (all if n_total <= n_max)."""
    if n_total <= n_max:
        return np.arange(n_total)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=int(n_max), replace=False))


def subsample(*arrays: np.ndarray | None, n_max: int = 10_000, seed: int | np.random.Generator | None = 0):
    """The same random rows (at most ``n_max``) of every array; ``None`` passes through. Returns a tuple."""
    lengths = {len(a) for a in arrays if a is not None}
    if len(lengths) != 1:
        raise ValueError(f"arrays must have one common length, got {sorted(lengths)}")
    idx = subsample_indices(lengths.pop(), n_max, seed)
    return tuple(None if a is None else np.asarray(a)[idx] for a in arrays)


def as_trajectory(positions_nm: np.ndarray, topology) -> md.Trajectory:
    """mdtraj Trajectory from positions [B,N,3] or [N,3] nm and an OpenMM or mdtraj topology."""
    if not isinstance(topology, md.Topology):
        topology = md.Topology.from_openmm(topology)
    xyz = np.asarray(positions_nm, dtype=np.float32)
    return md.Trajectory(xyz.reshape(-1, topology.n_atoms, 3), topology)


def backbone_dihedrals(traj: md.Trajectory) -> np.ndarray:
    """[T, 2(L-1)] radians: phi of residues 2..L, then psi of residues 1..L-1."""
    _, phi = md.compute_phi(traj, periodic=False)
    _, psi = md.compute_psi(traj, periodic=False)
    return np.concatenate([phi, psi], axis=1).astype(np.float64)


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, not all zero, one per sample")
    return w / w.sum()


def energy_w2(e1: np.ndarray, e2: np.ndarray, w1: np.ndarray | None = None, w2: np.ndarray | None = None) -> float:
    """Exact 1-D W2 between weighted empirical distributions: sqrt(int_0^1 (F1^-1(u) - F2^-1(u))^2 du).

    Samples with zero weight are ignored. A non-finite value with positive weight gives ``inf``.
    """
    e1, e2 = np.asarray(e1, dtype=np.float64).ravel(), np.asarray(e2, dtype=np.float64).ravel()
    if w1 is None and w2 is None and len(e1) == len(e2):
        if not (np.all(np.isfinite(e1)) and np.all(np.isfinite(e2))):
            return float("inf")
        return float(np.sqrt(np.mean((np.sort(e1) - np.sort(e2)) ** 2)))
    p1, p2 = _weights(w1, len(e1)), _weights(w2, len(e2))
    e1, p1, e2, p2 = e1[p1 > 0], p1[p1 > 0], e2[p2 > 0], p2[p2 > 0]
    if not (np.all(np.isfinite(e1)) and np.all(np.isfinite(e2))):
        return float("inf")
    o1, o2 = np.argsort(e1), np.argsort(e2)
    e1, p1, e2, p2 = e1[o1], p1[o1], e2[o2], p2[o2]
    c1, c2 = np.cumsum(p1), np.cumsum(p2)
    c1[-1] = c2[-1] = 1.0
    u = np.union1d(c1, c2)  # breakpoints of both quantile step functions, ends at 1
    du = np.diff(u, prepend=0.0)
    q1 = e1[np.minimum(np.searchsorted(c1, u, side="left"), len(e1) - 1)]  # F^-1 on (u_{k-1}, u_k]
    q2 = e2[np.minimum(np.searchsorted(c2, u, side="left"), len(e2) - 1)]
    return float(np.sqrt(max(np.sum(du * (q1 - q2) ** 2), 0.0)))


def torus_cost_matrix(a_rad: np.ndarray, b_rad: np.ndarray) -> np.ndarray:
    """[n, m] sum over dims of the squared wrapped angle difference min(|d|, 2pi-|d|)^2."""
    a_rad, b_rad = np.atleast_2d(a_rad).astype(np.float64), np.atleast_2d(b_rad).astype(np.float64)
    cost = np.zeros((len(a_rad), len(b_rad)))
    for k in range(a_rad.shape[1]):
        d = np.subtract.outer(a_rad[:, k], b_rad[:, k])
        np.remainder(d, TWO_PI, out=d)  # [0, 2pi)
        d -= np.pi
        np.abs(d, out=d)
        np.subtract(np.pi, d, out=d)  # min(d, 2pi - d) in [0, pi]
        d *= d
        cost += d
    return cost


def _exact_ot(cost: np.ndarray, wa: np.ndarray | None, wb: np.ndarray | None) -> float:
    import ot

    n, m = cost.shape
    value = ot.emd2(_weights(wa, n), _weights(wb, m), cost, numItermax=OT_MAX_ITER)
    return float(np.sqrt(max(float(value), 0.0)))


def torus_w2(a_rad: np.ndarray, b_rad: np.ndarray, wa: np.ndarray | None = None,
             wb: np.ndarray | None = None) -> float:
    """Exact W2 on the torus (uniform weights unless given) between angle sets [n, D] and [m, D], radians."""
    return _exact_ot(torus_cost_matrix(a_rad, b_rad), wa, wb)


def tica_w2(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Exact Euclidean W2 (uniform weights unless given) between point sets [n, D] and [m, D]."""
    import ot

    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return _exact_ot(ot.dist(a, b, metric="sqeuclidean"), wa, wb)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JS divergence (natural log) between two histograms (normalised here)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x):
        nz = x > 0
        return np.sum(x[nz] * np.log(x[nz] / m[nz]))

    return float(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))


def fit_kmeans(ref: np.ndarray, k: int = 20, seed: int = 0):
    """The clustering of ``kmeans_jsd``: deeptime k-means (k-means++, fixed seed) fitted on ``ref`` [n, D].

    The fitted model has ``cluster_centers`` [k', D] and ``transform(x)`` (cluster index of each row)."""
    from deeptime.clustering import KMeans

    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    return KMeans(n_clusters=k, init_strategy="kmeans++", fixed_seed=int(seed), n_jobs=1).fit(ref).fetch_model()


def kmeans_jsd(ref: np.ndarray, samples: np.ndarray, k: int = 20, seed: int = 0, torus: bool = False,
               w_ref: np.ndarray | None = None, w_samples: np.ndarray | None = None) -> float:
    """JS divergence between cluster histograms of ``ref`` and ``samples`` ([n, D] and [m, D]).

    k-means (deeptime, k-means++, fixed seed) is fitted on the reference (unweighted); ``torus=True`` maps
    angles to (sin, cos) first. Optional weights weight the histograms.
    """
    def embed(x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.concatenate([np.sin(x), np.cos(x)], axis=1) if torus else x

    ref_x, samples_x = embed(ref), embed(samples)
    model = fit_kmeans(ref_x, k, seed)
    n_clusters = model.cluster_centers.shape[0]
    h_ref = np.bincount(model.transform(ref_x), weights=_weights(w_ref, len(ref_x)), minlength=n_clusters)
    h_samples = np.bincount(model.transform(samples_x), weights=_weights(w_samples, len(samples_x)),
                            minlength=n_clusters)
    return jensen_shannon(h_ref, h_samples)
