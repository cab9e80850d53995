"""Sample sets in the formats molecular viewers open: an XTC trajectory, a topology PDB, a CSV of weights.

``export_sample_set`` writes the final configurations of one sample file (``results/samples/.../{set}.npz``):

- SNIS sets (``snis.npz``, ``self_improve.npz``: they carry ``resampled_indices``): the SNIS-resampled set,
  one frame per draw (a proposal drawn twice is two frames), so the trajectory is an equally weighted sample
  of the target; a set with no usable weight (no draw) is written as all its finite proposals, weight 0.
- SMC sets (``smc_ula.npz``, ``smc_mala.npz``): the final particles, weighted by their final weights.

Files (the XTC holds nm at XTC precision, 1e-3 nm; frame k has time k ps, a counter, not a time):

- ``{set}.xtc``: the frames, in the atom order of ``results/structures/{seq}.pdb``;
- ``{set}.pdb``: the topology with the first frame's coordinates
  (``mdtraj.load("snis.xtc", top="snis.pdb")``, ``vmd snis.pdb snis.xtc``, PyMOL ``load snis.pdb`` then
  ``load_traj snis.xtc``);
- ``{set}.csv``: one row per frame: ``frame``, ``sample_index`` (row of ``positions_nm`` in the .npz),
  ``energy_kT``, ``log_weight`` (the sample's normalised log importance weight in the .npz), ``weight`` (the
  frame's weight in this trajectory; the column sums to 1, or is all 0 for a set without usable weights).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from proseflow.artefacts import atomic_write, save_csv
from proseflow.samplers.sample_set import SampleSet

log = logging.getLogger(__name__)
CSV_COLUMNS = ("frame", "sample_index", "energy_kT", "log_weight", "weight")


@dataclass
class Frames:
    """The configurations of a sample set that its trajectory holds."""

    sample_index: np.ndarray  # [m] rows of the set's positions_nm
    weight: np.ndarray  # [m] weight of each frame in the trajectory


def final_frames(arrays) -> Frames:
    """Which rows of a sample file (a mapping of its arrays) form its trajectory, with what weight (see module)."""
    positions = np.asarray(arrays["positions_nm"])
    finite = np.isfinite(positions.reshape(len(positions), -1)).all(axis=1)
    if "resampled_indices" in arrays:
        idx = np.asarray(arrays["resampled_indices"], dtype=np.int64)
        if len(idx):
            return Frames(idx, np.full(len(idx), 1.0 / len(idx)))
        log.warning("no SNIS draw (no finite weight): writing every finite proposal with weight 0")
        idx = np.flatnonzero(finite)
        return Frames(idx, np.zeros(len(idx)))
    idx = np.flatnonzero(finite)
    if "log_weights" not in arrays:
        return Frames(idx, np.full(len(idx), 1.0 / max(len(idx), 1)))
    log_w = np.asarray(arrays["log_weights"], dtype=np.float64)[idx]
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max()) if np.isfinite(log_w).any() else np.zeros(len(idx))
    w = np.where(np.isfinite(w), w, 0.0)
    return Frames(idx, w / w.sum() if w.sum() > 0 else w)


def export_sample_set(samples_npz, structure_pdb, out_xtc, out_pdb, out_csv) -> int:
    """Write the trajectory, topology PDB and CSV of one sample file (module docstring); returns the frame count."""
    import mdtraj

    top = mdtraj.load_topology(str(structure_pdb))
    d = SampleSet.load(samples_npz)
    arrays = {"positions_nm": d.positions_nm, "energy_kT": d.energy_kT, "log_weights": d.log_weights}
    if d.resampled_indices is not None:
        arrays["resampled_indices"] = d.resampled_indices
    frames = final_frames(arrays)
    xyz = np.asarray(arrays["positions_nm"], dtype=np.float32)[frames.sample_index]
    if xyz.shape[1:] != (top.n_atoms, 3):
        raise ValueError(f"{samples_npz}: positions of {xyz.shape[1]} atoms, {structure_pdb} has {top.n_atoms}")
    if not np.isfinite(xyz).all():
        raise ValueError(f"{samples_npz}: a frame to export has non-finite coordinates")
    if not len(xyz):
        raise ValueError(f"{samples_npz}: no configuration to export")
    traj = mdtraj.Trajectory(xyz, top, time=np.arange(len(xyz), dtype=np.float32))
    n = len(frames.sample_index)
    log_w = arrays.get("log_weights")
    table = pd.DataFrame({
        "frame": np.arange(n),
        "sample_index": frames.sample_index,
        "energy_kT": np.asarray(arrays["energy_kT"], dtype=np.float64)[frames.sample_index],
        "log_weight": (np.asarray(log_w, dtype=np.float64)[frames.sample_index] if log_w is not None
                       else np.full(n, -np.log(n))),
        "weight": frames.weight,
    }, columns=list(CSV_COLUMNS))
    atomic_write(out_xtc, lambda tmp: traj.save_xtc(str(tmp)), suffix=".xtc")
    atomic_write(out_pdb, lambda tmp: traj[0].save_pdb(str(tmp)), suffix=".pdb")
    save_csv(out_csv, table)  # written last
    return n


def read_exported(xtc, pdb=None):
    """The mdtraj Trajectory and the CSV table of an export (``pdb`` defaults to the XTC's sibling)."""
    import mdtraj

    xtc = Path(xtc)
    pdb = xtc.with_suffix(".pdb") if pdb is None else Path(os.fspath(pdb))
    return mdtraj.load(str(xtc), top=str(pdb)), pd.read_csv(xtc.with_suffix(".csv"))
