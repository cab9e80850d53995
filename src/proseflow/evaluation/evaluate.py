"""Per-system evaluation: the paper's metrics (PAPER.md section 5) for every sampler against reference MD.

A sampler's output is a sample set (``positions_nm``, ``energy_kT``, normalised ``log_weights`` or None for
an equally weighted set). Every metric compares ``n_metric`` reference frames (evenly spaced over the MD)
with ``n_metric`` samples drawn from the weighted set by multinomial resampling (an equally weighted set is
subsampled), so weighted and unweighted samplers are measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proseflow.evaluation.metrics import (
    as_trajectory,
    backbone_dihedrals,
    energy_w2,
    kmeans_jsd,
    tica_w2,
    torus_w2,
)
from proseflow.evaluation.registry import DISTRIBUTION
from proseflow.physics import trajectory_io
from proseflow.physics.system import kT_kJ_per_mol
from proseflow.samplers.resampling import kish_ess, multinomial_resample


@dataclass
class Projection:
    """What every metric needs of a configuration set."""

    energy_kT: np.ndarray  # [n]
    phi_psi: np.ndarray  # [n, 2(L-1)] rad
    tica: np.ndarray  # [n, 2]

    def take(self, idx: np.ndarray) -> Projection:
        return Projection(self.energy_kT[idx], self.phi_psi[idx], self.tica[idx])


def project(positions_nm: np.ndarray, energy_kT: np.ndarray, topology, tica_model) -> Projection:
    traj = as_trajectory(positions_nm, topology)
    return Projection(np.asarray(energy_kT, dtype=np.float64), backbone_dihedrals(traj),
                      tica_model.transform(np.asarray(positions_nm, dtype=np.float32)))


def reference_indices(md_path, n_frames: int) -> np.ndarray:
    """Indices of ``n_frames`` evenly spaced frames of the reference MD (all frames if it has fewer)."""
    total = trajectory_io.n_frames(md_path)
    return np.unique(np.linspace(0, total - 1, min(n_frames, total)).round().astype(int))


def reference_frames(md_path, n_frames: int, data: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, positions_nm [n, N, 3], energy_kJ_per_mol [n]) of ``n_frames`` evenly spaced frames of the
    reference MD, from one read of the file (``data``: what ``trajectory_io.read`` returned, if already read)."""
    idx = reference_indices(md_path, n_frames)
    data = trajectory_io.read(md_path) if data is None else data
    return idx, data["positions_nm"][idx], data["energy_kJ_per_mol"][idx]


def reference(md_path, topology, tica_model, temperature_K: float, n_frames: int, frames=None) -> Projection:
    """``n_frames`` evenly spaced frames of the reference MD (energies from the file, in kT); ``frames``: what
    :func:`reference_frames` returned, if the caller has already read them."""
    _, positions_nm, energy_kJ = reference_frames(md_path, n_frames) if frames is None else frames
    e_kT = np.asarray(energy_kJ, dtype=np.float64) / kT_kJ_per_mol(temperature_K)
    return project(positions_nm, e_kT, topology, tica_model)


def noise_floor(md_path, topology, tica_model, temperature_K: float, n_metric: int, data: dict | None = None) -> dict:
    """Each W2 between two independent halves of the reference MD at ``n_metric / 2`` frames each (replicas
    0..R/2-1 vs R/2..R-1 when R is even, else the first vs the second half): a sampler's W2 at or below it
    cannot be told from the reference's own sampling noise. ``data``: the file as ``trajectory_io.read`` returned it,
    if already read."""
    from proseflow.evaluation.metrics import energy_w2, tica_w2, torus_w2

    data = trajectory_io.read(md_path) if data is None else data
    half = len(data["positions_nm"]) // 2  # replicas are stored one after another
    n = min(n_metric // 2, half)
    idx = [np.linspace(a, a + half - 1, n).round().astype(int) for a in (0, half)]
    e = data["energy_kJ_per_mol"].astype(np.float64) / kT_kJ_per_mol(temperature_K)
    a, b = (project(data["positions_nm"][i], e[i], topology, tica_model) for i in idx)
    return {"n_per_half": int(n), "replicas": trajectory_io.segments(md_path),
            "energy_w2": float(energy_w2(a.energy_kT, b.energy_kT)), "torus_w2": float(torus_w2(a.phi_psi, b.phi_psi)),
            "tica_w2": float(tica_w2(a.tica, b.tica))}


def resample_for_metrics(log_weights: np.ndarray | None, n_total: int, n_metric: int, seed: int) -> np.ndarray:
    """Indices of ``n_metric`` equally weighted samples representing the (weighted) set."""
    rng = np.random.default_rng(seed)
    if log_weights is None:
        return np.sort(rng.choice(n_total, size=min(n_metric, n_total), replace=False))
    if not np.isfinite(log_weights).any():
        return np.array([], dtype=int)
    return multinomial_resample(log_weights, n_metric, rng)


def sampler_metrics(ref: Projection, samples: Projection, log_weights: np.ndarray | None, n_metric: int,
                    seed: int = 0, n_energy_evals: int | None = None, k: int = 20) -> dict:
    n = len(samples.energy_kT)
    finite = np.isfinite(samples.energy_kT)
    out = {"n_samples": int(n), "n_energy_evals": int(n if n_energy_evals is None else n_energy_evals),
           "n_nonfinite": int((~finite).sum()),
           "ess": float(kish_ess(log_weights, n_total=n)) if log_weights is not None else float("nan")}
    if log_weights is None:  # an equally weighted set: non-finite energies cannot be represented; drop them
        idx = np.flatnonzero(finite)
        idx = idx[resample_for_metrics(None, len(idx), n_metric, seed)]
    else:
        idx = resample_for_metrics(log_weights, n, n_metric, seed)
    if len(idx) == 0:
        return {**out, **{m: float("nan") for m in DISTRIBUTION}}
    s = samples.take(idx)
    out.update(
        energy_w2=float(energy_w2(ref.energy_kT, s.energy_kT)),
        torus_w2=float(torus_w2(ref.phi_psi, s.phi_psi)),
        tica_w2=float(tica_w2(ref.tica, s.tica)),
        tica_jsd=float(kmeans_jsd(ref.tica, s.tica, k=k, seed=seed)),
        torus_jsd=float(kmeans_jsd(ref.phi_psi, s.phi_psi, k=k, seed=seed, torus=True)),
        mean_energy_kT=float(s.energy_kT.mean()),
    )
    return out
