"""MD versus the flow at equal cost (paper Figure 1 and Figure 4; PAPER.md section 6).

Cost is counted in energy evaluations. MD spends one per integration step, so a budget of B evaluations
is the first B steps after burn-in: the first floor(B / steps_per_frame) saved frames, with
steps_per_frame = save_interval_ps * 1000 / timestep_fs (frame k is saved after (k + 1) * steps_per_frame
steps). The flow spends one per proposal: a budget of B is the first B proposals of a SNIS set, re-weighted
on their own (SNIS redone on the subset, same top-fraction drop), so the ESS is that of B proposals.

Both are scored with ``evaluate.sampler_metrics`` against the same reference ``Projection`` (evenly spaced
frames of the reference MD). Only the <= ``n_metric`` configurations the metrics use are projected
(dihedrals, TICA), so budgets of 1e6 evaluations cost no more to score than 1e4: the result equals
``sampler_metrics`` on the whole projected set (same seed, same resampling indices).

Wall time: MD from ``md_steps_per_s`` in the trajectory's protocol (measured by ``md.simulate``; burn-in not
counted), NaN when absent; the flow from ``wall_time_s`` of the SNIS file (sampling + energies) pro rata.

Rows are tidy dicts (``ROW_KEYS``); budgets that cannot be served (fewer than 2 MD frames, more MD than was
run, more proposals than were drawn) are kept as rows with ``status`` "skipped: <reason>" and NaN metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from proseflow.artefacts import save_csv
from proseflow.evaluation.evaluate import Projection, project, resample_for_metrics, sampler_metrics
from proseflow.evaluation.registry import DISTRIBUTION, W2
from proseflow.physics import trajectory_io
from proseflow.physics.system import kT_kJ_per_mol
from proseflow.samplers.config import PAPER_DROP_TOP_FRACTION
from proseflow.samplers.sample_set import SampleSet, SampleSetError
from proseflow.samplers.snis import kish_ess, snis

log = logging.getLogger(__name__)

SAMPLERS = ("md", "flow")
ROW_KEYS = ("sequence", "sampler", "budget", "status", "n_samples", "wall_time_s", "ess", *DISTRIBUTION,
            "n_energy_evals", "n_nonfinite")


# ---------------------------------------------------------------- budgets
def steps_per_frame(timestep_fs: float, save_interval_ps: float) -> int:
    """Integration steps between two saved frames (a whole number, as ``md.MDProtocol`` enforces)."""
    spf = float(save_interval_ps) * 1000.0 / float(timestep_fs)
    n = int(round(spf))
    if n < 1 or abs(spf - n) > 1e-6 * spf:
        raise ValueError(f"save_interval_ps {save_interval_ps} is not a whole number of {timestep_fs} fs steps")
    return n


def md_frames_for_budget(budget: float, timestep_fs: float, save_interval_ps: float) -> int:
    """Saved frames within the first ``budget`` steps after burn-in: floor(B * timestep_fs / 1000 / save_interval)."""
    return int(budget) // steps_per_frame(timestep_fs, save_interval_ps)


def _budgets(budgets) -> list[int]:
    out = sorted({int(round(float(b))) for b in budgets})
    if not out or out[0] < 1:
        raise ValueError(f"budgets must be positive energy-evaluation counts, got {list(budgets)}")
    return out


def _row(sampler: str, budget: int, sequence: str | None, status: str, wall_time_s: float, metrics: dict | None,
         n_samples: int) -> dict:
    base = {"sequence": sequence, "sampler": sampler, "budget": int(budget), "status": status,
            "n_samples": int(n_samples), "wall_time_s": float(wall_time_s)}
    if metrics is None:
        metrics = {**{k: float("nan") for k in ("ess", *DISTRIBUTION)}, "n_energy_evals": int(budget), "n_nonfinite": 0}
    row = {**base, **{k: v for k, v in metrics.items() if k not in base}}
    return {k: row.get(k) for k in ROW_KEYS} | {k: v for k, v in row.items() if k not in ROW_KEYS}


def _scored(ref: Projection, energy_kT: np.ndarray, positions_of, log_weights: np.ndarray | None, n_metric: int,
            seed: int, n_energy_evals: int, topology, tica_model, kmeans_k: int) -> tuple[dict, Projection]:
    """``sampler_metrics`` of the set (energy_kT, positions), projecting only the configurations it scores.

    Mirrors sampler_metrics' selection (non-finite energies dropped from an unweighted set, then at most
    n_metric without replacement; a weighted set resampled multinomially), projects those, and scores them
    as an equally weighted set, whose selection then keeps every one in order: the same numbers as
    sampler_metrics on the full projection. Returns the metrics and the scored (equally weighted) samples.
    """
    energy_kT = np.asarray(energy_kT, dtype=np.float64)
    n = len(energy_kT)
    if log_weights is None:
        finite = np.flatnonzero(np.isfinite(energy_kT))
        idx = finite[resample_for_metrics(None, len(finite), n_metric, seed)] if len(finite) else finite
    else:
        idx = resample_for_metrics(log_weights, n, n_metric, seed)
    if len(idx):
        uniq, inverse = np.unique(idx, return_inverse=True)
        samples = project(positions_of(uniq), energy_kT[uniq], topology, tica_model).take(inverse.ravel())
    else:
        samples = Projection(np.zeros(0), np.zeros((0, ref.phi_psi.shape[1])), np.zeros((0, ref.tica.shape[1])))
    metrics = sampler_metrics(ref, samples, None, n_metric, seed, n_energy_evals, kmeans_k)
    metrics.update(n_samples=int(n), n_nonfinite=int((~np.isfinite(energy_kT)).sum()))
    if log_weights is not None:
        metrics["ess"] = float(kish_ess(log_weights, n_total=n))
    return metrics, samples


# ---------------------------------------------------------------- MD
class _MDFile:
    """Lazy access to one MD trajectory file: energies (kT) of a prefix, coordinates of chosen frames."""

    def __init__(self, path, temperature_K: float | None = None):
        self.path = Path(path)
        self.protocol = trajectory_io.protocol(path)
        self.n_frames = trajectory_io.n_frames(path)
        self.temperature_K = float(temperature_K if temperature_K is not None else self.protocol["temperature_K"])
        self.steps_per_frame = steps_per_frame(self.protocol["timestep_fs"], self.protocol["save_interval_ps"])
        rate = self.protocol.get("md_steps_per_s")
        self.seconds_per_step = 1.0 / float(rate) if rate else float("nan")

    def energy_kT(self, n: int) -> np.ndarray:
        with trajectory_io.open_checked(self.path) as f:  # trajectory_io layout; read() would load every coordinate
            e = f["potentialEnergy"][:n]
        return e.astype(np.float64) / kT_kJ_per_mol(self.temperature_K)

    def positions(self, sorted_idx: np.ndarray) -> np.ndarray:
        with trajectory_io.open_checked(self.path) as f:
            return f["coordinates"][np.asarray(sorted_idx, dtype=np.int64)]


def md_budget_curve(md_path, topology, tica_model, ref: Projection, budgets, n_metric: int = 10_000, seed: int = 0,
                    *, sequence: str | None = None, temperature_K: float | None = None,
                    kmeans_k: int = 20) -> list[dict]:
    """Metrics of the MD prefix of B energy evaluations (= B steps after burn-in) for each budget B.

    ``temperature_K`` (energies -> kT) defaults to the trajectory's protocol. A prefix is scored as an
    equally weighted set (log_weights None), its frames subsampled to ``n_metric`` when longer.
    """
    md = _MDFile(md_path, temperature_K)
    rows = []
    for b in _budgets(budgets):
        n = b // md.steps_per_frame
        wall = b * md.seconds_per_step
        if n < 2 or n > md.n_frames:
            why = (f"{n} frame(s) < 2" if n < 2 else f"needs {n} frames, the trajectory has {md.n_frames}")
            log.info("MD budget %d skipped: %s", b, why)
            rows.append(_row("md", b, sequence, f"skipped: {why}", wall, None, 0))
            continue
        metrics, _ = _scored(ref, md.energy_kT(n), md.positions, None, n_metric, seed, b, topology, tica_model,
                             kmeans_k)
        rows.append(_row("md", b, sequence, "ok", wall, metrics, n))
    return rows


# ---------------------------------------------------------------- flow
class _SnisFile:
    def __init__(self, path):
        d = SampleSet.load(path)
        if d.get("log_q") is None:
            raise SampleSetError(f"{path}: the budget curves need the proposals' log_q (an SNIS set)")
        self.positions_nm = d.positions_nm
        self.log_q = np.asarray(d.get("log_q"), dtype=np.float64)
        self.energy_kT = np.asarray(d.energy_kT, dtype=np.float64)
        wall = d.wall_time_s
        self.n = len(self.log_q)
        self.seconds_per_proposal = wall / self.n if self.n else float("nan")

    def positions(self, idx: np.ndarray) -> np.ndarray:
        return self.positions_nm[idx]


def flow_budget_curve(snis_npz_path, topology, tica_model, ref: Projection, budgets, n_metric: int = 10_000,
                      seed: int = 0, drop_top_fraction: float = PAPER_DROP_TOP_FRACTION, *, sequence: str | None = None,
                      kmeans_k: int = 20) -> list[dict]:
    """Metrics (and SNIS ESS) of the first B proposals of a SNIS file, re-weighted on their own, per budget B."""
    flow = _SnisFile(snis_npz_path)
    rows = []
    for b in _budgets(budgets):
        wall = b * flow.seconds_per_proposal
        if b > flow.n:
            why = f"needs {b} proposals, the file has {flow.n}"
            log.info("flow budget %d skipped: %s", b, why)
            rows.append(_row("flow", b, sequence, f"skipped: {why}", wall, None, 0))
            continue
        e, lq = flow.energy_kT[:b], flow.log_q[:b]
        r = snis(-e, lq, drop_top_fraction=drop_top_fraction, rng=seed, n_resample=0)
        metrics, _ = _scored(ref, e, flow.positions, r.log_weights, n_metric, seed, b, topology, tica_model,
                             kmeans_k)
        metrics.update(ess=float(r.ess), n_nonfinite=int(r.n_nonfinite), n_dropped=int(r.n_dropped))
        rows.append(_row("flow", b, sequence, "ok", wall, metrics, b))
    return rows


@dataclass
class MapSets:
    """The equally weighted sets of the Figure 4 maps at one budget, and where each member comes from."""

    md_frames: np.ndarray  # [n] frame indices of the MD file (the prefix, subsampled)
    md_tica: np.ndarray  # [n, 2]
    flow_index: np.ndarray  # [m] proposal indices of the SNIS file (the resampled set: repeats)
    flow_tica: np.ndarray  # [m, 2]


def budget_tica_maps(md_path, snis_npz_path, topology, tica_model, budget: float, n_metric: int = 10_000,
                     seed: int = 0, drop_top_fraction: float = PAPER_DROP_TOP_FRACTION,
                     temperature_K: float | None = None) -> tuple[np.ndarray, np.ndarray, None]:
    """(MD TICA [n, 2], flow TICA [n, 2], None) at ``budget`` evaluations (Figure 4): the equally weighted sets
    the metrics score (the MD prefix; the flow's SNIS set resampled). A budget beyond what was run uses all of it."""
    m = budget_map_sets(md_path, snis_npz_path, topology, tica_model, budget, n_metric, seed, drop_top_fraction,
                        temperature_K)
    return m.md_tica, m.flow_tica, None


def budget_map_sets(md_path, snis_npz_path, topology, tica_model, budget: float, n_metric: int = 10_000,
                    seed: int = 0, drop_top_fraction: float = PAPER_DROP_TOP_FRACTION, temperature_K: float | None = None) -> MapSets:
    """``budget_tica_maps``' sets with the MD frame and proposal index of each member (the 3D viewer's)."""
    b = int(round(float(budget)))
    md = _MDFile(md_path, temperature_K)
    n_md = min(max(b // md.steps_per_frame, 1), md.n_frames)
    e_md = md.energy_kT(n_md)
    finite = np.flatnonzero(np.isfinite(e_md))
    idx = finite[resample_for_metrics(None, len(finite), n_metric, seed)] if len(finite) else finite
    md_frames = idx
    md_tica = tica_model.transform(md.positions(idx).astype(np.float32)) if len(idx) else np.zeros((0, 2))
    flow = _SnisFile(snis_npz_path)
    m = min(b, flow.n)
    if b // md.steps_per_frame > md.n_frames or m < b:
        log.info("TICA maps at %d evaluations: MD has %d frames (%d steps), the flow %d proposals; using what exists",
                 b, n_md, n_md * md.steps_per_frame, m)
    r = snis(-flow.energy_kT[:m], flow.log_q[:m], drop_top_fraction=drop_top_fraction, rng=seed, n_resample=0)
    idx = resample_for_metrics(r.log_weights, m, n_metric, seed)
    if len(idx):
        uniq, inverse = np.unique(idx, return_inverse=True)
        flow_tica = tica_model.transform(flow.positions(uniq).astype(np.float32))[inverse.ravel()]
    else:
        flow_tica = np.zeros((0, 2))
    return MapSets(np.asarray(md_frames, dtype=np.int64), np.asarray(md_tica), np.asarray(idx, dtype=np.int64),
                   np.asarray(flow_tica))


# ---------------------------------------------------------------- tables
def _flat(rows) -> list[dict]:
    """Rows from a list, or from a dict sequence -> rows (the sequence filled in)."""
    if isinstance(rows, dict):
        return [{**r, "sequence": r.get("sequence") or seq} for seq, rs in rows.items() for r in rs]
    return list(rows)


def budget_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(_flat(rows))
    for k in ROW_KEYS:
        if k not in df:
            df[k] = np.nan
    return df[list(ROW_KEYS) + [c for c in df.columns if c not in ROW_KEYS]]


def mean_curves(system_curves) -> pd.DataFrame:
    """Mean over systems per (sampler, budget), at the budgets every system with that sampler served ("ok")."""
    df = budget_frame(system_curves)
    df = df[df["status"] == "ok"]
    out = []
    for sampler, d in df.groupby("sampler", sort=False):
        n_sys = d["sequence"].nunique()
        g = d.groupby("budget")
        counts = g["sequence"].nunique()
        means = g[["wall_time_s", "ess", *W2]].mean()
        means = means[counts == n_sys]
        out.append(means.assign(sampler=sampler, n_systems=n_sys).reset_index())
    cols = ["sampler", "budget", "n_systems", "wall_time_s", "ess", *W2]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def write_budget_csv(path, rows) -> Path:
    """All rows (a list, or a dict sequence -> rows) as CSV, skipped budgets included."""
    return save_csv(path, budget_frame(rows))








__all__ = ["md_budget_curve", "flow_budget_curve", "budget_tica_maps", "budget_map_sets", "MapSets",
           "md_frames_for_budget", "steps_per_frame",
           "mean_curves", "write_budget_csv", "budget_frame"]
