"""MD trajectories in the MDTraj HDF5 format, written with h5py in appended chunks.

``mdtraj.load(path)`` opens the files with their topology. Layout (MDTraj conventions "Pande" 1.1):
``coordinates`` float32 [T, N, 3] nm, ``time`` float32 [T] ps, ``potentialEnergy`` float32 [T] kJ/mol,
``topology`` (MDTraj JSON), and the run's protocol as the JSON root attribute ``proseflow_protocol``.

Every dataset carries HDF5's Fletcher-32 checksum filter (per chunk); reading a chunk whose bytes changed
raises :class:`CorruptTrajectoryError` naming the file (files written before the filter still read).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

FRAME_CHUNK = 64
DATASETS = ("coordinates", "time", "potentialEnergy")


class CorruptTrajectoryError(ValueError):
    """An MD trajectory file failed its checksum or could not be read."""


def corrupt(path: str | os.PathLike, err: Exception) -> CorruptTrajectoryError:
    """The error to raise for a read error ``err`` of the trajectory file ``path``."""
    return CorruptTrajectoryError(
        f"corrupt MD trajectory file {path}: a Fletcher-32 checksum failed or the file could not be read "
        f"({type(err).__name__}: {err}); delete it and rerun the MD stage that wrote it"
    )


@contextmanager
def open_checked(path: str | os.PathLike):
    """``h5py.File(path, "r")``; an HDF5 read error (e.g. a Fletcher-32 mismatch) is raised as
    :class:`CorruptTrajectoryError` naming ``path``."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as err:
        if isinstance(err, FileNotFoundError) or not Path(path).exists():
            raise
        raise corrupt(path, err) from err


def create(path: str | os.PathLike, topology, protocol: dict) -> None:
    """Create an empty trajectory file for ``topology`` (OpenMM or MDTraj topology)."""
    import mdtraj

    from proseflow import __version__

    top = topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)
    top_json = json.dumps(mdtraj.formats.hdf5.HDF5TrajectoryFile.convert_topology_to_dict(top)).encode("ascii")
    n_atoms = top.n_atoms
    with h5py.File(path, "w") as f:
        f.attrs.update(conventions="Pande", conventionVersion="1.1", program="proseflow",
                       programVersion=__version__, title="proseflow MD", application="OpenMM",
                       proseflow_protocol=json.dumps(protocol, sort_keys=True))
        f.create_dataset("topology", data=np.array([top_json]), fletcher32=True)
        f.create_dataset("coordinates", shape=(0, n_atoms, 3), maxshape=(None, n_atoms, 3), dtype="f4",
                         chunks=(FRAME_CHUNK, n_atoms, 3), fletcher32=True).attrs["units"] = "nanometers"
        for name, units in (("time", "picoseconds"), ("potentialEnergy", "kilojoules_per_mole")):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f4",
                             chunks=(FRAME_CHUNK * 16,), fletcher32=True).attrs["units"] = units


def append(path: str | os.PathLike, positions_nm: np.ndarray, time_ps: np.ndarray,
           potential_energy_kJ_per_mol: np.ndarray) -> int:
    """Append frames; returns the new frame count. Existing frames are never rewritten."""
    with h5py.File(path, "a") as f:
        n = f["coordinates"].shape[0]
        k = len(positions_nm)
        for name, data in (("coordinates", positions_nm), ("time", time_ps),
                           ("potentialEnergy", potential_energy_kJ_per_mol)):
            ds = f[name]
            ds.resize(n + k, axis=0)
            ds[n:] = np.asarray(data, dtype=np.float32)
        return n + k


def truncate(path: str | os.PathLike, n_frames: int) -> None:
    """Drop frames past ``n_frames`` (written after the last checkpoint); earlier frames stay untouched."""
    with h5py.File(path, "a") as f:
        for name in ("coordinates", "time", "potentialEnergy"):
            if f[name].shape[0] > n_frames:
                f[name].resize(n_frames, axis=0)


def update_protocol(path: str | os.PathLike, **extra) -> None:
    """Add run facts known only at the end (e.g. measured steps/s) to the protocol attribute."""
    with h5py.File(path, "a") as f:
        record = json.loads(f.attrs["proseflow_protocol"])
        record.update(extra)
        f.attrs["proseflow_protocol"] = json.dumps(record, sort_keys=True)


def concatenate(parts: list, out: str | os.PathLike, **protocol_updates) -> None:
    """One file of the frames of ``parts`` (same topology) in order; written beside ``out``, then renamed."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with open_checked(parts[0]) as first:
        record = {**json.loads(first.attrs["proseflow_protocol"]), **protocol_updates}
        record.pop("replica", None)
        with h5py.File(tmp, "w") as f:
            f.attrs.update({k: v for k, v in first.attrs.items() if k != "proseflow_protocol"})
            f.attrs["proseflow_protocol"] = json.dumps(record, sort_keys=True)
            f.create_dataset("topology", data=first["topology"][:], fletcher32=True)
            for name in DATASETS:
                src = first[name]
                ds = f.create_dataset(name, shape=(0, *src.shape[1:]), maxshape=(None, *src.shape[1:]),
                                      dtype=src.dtype, chunks=src.chunks, fletcher32=True)
                ds.attrs.update(src.attrs)
    for part in parts:
        data = read(part)
        append(tmp, data["positions_nm"], data["time_ps"], data["energy_kJ_per_mol"])
    os.replace(tmp, out)


def segments(path: str | os.PathLike) -> int:
    """Number of independent trajectories (replicas) stored one after another in the file."""
    return int(protocol(path).get("replicas", 1))


def n_frames(path: str | os.PathLike) -> int:
    with open_checked(path) as f:
        return int(f["coordinates"].shape[0])


def read(path: str | os.PathLike, stride: int = 1, start: int = 0, stop: int | None = None) -> dict:
    """Arrays of a trajectory file (no topology parsing): positions_nm, time_ps, energy_kJ_per_mol, protocol."""
    with open_checked(path) as f:
        sl = slice(start, stop, stride)
        return {
            "positions_nm": f["coordinates"][sl],
            "time_ps": f["time"][sl],
            "energy_kJ_per_mol": f["potentialEnergy"][sl],
            "protocol": json.loads(f.attrs["proseflow_protocol"]),
        }


def protocol(path: str | os.PathLike) -> dict:
    with open_checked(path) as f:
        return json.loads(f.attrs["proseflow_protocol"])


def mdtraj_topology(path: str | os.PathLike):
    import mdtraj

    with mdtraj.formats.HDF5TrajectoryFile(str(path)) as f:
        return f.topology



def frame_interval_ps(path: str | os.PathLike) -> float:
    """The spacing of a trajectory file's frames (ps): its protocol's ``save_interval_ps``, else its time axis."""
    p = protocol(path)
    if "save_interval_ps" in p:
        return float(p["save_interval_ps"])
    with open_checked(path) as f:
        t = f["time"][:2]
    if len(t) < 2:
        raise ValueError(f"{path}: fewer than two frames, no frame interval")
    return float(t[1] - t[0])


def adopt_reference(path: str | os.PathLike, out: str | os.PathLike, sequence: str, atom_names: list[str],
                    temperature_K: float) -> Path:
    """A reference MD file used as is (``md.reference_files``; e.g. the AA study's reference shipped in
    ``models/aa``): checked to be this system (same atoms in the same order as its structure) at this
    temperature, then copied to ``out`` with its source and sha256 added to the protocol. Returns ``out``."""
    import hashlib
    import shutil

    from proseflow.artefacts import atomic_write

    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"reference MD file {str(src)!r} (md.reference_files.{sequence}) does not exist")
    p = protocol(src)
    if p.get("system") not in (None, sequence):
        raise ValueError(f"{src} is reference MD of {p['system']!r}, not {sequence!r}")
    if abs(float(p.get("temperature_K", float("nan"))) - float(temperature_K)) > 1e-6:
        raise ValueError(f"{src} was simulated at {p.get('temperature_K')} K; this evaluation is at {temperature_K} K")
    names = [a.name for a in mdtraj_topology(src).atoms]
    if names != list(atom_names):
        raise ValueError(f"{src}: its {len(names)} atoms {names[:6]}... are not the structure's {len(atom_names)} "
                         f"atoms {list(atom_names)[:6]}... in the same order")
    n = n_frames(src)
    if n < 2:
        raise ValueError(f"{src}: {n} frame(s), not a trajectory")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    def write(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        update_protocol(tmp, adopted_from=str(src), adopted_sha256=digest)

    return atomic_write(out, write, suffix=".h5")
