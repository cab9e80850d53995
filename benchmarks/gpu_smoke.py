"""GPU smoke test of the paper-size model: train briefly at batch 512, sample, check invertibility.

Synthetic octapeptide frames (built structure + 0.02 nm noise, real topologies) -> the real trainer
(:func:`proseflow.flow.train.train`, fp32, TF32 off, grad checkpointing on by default) for at most
``--max-steps`` steps or ``--train-seconds`` s -> the EMA model samples ``--samples`` conformations.
Prints iterations per GPU-hour (paper: 260 per H100-hour), peak GPU memory, sampling speed and the
float32 inverse errors max|reverse(forward(x)) - x| on data and on samples, and |log q(sample) -
log_prob(sample)|. Also runs on CPU for a dry run: ``--device cpu --preset tiny --batch-size 8``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SEQUENCES = ["ANKSMIEA", "CGSWHKQR", "DDRDTEQT", "EKYYWMQT"]  # 8AA test-set sequences


def build_store(path: Path, n_frames: int) -> Path:
    from proseflow.data.dataset import write_store
    from proseflow.physics.structures import build_peptide

    def systems():
        for i, seq in enumerate(SEQUENCES):
            _, pos = build_peptide(seq, minimize=False)
            noise = np.random.default_rng(i).normal(0, 0.02, (n_frames, *pos.shape))
            yield seq, (pos[None] + noise).astype(np.float32)

    return write_store(path, systems(), subsample_every=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--train-seconds", type=float, default=270.0)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--no-grad-checkpoint", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", default="true", choices=["true", "false", "auto"],
                   help="TrainConfig.compile (compilation time is logged and not counted in steps/s)")
    p.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args()

    from proseflow.data.dataset import FrameLoader
    from proseflow.flow import FlowConfig, ProseFlow, count_parameters
    from proseflow.flow.train import TrainConfig, _generator, augment, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # prints the compilation time
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "run"
        store = build_store(Path(tmp) / "octa.zarr", n_frames=256)
        cfg = TrainConfig(model_preset=args.preset, model={"grad_checkpoint": not args.no_grad_checkpoint},
                          batch_size=args.batch_size, max_steps=args.max_steps, stop_after_s=args.train_seconds,
                          log_every=5, checkpoint_every=args.max_steps, val_every=args.max_steps, device=args.device,
                          compile={"true": True, "false": False}.get(args.compile, "auto"))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = train(cfg, [store], None, out)
        train_s = time.perf_counter() - t0
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        with open(out / "train_log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        rates = [float(r["steps_per_s"]) for r in rows[1:]] or [float(rows[0]["steps_per_s"])]
        steps_per_s = statistics.median(rates)
        ckpt = torch.load(out / "checkpoint.pt", map_location=device, weights_only=False)
        model = ProseFlow(FlowConfig(**ckpt["flow_config"])).to(device)
        model.load_state_dict(ckpt["ema"])
        model.eval()
        print(f"model: {args.preset}, {count_parameters(model) / 1e6:.1f}M parameters, batch {args.batch_size}, "
              f"grad checkpointing {not args.no_grad_checkpoint}, compile {args.compile}")  # fmt: skip
        print(f"trained {result['step']} steps in {train_s:.0f} s (completed={result['completed']}); "
              f"loss {rows[0]['loss']} -> {rows[-1]['loss']}")  # fmt: skip
        print(f"training: {steps_per_s:.3f} steps/s = {3600 * steps_per_s:.0f} iterations per GPU-hour "
              f"(paper: 260 per H100-hour); {steps_per_s * args.batch_size:.0f} frames/s")  # fmt: skip
        print(f"peak GPU memory (training): {peak_gib:.1f} GiB")

        loader = FrameLoader([store], args.samples, seed=1, split="all")
        batch = {k: v.to(device) for k, v in loader.batch(0).items()}
        mask = batch["mask"]
        real = mask[..., None]
        with torch.no_grad():
            x = augment(batch["x"], mask, _generator(1, 0), slice(0, args.samples), args.samples, cfg, cfg.scale_nm)
            z, _ = model(x, batch)
            x_back, _ = model.reverse(z, batch)
            err_data = float(((x_back - x).abs() * real).max())
            one = {k: v[:1] for k, v in batch.items()}
            model.sample(one, n=2)  # warm-up
            sync(device)
            t = time.perf_counter()
            xs, log_q, used = model.sample(one, n=args.samples, generator=torch.Generator(device).manual_seed(0))
            sync(device)
            sample_s = time.perf_counter() - t
            zs, _ = model(xs, used)
            xs_back, _ = model.reverse(zs, used)
            err_sample = float(((xs_back - xs).abs() * used["mask"][..., None]).max())
            err_logq = float((model.log_prob(xs, used) - log_q).abs().max())
        n_atoms = int(mask[0].sum())
        print(f"sampling: {args.samples} samples of {SEQUENCES[0]} ({n_atoms} atoms) in {sample_s:.1f} s = "
              f"{args.samples / sample_s:.1f} samples/s (KV cache)")  # fmt: skip
        print(f"float32 inverse error max|reverse(forward(x)) - x|: data {err_data:.2e}, samples {err_sample:.2e} "
              f"(normalised units; x{cfg.scale_nm} for nm); max|log q - log_prob| = {err_logq:.2e}")  # fmt: skip
        finite = bool(torch.isfinite(xs).all() and torch.isfinite(log_q).all())
        print(f"samples finite: {finite}")


if __name__ == "__main__":
    main()
