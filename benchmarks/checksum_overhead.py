"""What do the crc32c checksums on every chunk cost? Stored bytes per frame and loader frames/s, with and
without checksums, measured in the same run on the same frames.

Writes one store in the current format (blosc-zstd + crc32c per chunk, crc32c on each shard index) with
:func:`proseflow.data.dataset.write_store`, and a copy of it whose ``positions`` arrays are rewritten without
the per-chunk crc32c (the store-version-1 codecs: blosc-zstd only). The frames are real MD frames
(``--md-glob``, e.g. the demo's ``results/md/train/*/*.h5``) or, without it, a random walk on real peptide
topologies. Reports, for each store: bytes of the positions arrays per frame, random-batch loader
frames/s with a cold chunk cache (every frame decodes its chunk: the worst case for checksums) and with
the default cache, and sequential read frames/s (``iterate_system_frames``); then the ratios
checksummed / plain (medians). Runs alternate ABBA between the two stores so load from other processes
hits both alike, and rates are frames per CPU second of this process (``time.process_time``, all its
threads), which a busy machine disturbs far less than wall time.

    .venv/bin/python benchmarks/checksum_overhead.py [--quick] [--md-glob 'results/md/train/*/*.h5']
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def systems_from_md(pattern: str, max_systems: int):
    from proseflow.physics import trajectory_io
    for path in sorted(glob.glob(pattern))[:max_systems]:
        yield Path(path).stem, path, trajectory_io.n_frames(path)


def synthetic(sequences, n_frames):
    from proseflow.physics.structures import build_peptide

    for i, seq in enumerate(sequences):
        _, positions_nm = build_peptide(seq, minimize=False)
        rng = np.random.default_rng(i)
        walk = np.cumsum(rng.normal(0, 0.005, (n_frames, *positions_nm.shape)).astype(np.float32), axis=0)
        yield seq, positions_nm.astype(np.float32) + walk


def strip_chunk_checksums(store: Path) -> None:
    """Rewrite every ``positions`` array of ``store`` with the same chunks and shards but no per-chunk crc32c."""
    import zarr
    from zarr.codecs import BloscCodec

    root = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
    for seq in root["systems"].group_keys():
        group = root[f"systems/{seq}"]
        old = group["positions"]
        data, chunks, shards, attrs = old[:], old.chunks, old.shards, dict(old.attrs)
        del group["positions"]
        new = group.create_array("positions", shape=data.shape, dtype="float32", chunks=chunks, shards=shards,
                                 compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                                 dimension_names=("frame", "atom", "xyz"))  # fmt: skip
        new[:] = data
        new.attrs.update(attrs)


def positions_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.glob("systems/*/positions/**/*") if p.is_file())


def loader_rate(store: Path, batches: int, batch_size: int, chunk_cache_size: int) -> float:
    from proseflow.data.dataset import FrameLoader

    loader = FrameLoader([store], batch_size=batch_size, seed=0, chunk_cache_size=chunk_cache_size)
    loader.batch(0)
    start = time.process_time()
    for step in range(1, batches + 1):
        loader.batch(step)
    return batches * batch_size / (time.process_time() - start)


def sequential_rate(store: Path) -> float:
    from proseflow.data.dataset import iterate_system_frames, store_index

    start, n = time.process_time(), 0
    for row in store_index(store):
        for block in iterate_system_frames(store, row["sequence"]):
            n += len(block)
    return n / (time.process_time() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--md-glob", default=None, help="MD files to take frames from (default: synthetic frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    if args.quick:
        args.repeats, args.batches = 2, 10

    from proseflow.data.dataset import write_store

    tmp = Path(tempfile.mkdtemp(prefix="pf-crc-"))
    try:
        checked, plain = tmp / "checked.zarr", tmp / "plain.zarr"
        if args.md_glob:
            found = list(systems_from_md(args.md_glob, 8))
            if not found:
                raise SystemExit(f"no MD files match {args.md_glob}")
            source = f"{len(found)} MD files ({args.md_glob})"
            write_store(checked, [(seq, path) for seq, path, _ in found], subsample_every=1)
        else:
            seqs, n = ["AG", "PWH", "GAVL", "DGVAHALS"], 500 if args.quick else 4000
            source = f"synthetic random walk, {len(seqs)} systems x {n} frames"
            write_store(checked, synthetic(seqs, n), subsample_every=1)
        shutil.copytree(checked, plain)
        strip_chunk_checksums(plain)
        from proseflow.data.dataset import open_store

        n_frames = open_store(checked).attrs["proseflow_store"]["n_frames_total"]
        rates = {name: {"cold": [], "cached": [], "sequential": []} for name in ("plain", "checked")}
        pair = [("plain", plain), ("checked", checked)]
        for r in range(args.repeats):  # ABBA order, so drifting background load falls on both alike
            for name, store in pair if r % 2 == 0 else pair[::-1]:
                rates[name]["cold"].append(loader_rate(store, args.batches, args.batch_size, chunk_cache_size=1))
                rates[name]["cached"].append(loader_rate(store, args.batches, args.batch_size, chunk_cache_size=512))
                rates[name]["sequential"].append(sequential_rate(store))
        result = {"source": source, "n_frames": n_frames}
        for name, store in (("plain", plain), ("checked", checked)):
            result[name] = {"bytes_per_frame": positions_bytes(store) / n_frames,
                            **{f"{k}_frames_per_s": float(np.median(v)) for k, v in rates[name].items()}}  # fmt: skip
        result["ratio_checked_over_plain"] = {
            key: result["checked"][key] / result["plain"][key] for key in result["plain"]
        }
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
