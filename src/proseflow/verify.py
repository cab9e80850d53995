"""``python -m proseflow verify [results/]``: read every artefact of a results tree and check it.

Each kind of artefact has one check that reads all of its bytes, so every checksum is exercised:

- MD trajectories ``*.h5`` (:mod:`proseflow.physics.trajectory_io`): datasets present, shapes ``[T, N, 3]`` /
  ``[T]`` and float32, every chunk read (Fletcher-32 checked by HDF5), coordinates finite, topology atom
  count and protocol JSON; a file written without checksums is a warning.
- Frame stores ``*.zarr`` (:mod:`proseflow.data.dataset`): ``complete: true`` and the current store version,
  every chunk of every array read (crc32c), shapes and dtypes against the store's index, frames finite.
- Models and checkpoints ``*.pt``: every zip member against its CRC-32 (``torch.load`` does not check
  it), then load, the expected keys, finite weights; a model
  directory with a checkpoint but no ``model.pt`` is an unfinished run (a warning).
- Sample sets ``results/samples/.../{set}.npz``: read and checked by their type (:class:`proseflow.samplers.sample_set.SampleSet`:
  every field present, shapes, dtypes, normalised weights). Other arrays ``*.npz``: every array read (the zip's CRC-32), ``positions_nm``
  ``[n, N, 3]`` finite floats, per-sample arrays of length ``n``.
- JSON ``*.json``: strict JSON (no NaN/Infinity).
- Sample-set exports ``*.xtc`` (:mod:`proseflow.samplers.export`): read with their topology PDB, finite, one CSV
  row per frame.
- Leftovers of interrupted atomic writes (``*.tmp-<pid>``): a warning.

Prints one line per bad file (and per warning) and a summary; the exit status is 1 if any file is bad.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MD_DATASETS = ("coordinates", "time", "potentialEnergy", "topology")
MODEL_KEYS = {"model", "flow_config", "features", "scale_nm", "train_config", "step"}
CHECKPOINT_KEYS = {"step", "model", "ema", "optimizer", "scheduler", "loader", "rng", "config"}
PER_SAMPLE = ("energy_kT", "log_q", "log_weights", "chirality_ok")


class Bad(Exception):
    """A check failed: the file is wrong."""


@dataclass(frozen=True)
class Finding:
    path: Path
    level: str  # "BAD" or "WARN"
    message: str

    def __str__(self) -> str:
        return f"{self.level:4s} {self.path}: {self.message}"


# ----------------------------------------------------------------------------------------------- checks
def _reject_constant(name: str):
    raise Bad(f"not strict JSON: contains {name}")


def check_json(path: Path) -> list[str]:
    try:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Bad(f"not valid JSON ({err})") from err
    return []


def check_md(path: Path) -> list[str]:
    from proseflow.physics import trajectory_io
    warnings = []
    with trajectory_io.open_checked(path) as f:
        missing = [name for name in MD_DATASETS if name not in f]
        if missing:
            raise Bad(f"not a proseflow MD file: no {', '.join(missing)}")
        coords = f["coordinates"]
        n_frames = coords.shape[0]
        if coords.ndim != 3 or coords.shape[2] != 3 or coords.dtype != np.float32:
            raise Bad(f"coordinates are {coords.dtype} {coords.shape}, expected float32 [T, N, 3]")
        for name in ("time", "potentialEnergy"):
            if f[name].shape != (n_frames,):
                raise Bad(f"{name} has shape {f[name].shape}, expected ({n_frames},) like coordinates")
        unchecked = [name for name in MD_DATASETS if not f[name].fletcher32]
        if unchecked:
            warnings.append(f"no checksums on {', '.join(unchecked)} (written before Fletcher-32)")
        step = max(coords.chunks[0] if coords.chunks else 1024, 1)
        for start in range(0, n_frames, step):
            block = coords[start : start + step]
            if not np.isfinite(block).all():
                frame = start + int(np.argmax(~np.isfinite(block).all(axis=(1, 2))))
                raise Bad(f"non-finite coordinates in frame {frame}")
        for name in ("time", "potentialEnergy"):
            f[name][:]  # read: every chunk's checksum
        topology = json.loads(f["topology"][0])
        n_atoms = sum(len(r["atoms"]) for c in topology["chains"] for r in c["residues"])
        if n_atoms != coords.shape[1]:
            raise Bad(f"topology has {n_atoms} atoms, coordinates {coords.shape[1]}")
        if "proseflow_protocol" in f.attrs:
            json.loads(f.attrs["proseflow_protocol"])
    return warnings


def check_store(path: Path) -> list[str]:
    from proseflow.data.dataset import N_PERMUTATIONS, open_store, read_checked, store_index

    root = open_store(path)  # complete, format and version
    rows = store_index(path)
    total = 0
    for row in rows:
        seq, n, n_atoms = row["sequence"], row["n_frames"], row["n_atoms"]
        group = root[f"systems/{seq}"]
        expected = {"positions": ((n, n_atoms, 3), np.float32), "conditioning": ((n_atoms, 3), np.int16),
                    "permutations": ((N_PERMUTATIONS, n_atoms), np.int16)}  # fmt: skip
        for name, (shape, dtype) in expected.items():
            array = group[name]
            if array.shape != shape or array.dtype != dtype:
                raise Bad(f"system {seq}: {name} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
        positions = group["positions"]
        step = (positions.shards or positions.chunks)[0]
        for start in range(0, n, step):
            block = read_checked(positions, slice(start, min(start + step, n)), path, seq)
            if not np.isfinite(block).all():
                raise Bad(f"system {seq}: non-finite coordinates in frames {start}-{start + len(block) - 1}")
        for name in ("conditioning", "permutations"):
            read_checked(group[name], slice(None), path, seq, name)
        if int(group.attrs["n_train_frames"]) != row["n_train_frames"]:
            raise Bad(f"system {seq}: n_train_frames {group.attrs['n_train_frames']} disagrees with the index")
        total += n
    if total != root.attrs["proseflow_store"].get("n_frames_total", total):
        raise Bad(f"index lists {total} frames, the store says {root.attrs['proseflow_store']['n_frames_total']}")
    return []


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


def _zip_crc(path: Path) -> None:
    """Read every member of a zip archive (``.pt``, ``.npz``) against its CRC-32 (torch.load does not)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise Bad(f"not a readable zip archive ({type(err).__name__}: {err})") from err
    if bad is not None:
        raise Bad(f"CRC-32 mismatch in its member {bad}")


def check_torch(path: Path) -> list[str]:
    import torch

    _zip_crc(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, pickle and zip errors)
        raise Bad(f"cannot be loaded ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise Bad(f"holds a {type(obj).__name__}, expected a dict")
    keys = CHECKPOINT_KEYS if path.name.startswith("checkpoint") else MODEL_KEYS
    if not keys <= obj.keys():
        raise Bad(f"missing {', '.join(sorted(keys - obj.keys()))}")
    for name in ("model", "ema"):
        for tensor in _tensors(obj.get(name, {})):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise Bad(f"non-finite weights in {name}")
    return []


def check_npz(path: Path) -> list[str]:
    import zipfile

    _zip_crc(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise Bad(f"cannot be read ({type(err).__name__}: {err})") from err
    if "samples" in path.parts and path.name != "proposals.npz":  # a sample set: its own type checks it
        from proseflow.samplers.sample_set import SampleSet, SampleSetError

        try:
            SampleSet.load(path)
        except SampleSetError as err:
            raise Bad(str(err).removeprefix(f"{path}: ")) from err
        return []
    positions = arrays.get("positions_nm")
    if positions is not None:
        if positions.ndim != 3 or positions.shape[2] != 3 or positions.dtype.kind != "f":
            raise Bad(f"positions_nm is {positions.dtype} {positions.shape}, expected floats [n, N, 3]")
        if not np.isfinite(positions).all():
            raise Bad("non-finite positions_nm")
        for name in PER_SAMPLE:
            if name in arrays and arrays[name].shape != (len(positions),):
                raise Bad(f"{name} has shape {arrays[name].shape}, expected ({len(positions)},) like positions_nm")
    return []


def check_xtc(path: Path) -> list[str]:
    """A sample set exported for molecular viewers (proseflow.samplers.export): the XTC reads with its topology
    PDB, coordinates finite, and the CSV (written last) has the export's columns and one row per frame."""
    from proseflow.samplers.export import CSV_COLUMNS, read_exported

    missing = [p.name for p in (path.with_suffix(".pdb"), path.with_suffix(".csv")) if not p.is_file()]
    if missing:
        raise Bad(f"export without its {' and '.join(missing)} (interrupted: rerun the export)")
    traj, table = read_exported(path)
    if not np.isfinite(traj.xyz).all():
        raise Bad("non-finite coordinates")
    if tuple(table.columns) != CSV_COLUMNS or len(table) != traj.n_frames:
        raise Bad(f"CSV has {len(table)} rows and columns {list(table.columns)}, expected {traj.n_frames} rows "
                  f"of {list(CSV_COLUMNS)}")
    return []


CHECKS = {".h5": ("MD file", check_md), ".zarr": ("frame store", check_store), ".pt": ("model", check_torch),
          ".npz": ("array file", check_npz), ".json": ("JSON", check_json),
          ".xtc": ("sample trajectory", check_xtc)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- walk
def artefacts(root: Path) -> tuple[list[Path], list[Finding], int]:
    """(paths to check, findings from the walk itself, number of other files), in a stable order."""
    paths, findings, other = [], [], 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in sorted(dirs):
            if ".tmp-" in name or ".old-" in name:
                findings.append(Finding(here / name, "WARN", "leftover of an interrupted write; delete it"))
                dirs.remove(name)
            elif name.endswith(".zarr"):
                paths.append(here / name)
                dirs.remove(name)  # a store is one artefact
        dirs.sort()
        for name in sorted(files):
            path = here / name
            if ".tmp-" in name or name.endswith(".tmp"):
                findings.append(Finding(path, "WARN", "leftover of an interrupted write; delete it"))
            elif path.suffix in CHECKS:
                paths.append(path)
            else:
                other += 1
        if "checkpoint.pt" in files and "model.pt" not in files:
            findings.append(Finding(here, "WARN", "unfinished training run: checkpoint.pt but no model.pt"))
    return paths, findings, other


def verify(root: str | os.PathLike, progress: bool | None = None, out=None) -> tuple[list[Finding], Counter]:
    """Check every artefact under ``root``; returns the findings and the count of files checked per kind.
    Bad files and warnings are printed to ``out`` as they are found."""
    from tqdm.auto import tqdm

    root, out = Path(root), out or sys.stdout
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    paths, findings, other = artefacts(root)
    for finding in findings:
        print(finding, file=out)
    counts = Counter({"other files (not checked)": other})
    show = progress if progress is not None else (sys.stderr.isatty() and len(paths) > 20)
    for path in tqdm(paths, unit="file", disable=not show, desc="verify", dynamic_ncols=True):
        kind, check = CHECKS[path.suffix]
        counts[kind] += 1
        try:
            new = [Finding(path, "WARN", w) for w in check(path)]
        except Bad as err:
            new = [Finding(path, "BAD", str(err))]
        except (ValueError, OSError, KeyError, RuntimeError) as err:  # corrupt stores/files name themselves
            new = [Finding(path, "BAD", f"{type(err).__name__}: {err}")]
        for finding in new:
            tqdm.write(str(finding), file=out) if show else print(finding, file=out)
        findings += new
    return findings, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="proseflow verify", description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default="results", help="results tree to check (default: results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, for more than 20 files)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        findings, counts = verify(args.root, args.progress)
    except ValueError as err:
        print(f"proseflow verify: {err}", file=sys.stderr)
        return 2
    n_bad = len({f.path for f in findings if f.level == "BAD"})
    n_warn = sum(f.level == "WARN" for f in findings)
    checked = sum(v for k, v in counts.items() if not k.startswith("other"))
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if v)
    verdict = "OK" if n_bad == 0 else "FAILED"
    print(f"verify {verdict}: {args.root}: {checked} artefacts checked ({kinds}) in "
          f"{time.perf_counter() - t0:.1f} s; {n_bad} bad, {n_warn} warnings")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
