"""CPU throughput of training and sampling for a model preset on dipeptides and octapeptides.

Synthetic frames (built structure + 0.02 nm noise) on real topologies go into real frame stores; the
real trainer (:func:`proseflow.flow.train.train`) runs a few steps on each length and the steps/s of its
log (first logged window, which holds the start-up, dropped) is reported; then the trained model.pt
draws samples with and without the KV cache.

    .venv/bin/python benchmarks/train_sample_throughput.py [--preset small --batch-size 32 --steps 12
                                                            --samples 16 --uncached-samples 4 --threads 1]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LENGTHS = {"2AA": ["AL", "EC"], "8AA": ["AHKILWHG", "AMYNLMIR"]}  # validation-set sequences


def build_store(path: Path, sequences: list[str], n_frames: int = 64) -> Path:
    from proseflow.data.dataset import write_store
    from proseflow.physics.structures import build_peptide

    def systems():
        for i, seq in enumerate(sequences):
            _, pos = build_peptide(seq, minimize=False)
            noise = np.random.default_rng(i).normal(0, 0.02, (n_frames, *pos.shape))
            yield seq, (pos[None] + noise).astype(np.float32)

    return write_store(path, systems(), subsample_every=1)


def time_sampling(model, batch: dict, n: int, cached: bool) -> float:
    """Samples per second for n samples of the first system of ``batch``."""
    one = {k: v[:1] for k, v in batch.items()}
    model.sample(one, n=1, cached=cached)  # warm-up
    t = time.perf_counter()
    x, log_q, _ = model.sample(one, n=n, cached=cached, generator=torch.Generator().manual_seed(0))
    dt = time.perf_counter() - t
    assert torch.isfinite(x).all() and torch.isfinite(log_q).all()
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--uncached-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny preset, few steps and samples")
    args = p.parse_args()
    if args.quick:
        args.preset, args.steps, args.samples, args.uncached_samples = "tiny", 4, 8, 2
    torch.set_num_threads(args.threads)

    from proseflow.data.dataset import FrameLoader
    from proseflow.flow import count_parameters
    from proseflow.flow.checkpoint import load_model
    from proseflow.flow.train import TrainConfig, train

    print(f"preset={args.preset} batch={args.batch_size} threads={args.threads} torch={torch.__version__} (CPU)")
    print(f"{'system':6} {'atoms':>5} {'params':>8} {'train steps/s':>14} {'frames/s':>9} "
          f"{'samples/s cached':>17} {'uncached':>9} {'KV speed-up':>12}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, seqs in LENGTHS.items():
            store = build_store(Path(tmp) / f"{name}.zarr", seqs)
            out = Path(tmp) / f"run-{name}"
            cfg = TrainConfig(model_preset=args.preset, batch_size=args.batch_size, max_steps=args.steps,
                              log_every=max(1, args.steps // 4), checkpoint_every=args.steps, val_every=args.steps,
                              progress=False, num_threads=args.threads, device="cpu")  # fmt: skip
            train(cfg, [store], None, out)
            with open(out / "train_log.csv", newline="") as fh:
                rates = [float(r["steps_per_s"]) for r in csv.DictReader(fh)][1:]
            steps_per_s = statistics.median(rates)

            model = load_model(out / "model.pt")
            batch = FrameLoader([store], 1, seed=0, split="all").batch(0)
            cached = time_sampling(model, batch, args.samples, cached=True)
            uncached = time_sampling(model, batch, args.uncached_samples, cached=False)
            n = int(batch["mask"].sum())
            print(f"{name:6} {n:5d} {count_parameters(model) / 1e6:7.2f}M {steps_per_s:14.3f} "
                  f"{steps_per_s * args.batch_size:9.1f} {cached:17.2f} {uncached:9.2f} {cached / uncached:11.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
