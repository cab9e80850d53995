"""Does the streaming FrameLoader's memory stay flat when the training set grows 10x?

Builds two synthetic stores in the real format (random-walk coordinates on real peptide topologies):
size S (``--systems`` systems x ``--frames`` frames) and 10 S (2x the systems, 5x the frames each),
then, in a fresh subprocess per store, draws ``--batches`` batches and reports frames/s and the peak
resident memory above the post-import baseline (Linux /proc). Prints the 10S/S ratio.

    .venv/bin/python benchmarks/loader_memory.py [--quick] [--systems 6 --frames 2000 --batches 40 --batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_store(path: Path, sequences: list[str], n_frames: int, seed: int) -> None:
    from proseflow.data.dataset import write_store
    from proseflow.physics.structures import build_peptide

    def systems():  # one trajectory in memory at a time
        for i, seq in enumerate(sequences):
            _, positions_nm = build_peptide(seq, minimize=False)
            rng = np.random.default_rng([seed, i])
            walk = np.cumsum(rng.normal(0, 0.005, (n_frames, *positions_nm.shape)).astype(np.float32), axis=0)
            yield seq, positions_nm.astype(np.float32) + walk

    write_store(path, systems(), subsample_every=1)


def _rss_MiB() -> tuple[float, float]:
    """(current, peak) resident memory of this process from /proc (Linux)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def measure(store: str, batches: int, batch_size: int, chunk_cache_size: int) -> dict:
    """Run in a fresh process: peak RSS while loading, above the RSS after the imports.

    The peak is reset after the imports (``/proc/self/clear_refs``); ``ru_maxrss`` would not do, as
    Linux carries it over from the parent process through ``exec``.
    """
    import torch  # noqa: F401  (import cost is not the loader's)

    from proseflow.data.dataset import FrameLoader

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    base_MiB, _ = _rss_MiB()
    loader = FrameLoader([store], batch_size=batch_size, seed=0, chunk_cache_size=chunk_cache_size)
    next(loader)  # warm-up: opens systems, fills the cache
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - start
    _, peak_MiB = _rss_MiB()
    return {
        "frames_per_s": batches * batch_size / seconds,
        "peak_rss_MiB": peak_MiB,
        "loader_rss_MiB": peak_MiB - base_MiB,
        "n_frames_total": loader.n_frames_total,
        "raw_MiB": sum(m["n_frames"] * m["n_atoms"] * 12 for m in loader.systems) / 2**20,  # float32 xyz
        "cached_chunks": len(loader._chunks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=6)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-cache", type=int, default=512, help="decoded chunks the loader keeps")
    parser.add_argument("--quick", action="store_true", help="small sizes (make bench)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.systems, args.frames, args.batches, args.batch_size, args.chunk_cache = 3, 600, 10, 64, 64
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.batch_size, args.chunk_cache)))
        return

    from proseflow.physics.sequences import draw_uniform

    sequences = draw_uniform({2: 4, 4: 8, 8: 8}, seed=0)
    rng = np.random.default_rng(0)
    sequences = list(rng.permutation(sequences))
    sizes = {"S": (args.systems, args.frames), "10S": (2 * args.systems, 5 * args.frames)}
    workdir = Path(tempfile.mkdtemp(prefix="loader_memory_"))
    results = {}
    try:
        for name, (n_systems, n_frames) in sizes.items():
            store = workdir / f"{name}.zarr"
            t0 = time.perf_counter()
            build_store(store, sequences[:n_systems], n_frames, seed=1)
            disk_MiB = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
            cmd = [sys.executable, __file__, "--measure", str(store), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--chunk-cache", str(args.chunk_cache)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1]) | {
                "systems": n_systems, "store_MiB": disk_MiB, "write_s": time.perf_counter() - t0,
            }  # fmt: skip
            shutil.rmtree(store)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{'size':>4} {'systems':>7} {'frames':>8} {'store MiB':>9} {'raw MiB':>8} {'frames/s':>9} {'loader RSS MiB':>14} {'peak RSS MiB':>12}"
    )
    for name, r in results.items():
        print(f"{name:>4} {r['systems']:>7} {r['n_frames_total']:>8} {r['store_MiB']:>9.1f} {r['raw_MiB']:>8.1f} {r['frames_per_s']:>9.0f} "
              f"{r['loader_rss_MiB']:>14.1f} {r['peak_rss_MiB']:>12.1f}")  # fmt: skip
    s, big = results["S"], results["10S"]
    print(f"store size ratio 10S/S: {big['n_frames_total'] / s['n_frames_total']:.1f}x; "
          f"peak RSS ratio: {big['peak_rss_MiB'] / s['peak_rss_MiB']:.2f}; "
          f"loader RSS ratio: {big['loader_rss_MiB'] / max(s['loader_rss_MiB'], 1e-9):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
