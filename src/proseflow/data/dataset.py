"""Training frames in Zarr v3 stores (sharded) and a streaming, resumable, DDP-aware batch loader.

Store layout (one store per MD batch, e.g. ``results/dataset/train/batch00000.zarr``)::

    zarr.json                       root attributes:
        proseflow_store = {format, version, subsample_every, frames_per_chunk, frames_per_shard,
                           val_fraction, complete: true}        <- written last
        index = {sequence: [...], n_frames: [...], n_atoms: [...], frame_offset: [...],
                 n_train_frames: [...]}                          <- one entry per system, in write order
    systems/{seq}/                  group attributes: sequence, chain_length, atom_names, source,
                                    time_start_ps, frame_interval_ps, n_train_frames,
                                    centred_sq_sum_nm2 {train, val} (sum of squared centred coordinates
                                    over each split's frames: the coordinate scale, :func:`coordinate_std_nm`)
    systems/{seq}/positions         float32 [T, N, 3] nm, equivalent hydrogens canonically labelled
                                    (features.canonical_hydrogen_labels), chunks (frames_per_chunk, N, 3) inside
                                    shards (frames_per_shard, N, 3), blosc-zstd + byte shuffle (lossless), then a
                                    crc32c checksum per chunk; the shard index carries its own crc32c
    systems/{seq}/conditioning      int16 [N, 3]: atom_type, residue_type, residue_index (features.py)
    systems/{seq}/permutations      int16 [8, N]: features.PERMUTATION_NAMES order
    (conditioning and permutations are one chunk each, crc32c-checksummed too)

Integrity: every chunk of every array carries a crc32c checksum (store version 2). A chunk whose bytes
changed raises :class:`CorruptStoreError` naming the store, the system, the array, the chunk and the shard
file to blame; version-1 stores (no checksums) are refused with a message saying to rebuild them.

``frame_offset`` is the index of the system's first frame in the store's concatenation of all frames.
Frames ``[0, n_train_frames)`` of every system are the training split, the rest (the last
``val_fraction`` of each trajectory) the validation split; with separate validation stores use
``val_fraction=0`` and ``split="all"``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from proseflow.data.features import (
    N_PERMUTATIONS,
    canonical_hydrogen_labels,
    equivalent_hydrogen_groups,
    pad_permutations,
    system_features,
)
from proseflow.physics import trajectory_io
from proseflow.physics.sequences import THREE_TO_ONE, validate_sequence

STORE_FORMAT = "proseflow-frames"
STORE_VERSION = 2  # 2: crc32c on every chunk and shard index; 1 had no checksums
REBUILD_HINT = "rebuild it (delete it and rerun the pipeline, e.g. `snakemake --forcerun build_dataset`)"


class CorruptStoreError(ValueError):
    """A chunk of a frame store failed its checksum (or could not be decoded)."""


def chunk_file(store_path: str | os.PathLike, sequence: str, array: str, shard: int) -> Path:
    """The file holding shard ``shard`` (along the first axis) of ``systems/{sequence}/{array}``."""
    path = Path(store_path) / "systems" / sequence / array / "c" / str(shard)
    return path / "0" / "0" if array == "positions" else path / "0"


def read_checked(array, selection: slice, store_path, sequence: str, name: str = "positions") -> np.ndarray:
    """``array[selection]`` (a slice along the first axis), with a decoding or checksum failure raised as
    :class:`CorruptStoreError` naming the store, the system, the bad chunk(s) and their shard file(s)."""
    try:
        return array[selection]
    except Exception as err:  # noqa: BLE001 (zarr raises ValueError for checksums, others for bad bytes)
        start, stop, _ = selection.indices(array.shape[0])
        chunk_len, shard_len = array.chunks[0], (array.shards or array.chunks)[0]
        bad = []
        for k in range(start // chunk_len, (stop - 1) // chunk_len + 1):  # pin down the chunk(s) to blame
            try:
                array[k * chunk_len : (k + 1) * chunk_len]
            except Exception:  # noqa: BLE001
                bad.append(k)
        bad = bad or list(range(start // chunk_len, (stop - 1) // chunk_len + 1))
        first, last = bad[0] * chunk_len, min((bad[-1] + 1) * chunk_len, array.shape[0]) - 1
        chunks = f"chunk {bad[0]}" if len(bad) == 1 else f"chunks {', '.join(map(str, bad))}"
        files = sorted({str(chunk_file(store_path, sequence, name, k * chunk_len // shard_len)) for k in bad})
        raise CorruptStoreError(
            f"corrupt frame store {store_path}: system {sequence}, {name} {chunks} (frames {first}-{last}) "
            f"in {', '.join(files)} failed its check ({type(err).__name__}: {err}); {REBUILD_HINT}"
        ) from err


SPLITS = ("train", "val", "all")


# ----------------------------------------------------------------------------------------------- writing
def subsample_every_for(save_interval_ps: float, frame_interval_ps: float) -> int:
    """Keep every k-th MD frame: ``k = frame_interval_ps / save_interval_ps``, which must be a whole number."""
    k = round(frame_interval_ps / save_interval_ps)
    if k < 1 or not math.isclose(k * save_interval_ps, frame_interval_ps, rel_tol=1e-6):
        raise ValueError(
            f"training frame interval {frame_interval_ps} ps is not a multiple of the MD save interval "
            f"{save_interval_ps} ps"
        )
    return k


def _topology_for(sequence: str, source, topologies):
    if topologies is not None and sequence in topologies:
        return topologies[sequence]
    if isinstance(source, str | os.PathLike):

        with trajectory_io.open_checked(source) as fh:
            has_topology = "topology" in fh
        if has_topology:
            import mdtraj

            try:
                return mdtraj.load_topology(str(source))
            except Exception as err:  # noqa: BLE001 (PyTables raises HDF5ExtError for a failed checksum)
                raise trajectory_io.corrupt(source, err) from err
    return sequence  # features.system_features builds it (proseflow.physics.structures atom order)


def _input_frames(sequence: str, source, input_interval_ps: float):
    """(frames [T_in, N, 3] array-like, time of frame 0 in ps, interval in ps, description, closer)."""
    if isinstance(source, str | os.PathLike):
        import h5py

        fh = h5py.File(source, "r")
        coords = fh["coordinates"]
        time_ps = np.asarray(fh["time"][:], dtype=np.float64) if "time" in fh else None
        protocol = json.loads(fh.attrs["proseflow_protocol"]) if "proseflow_protocol" in fh.attrs else {}
        replicas = int(protocol.get("replicas", 1))  # independent runs one after another (proseflow.physics.md)
        if time_ps is not None and len(time_ps) >= 2 * replicas:
            if len(time_ps) % replicas:
                fh.close()
                raise ValueError(f"system {sequence}: {len(time_ps)} frames in {source} do not split into "
                                 f"{replicas} replicas")
            runs = time_ps.reshape(replicas, -1)
            interval = (runs[0, -1] - runs[0, 0]) / (runs.shape[1] - 1)
            tol_ps = 4 * float(np.spacing(np.float32(np.abs(time_ps).max()))) + 1e-6 * interval
            if not (np.allclose(np.diff(runs, axis=1), interval, rtol=0, atol=tol_ps)
                    and np.allclose(runs[:, 0], runs[0, 0], rtol=0, atol=tol_ps)):
                fh.close()
                raise ValueError(f"system {sequence}: frames in {source} are not evenly spaced in time"
                                 + (f" within each of its {replicas} replicas" if replicas > 1 else ""))
            return coords, float(time_ps[0]), float(interval), str(source), fh.close
        t0 = float(time_ps[0]) if time_ps is not None and len(time_ps) else 0.0
        return coords, t0, float(input_interval_ps), str(source), fh.close
    return np.asarray(source), 0.0, float(input_interval_ps), "array", lambda: None


@dataclass(frozen=True)
class _WriteOptions:
    subsample_every: int
    frames_per_chunk: int
    frames_per_shard: int
    val_fraction: float
    input_interval_ps: float
    expected_interval_ps: float | None
    compressor: BloscCodec
    topologies: dict | None


def _write_system(root, sequence: str, source, opt: _WriteOptions) -> dict:
    validate_sequence(sequence)
    topology = _topology_for(sequence, source, opt.topologies)
    feats = system_features(topology)
    h_groups = equivalent_hydrogen_groups(topology)
    if not isinstance(topology, str):
        residues = topology.residues() if callable(topology.residues) else topology.residues
        topo_seq = "".join(THREE_TO_ONE.get(r.name, "?") for r in residues)
        if topo_seq != sequence:
            raise ValueError(f"system {sequence}: its topology is the peptide {topo_seq}")
    n_atoms = len(feats["atom_type"])
    frames, t0_ps, interval_ps, description, close = _input_frames(sequence, source, opt.input_interval_ps)
    try:
        if frames.ndim != 3 or frames.shape[2] != 3:
            raise ValueError(
                f"system {sequence}: coordinates in {description} have shape {frames.shape}, "
                f"expected [T, {n_atoms}, 3]"
            )
        if frames.shape[1] != n_atoms:
            raise ValueError(
                f"system {sequence}: {frames.shape[1]} atoms in {description} but its topology has {n_atoms}"
            )
        n_frames = math.ceil(frames.shape[0] / opt.subsample_every)
        if n_frames == 0:
            raise ValueError(f"system {sequence}: no frames in {description}")
        n_train = n_frames - int(round(opt.val_fraction * n_frames))
        sq_sum = {"train": 0.0, "val": 0.0}
        out_interval_ps = interval_ps * opt.subsample_every
        if opt.expected_interval_ps is not None and not math.isclose(
            out_interval_ps, opt.expected_interval_ps, rel_tol=1e-3
        ):
            raise ValueError(
                f"system {sequence}: frames every {interval_ps:g} ps x subsample_every "
                f"{opt.subsample_every} = {out_interval_ps:g} ps, expected {opt.expected_interval_ps:g} ps"
            )
        group = root.create_group(f"systems/{sequence}")
        chunk = min(opt.frames_per_chunk, n_frames)  # a system shorter than one chunk: one chunk, one shard
        positions = group.create_array(
            "positions",
            shape=(n_frames, n_atoms, 3),
            dtype="float32",
            chunks=(chunk, n_atoms, 3),
            shards=(min(opt.frames_per_shard, math.ceil(n_frames / chunk) * chunk), n_atoms, 3),
            compressors=(opt.compressor, Crc32cCodec()),  # the shard index gets crc32c by default too
            dimension_names=("frame", "atom", "xyz"),
        )
        for start in range(0, n_frames, opt.frames_per_shard):
            stop = min(start + opt.frames_per_shard, n_frames)
            try:
                block = np.asarray(
                    frames[start * opt.subsample_every : stop * opt.subsample_every : opt.subsample_every],
                    dtype=np.float32,
                )
            except OSError as err:  # an HDF5 checksum (Fletcher-32) or read error in the MD file
                raise trajectory_io.corrupt(description, err) from err
            bad = ~np.isfinite(block).all(axis=(1, 2))
            if bad.any():
                frame_in = (start + int(np.argmax(bad))) * opt.subsample_every
                raise ValueError(
                    f"system {sequence}: non-finite coordinates in frame {frame_in} of {description}"
                )
            # one labelling of equivalent hydrogens for every frame of every build (features.py)
            positions[start:stop] = canonical_hydrogen_labels(block, h_groups)
            n_in_train = max(0, min(stop, n_train) - start)
            sq = centred_sq_sums(block)
            sq_sum["train"] += float(sq[:n_in_train].sum())
            sq_sum["val"] += float(sq[n_in_train:].sum())
    finally:
        close()
    conditioning = np.stack([feats["atom_type"], feats["residue_type"], feats["residue_index"]], axis=1)
    group.create_array("conditioning", data=conditioning.astype(np.int16), compressors=Crc32cCodec())
    group.create_array("permutations", data=feats["permutations"].astype(np.int16), compressors=Crc32cCodec())
    group.attrs.update(
        {
            "sequence": sequence,
            "chain_length": feats["chain_length"],
            "atom_names": feats["atom_names"],
            "conditioning_columns": ["atom_type", "residue_type", "residue_index"],
            "source": description,
            "time_start_ps": t0_ps,
            "frame_interval_ps": out_interval_ps,
            "n_train_frames": n_train,
            "canonical_hydrogen_labels": True,
            "centred_sq_sum_nm2": sq_sum,
        }
    )
    return {"sequence": sequence, "n_frames": n_frames, "n_atoms": n_atoms, "n_train_frames": n_train}


def write_store(
    out_path: str | os.PathLike,
    systems: Iterable[tuple[str, str | os.PathLike | np.ndarray]],
    subsample_every: int,
    *,
    topologies: dict | None = None,
    frames_per_chunk: int = 16,
    frames_per_shard: int = 4096,
    val_fraction: float = 0.0,
    input_interval_ps: float = 1.0,
    expected_interval_ps: float | None = None,
    compression_level: int = 3,
) -> Path:
    """Write the frames of ``systems`` (pairs of sequence and MDTraj HDF5 path or ``[T, N, 3]`` nm array)
    to a new Zarr v3 store at ``out_path``, keeping every ``subsample_every``-th frame (frame 0 first).

    The topology of a system (for the atom count check and the conditioning) is ``topologies[seq]`` if
    given, else the one in its HDF5 file, else the one :func:`proseflow.physics.structures.build_peptide` builds.
    ``input_interval_ps`` is the frame spacing of array inputs (HDF5 files carry ``time``); with
    ``expected_interval_ps`` every system must come out at that spacing. Raises ValueError naming the
    system for a wrong atom count, a non-finite coordinate or unevenly spaced frames.

    The store is written to ``out_path.tmp-<pid>`` and renamed into place only when complete; on any
    error nothing is left behind and an existing store at ``out_path`` is kept.
    """
    if subsample_every < 1 or frames_per_chunk < 1 or frames_per_shard % frames_per_chunk:
        raise ValueError("need subsample_every >= 1 and frames_per_shard a multiple of frames_per_chunk")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_path)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    compressor = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
    options = _WriteOptions(
        subsample_every,
        frames_per_chunk,
        frames_per_shard,
        val_fraction,
        input_interval_ps,
        expected_interval_ps,
        compressor,
        topologies,
    )
    try:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        index: dict[str, list] = {
            "sequence": [],
            "n_frames": [],
            "n_atoms": [],
            "frame_offset": [],
            "n_train_frames": [],
        }
        offset = 0
        for sequence, source in systems:
            if sequence in index["sequence"]:
                raise ValueError(f"system {sequence} is listed twice")
            row = _write_system(root, sequence, source, options)
            for key in ("sequence", "n_frames", "n_atoms", "n_train_frames"):
                index[key].append(row[key])
            index["frame_offset"].append(offset)
            offset += row["n_frames"]
        root.attrs["index"] = index
        root.attrs["proseflow_store"] = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "subsample_every": subsample_every,
            "frames_per_chunk": frames_per_chunk,
            "frames_per_shard": frames_per_shard,
            "val_fraction": val_fraction,
            "n_frames_total": offset,
            "complete": True,
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, out)
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished store ``tmp`` to ``out``; an old store there is moved aside first, then deleted,
    so ``out`` is only ever absent or a complete store."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


# ----------------------------------------------------------------------------------------------- reading
def open_store(path: str | os.PathLike):
    """The root group of a complete store; ValueError if ``path`` is not one."""
    try:
        root = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    except FileNotFoundError as err:
        raise ValueError(f"{path} is not a proseflow frame store") from err
    meta = root.attrs.get("proseflow_store")
    if not meta or meta.get("format") != STORE_FORMAT or not meta.get("complete"):
        raise ValueError(f"{path} is not a complete proseflow frame store")
    if meta["version"] != STORE_VERSION:
        why = " (written without chunk checksums)" if meta["version"] == 1 else ""
        raise ValueError(
            f"{path} has store version {meta['version']}{why}, this code reads version {STORE_VERSION}; {REBUILD_HINT}"
        )
    return root


def store_index(path: str | os.PathLike) -> list[dict]:
    """One dict per system: sequence, n_frames, n_atoms, frame_offset, n_train_frames."""
    index = open_store(path).attrs["index"]
    return [dict(zip(index, row, strict=True)) for row in zip(*index.values(), strict=True)]


def centred_sq_sums(frames: np.ndarray) -> np.ndarray:
    """Per frame [T, N, 3] -> [T]: the sum of squared coordinates after removing the frame's centroid (nm^2),
    in float64; the flow's centring is the same unweighted centroid (``flow.preprocess``)."""
    x = np.asarray(frames, dtype=np.float64)
    return ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=(1, 2))


def coordinate_std_nm(stores: Sequence[str | os.PathLike], split: str = "train") -> float:
    """The standard deviation of the centred coordinates over every frame of ``split`` in ``stores``: the
    data-driven coordinate scale (``train.scale_nm: data``), pooled over systems (each coordinate one sample).

    Read from the sums each system's group keeps (written by :func:`write_store`); a store written before them
    is read frame by frame instead."""
    sq_total, n_total = 0.0, 0
    for path in stores:
        root = open_store(path)
        for row in store_index(path):
            lo, hi = _split_range(row, split)
            attrs = root[f"systems/{row['sequence']}"].attrs
            sums = attrs.get("centred_sq_sum_nm2")
            if sums is not None:
                parts = {"train": ["train"], "val": ["val"], "all": ["train", "val"]}[split]
                sq_total += sum(float(sums[p]) for p in parts)
            else:
                for block in iterate_system_frames(path, row["sequence"], split=split):
                    sq_total += float(centred_sq_sums(block).sum())
            n_total += (hi - lo) * row["n_atoms"] * 3
    if n_total == 0:
        raise ValueError(f"no {split} frames in {[str(p) for p in stores]}: cannot compute the coordinate scale")
    return math.sqrt(sq_total / n_total)


def _split_range(row: dict, split: str) -> tuple[int, int]:
    if split == "train":
        return 0, row["n_train_frames"]
    if split == "val":
        return row["n_train_frames"], row["n_frames"]
    if split == "all":
        return 0, row["n_frames"]
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def iterate_system_frames(
    store_path: str | os.PathLike, sequence: str, frames_per_read: int | None = None, split: str = "all"
) -> Iterator[np.ndarray]:
    """Yield the frames of one system in time order, float32 ``[b, N, 3]`` nm, one shard at a time."""
    root = open_store(store_path)
    rows = {row["sequence"]: row for row in store_index(store_path)}
    if sequence not in rows:
        raise KeyError(f"system {sequence} is not in {store_path}")
    positions = root[f"systems/{sequence}/positions"]
    step = frames_per_read or positions.shards[0]
    start, stop = _split_range(rows[sequence], split)
    for i in range(start, stop, step):
        yield read_checked(positions, slice(i, min(i + step, stop)), store_path, sequence)


class _LRU(OrderedDict):
    def __init__(self, max_items: int):
        super().__init__()
        self.max_items = max_items

    def get_or_load(self, key, load):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = load()
        if len(self) > self.max_items:
            self.popitem(last=False)
        return value


def length_bucket_edges(
    n_atoms: Sequence[int] | np.ndarray, n_frames: Sequence[int] | np.ndarray, buckets: int | Sequence[int] | None
) -> list[int]:
    """Upper atom counts (inclusive, ascending) of the length buckets of systems with ``n_atoms`` atoms and
    ``n_frames`` frames each; a system goes to the first bucket whose edge is >= its atom count.

    ``buckets``: None or 1 = one bucket; an integer k = up to k buckets holding about equal numbers of
    frames (cut at the atom counts nearest the frame-weighted k-quantiles; a system is never split, so
    fewer buckets come out when a few lengths dominate); a list = explicit upper edges in atoms (systems above the last
    edge form one more bucket). Buckets without frames are dropped.
    """
    atoms, frames = np.asarray(n_atoms, dtype=np.int64), np.asarray(n_frames, dtype=np.int64)
    largest = int(atoms.max())
    if buckets is None or (isinstance(buckets, int | np.integer) and buckets <= 1):
        return [largest]
    if isinstance(buckets, int | np.integer):
        values, inverse = np.unique(atoms, return_inverse=True)
        cum = np.cumsum(np.bincount(inverse, weights=frames, minlength=len(values)))
        edges = set()
        for t in cum[-1] * np.arange(1, int(buckets)) / int(buckets):  # cut where the frame count is nearest t
            i = min(int(np.searchsorted(cum, t, side="left")), len(values) - 1)
            edges.add(int(values[i - 1 if i > 0 and t - cum[i - 1] <= cum[i] - t else i]))
    else:
        edges = {int(e) for e in buckets if int(e) < largest}
    edges = sorted(edges | {largest})
    used = np.unique(np.searchsorted(edges, atoms, side="left"))
    return [edges[i] for i in used]


class FrameLoader:
    """Endless iterator of padded training batches drawn from one or more frame stores.

    Each global batch (``batch_size`` frames; step ``s``) draws frames uniformly from all frames of the
    ``split`` of all stores (so systems of different lengths mix), with a generator seeded by
    ``(seed, s)``: batches are a pure function of ``seed`` and the step, so :meth:`state_dict` is just
    the step. With DDP, rank ``r`` of ``world_size`` takes the ``r``-th contiguous slice of
    ``batch_size // world_size`` frames of every global batch, so ranks never share a batch position.

    ``length_buckets`` groups the systems by atom count (see :func:`length_bucket_edges`); each global
    batch then first picks one bucket with probability proportional to its number of frames and draws
    all its frames uniformly within that bucket. Every frame keeps the same chance 1 / n_frames_total
    of filling each batch position, while a batch holds systems of similar size and so carries little
    padding once the model cuts it to its longest system.

    Only the chunks holding the requested frames are read and decoded; at most ``chunk_cache_size``
    decoded chunks and ``system_cache_size`` open systems are kept, so memory does not grow with the
    size of the stores. A batch is a dict of torch tensors: ``x`` float32 [B, Nmax, 3] nm (not centred),
    ``mask`` bool [B, Nmax], ``atom_type``, ``residue_type``, ``residue_index`` int64 [B, Nmax] (0 on
    padding), ``chain_length`` int64 [B], ``permutations`` int64 [B, 8, Nmax] (padding last), plus
    ``system`` int64 [B] (index into :attr:`systems`) and ``frame`` int64 [B].
    Reading is single-process; :meth:`prefetch` builds the same batches ahead in worker processes.
    """

    def __init__(
        self,
        store_paths: Sequence[str | os.PathLike] | str | os.PathLike,
        batch_size: int,
        seed: int,
        n_max: int | None = None,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        chunk_cache_size: int = 512,
        system_cache_size: int = 4096,
        length_buckets: int | Sequence[int] | None = None,
    ):
        if isinstance(store_paths, str | os.PathLike):
            store_paths = [store_paths]
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"batch_size {batch_size} must divide into world_size {world_size}; rank {rank}")
        self._config = {"store_paths": list(store_paths), "batch_size": batch_size, "seed": seed, "n_max": n_max,
                        "split": split, "rank": rank, "world_size": world_size,
                        "chunk_cache_size": chunk_cache_size, "system_cache_size": system_cache_size,
                        "length_buckets": length_buckets}  # fmt: skip
        self.store_paths = [Path(p) for p in store_paths]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.split, self.step = split, 0
        self._roots = [open_store(p) for p in self.store_paths]
        self.systems: list[dict] = []  # store, sequence, n_atoms, first frame of the split, n_frames in split
        for store, path in enumerate(self.store_paths):
            for row in store_index(path):
                start, stop = _split_range(row, split)
                if stop > start:
                    self.systems.append(
                        {
                            "store": store,
                            "sequence": row["sequence"],
                            "n_atoms": row["n_atoms"],
                            "frame_start": start,
                            "n_frames": stop - start,
                        }
                    )
        if not self.systems:
            raise ValueError(f"no frames in split {split!r} of {[str(p) for p in self.store_paths]}")
        counts = np.array([s["n_frames"] for s in self.systems], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n_frames_total = int(self._offsets[-1])
        largest = max(s["n_atoms"] for s in self.systems)
        self.n_max = largest if n_max is None else int(n_max)
        if self.n_max < largest:
            raise ValueError(f"n_max={n_max} is smaller than the largest system ({largest} atoms)")
        atoms = np.array([s["n_atoms"] for s in self.systems], dtype=np.int64)
        self.bucket_edges = length_bucket_edges(atoms, counts, length_buckets)
        bucket = np.searchsorted(self.bucket_edges, atoms, side="left")  # first edge >= n_atoms
        # per bucket: its systems (in loader order) and the offsets of their frames within the bucket
        self._bucket_systems = [np.flatnonzero(bucket == b) for b in range(len(self.bucket_edges))]
        self._bucket_offsets = [np.concatenate([[0], np.cumsum(counts[i])]) for i in self._bucket_systems]
        self._bucket_start = np.concatenate([[0], np.cumsum([o[-1] for o in self._bucket_offsets])])
        self._chunks = _LRU(chunk_cache_size)
        self._open = _LRU(system_cache_size)

    @property
    def bucket_frames(self) -> list[int]:
        """Number of frames in each length bucket (ordered as :attr:`bucket_edges`)."""
        return [int(o[-1]) for o in self._bucket_offsets]

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def prefetch(self, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as iterating, from the current step on, built ahead by ``num_workers`` worker
        processes (a torch DataLoader; worker w makes steps w, w + num_workers, ...). ``self.step`` advances
        as batches are taken, so :meth:`state_dict` stays exact."""
        steps = _Steps(self._config, self.step, num_workers)
        for batch in torch.utils.data.DataLoader(steps, batch_size=None, num_workers=num_workers):
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "split": self.split,
            "n_frames_total": self.n_frames_total,
            "n_systems": len(self.systems),
            "bucket_edges": list(self.bucket_edges),
        }

    def load_state_dict(self, state: dict) -> None:
        state = {"bucket_edges": [max(s["n_atoms"] for s in self.systems)], **state}  # states before buckets
        for key in ("seed", "batch_size", "split", "n_frames_total", "n_systems", "bucket_edges"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(
                    f"loader state is for {key}={state[key]!r}, this loader has {self.state_dict()[key]!r}"
                )
        self.step = int(state["step"])

    def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(system index, frame index within the system's store array) of this rank's part of batch ``step``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(step)]))
        rows = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        if len(self.bucket_edges) == 1:  # one bucket: uniform over all frames (the draw of every earlier run)
            flat = rng.integers(0, self.n_frames_total, size=self.batch_size)[rows]
            system = np.searchsorted(self._offsets, flat, side="right") - 1
            within = flat - self._offsets[system]
        else:  # bucket b with probability frames_b / frames_total (one integer draw), then uniform within it
            b = int(np.searchsorted(self._bucket_start, rng.integers(0, self.n_frames_total), side="right") - 1)
            offsets = self._bucket_offsets[b]
            flat = rng.integers(0, offsets[-1], size=self.batch_size)[rows]
            member = np.searchsorted(offsets, flat, side="right") - 1
            system, within = self._bucket_systems[b][member], flat - offsets[member]
        start = np.array([self.systems[i]["frame_start"] for i in system], dtype=np.int64)
        return system, within + start

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's part of global batch ``step`` (does not move the iterator)."""
        system, frame = self.draw(step)
        b, n_max = len(system), self.n_max
        x = np.zeros((b, n_max, 3), dtype=np.float32)
        mask = np.zeros((b, n_max), dtype=bool)
        cond = np.zeros((b, n_max, 3), dtype=np.int64)
        chain_length = np.zeros(b, dtype=np.int64)
        perms = np.zeros((b, N_PERMUTATIONS, n_max), dtype=np.int64)
        for i, (s, f) in enumerate(zip(system, frame, strict=True)):
            entry = self._system(int(s))
            n, fpc = entry["n_atoms"], entry["frames_per_chunk"]
            x[i, :n] = self._chunk(int(s), int(f) // fpc)[int(f) % fpc]
            mask[i, :n] = True
            cond[i, :n] = entry["conditioning"]
            chain_length[i] = entry["chain_length"]
            perms[i] = entry["permutations"]
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "atom_type": torch.from_numpy(cond[..., 0].copy()),
            "residue_type": torch.from_numpy(cond[..., 1].copy()),
            "residue_index": torch.from_numpy(cond[..., 2].copy()),
            "chain_length": torch.from_numpy(chain_length),
            "permutations": torch.from_numpy(perms),
            "system": torch.from_numpy(system.astype(np.int64)),
            "frame": torch.from_numpy(frame.astype(np.int64)),
        }

    def _chunk(self, system: int, chunk: int) -> np.ndarray:
        """Decoded frames of one chunk, ``[frames_per_chunk, N, 3]``, through the bounded cache."""
        entry = self._system(system)
        fpc, meta = entry["frames_per_chunk"], self.systems[system]
        path = self.store_paths[meta["store"]]
        return self._chunks.get_or_load(
            (system, chunk),
            lambda: read_checked(entry["positions"], slice(chunk * fpc, (chunk + 1) * fpc), path, meta["sequence"]),
        )

    def _system(self, i: int) -> dict:
        def load():
            meta = self.systems[i]
            path, seq = self.store_paths[meta["store"]], meta["sequence"]
            group = self._roots[meta["store"]][f"systems/{seq}"]
            positions = group["positions"]
            return {
                "positions": positions,
                "n_atoms": meta["n_atoms"],
                "frames_per_chunk": positions.chunks[0],
                "conditioning": read_checked(group["conditioning"], slice(None), path, seq, "conditioning").astype(
                    np.int64
                ),
                "permutations": pad_permutations(
                    read_checked(group["permutations"], slice(None), path, seq, "permutations").astype(np.int64),
                    self.n_max,
                ),
                "chain_length": int(group.attrs["chain_length"]),
            }

        return self._open.get_or_load(i, load)


class _Steps(torch.utils.data.IterableDataset):
    """Batches ``first_step + worker, first_step + worker + n_workers, ...`` of a FrameLoader rebuilt in each worker."""

    def __init__(self, config: dict, first_step: int, n_workers: int):
        self.config, self.first_step, self.n_workers = config, first_step, max(n_workers, 1)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        loader = FrameLoader(**self.config)
        step = self.first_step + (info.id if info is not None else 0)
        while True:
            yield loader.batch(step)
            step += self.n_workers
