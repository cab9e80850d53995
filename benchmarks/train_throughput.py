"""Training throughput (issue 13): the compiled training step and length-bucketed batches, ratios in one run.

1. Fixed shape: ``small`` preset with 4 blocks x 2 layers (128 channels, head dim 64, MLP x4), RLMM
   (80 atoms), batch 64: steps/s of today's step (eager, per-tensor AdamW, conditioning computed per row) vs
   the new one (forward + loss compiled, any padded length, fused AdamW, and, the batch being 64 copies of
   one system, the conditioning computed once); goal >= 2x. Also each change alone.
2. Paper-distributed batches: random sequences of 2-8 residues in the paper's proportions (200 / 1,000 /
   1,500 / 2,000 / 3,000 / 4,000 / 10,000) written to a real frame store, the real FrameLoader, batch 64,
   same model: real atoms per second for (a) every batch padded to 178 atoms (the paper's code), (b) cut
   to the batch's longest system (proseflow before issue 13), (c) length buckets + compiled step; goals
   (c)/(b) >= 1.5x, (c)/(a) >= 3x. Peak memory of one step of each (CPU: peak RSS above the level before
   the step, large blocks returned to the OS at once; CUDA: peak allocated).
3. The KV-cached sampler, 256 RLMM samples: conditioning per row vs shared.

Every timed figure is min / median / max over rounds, the variants interleaved within each round, so a
machine shared with other jobs slows them alike. Compilation (once, for every length) is timed apart.

    .venv/bin/python benchmarks/train_throughput.py [--threads 2 --batch-size 64 --rounds 5 --steps 2]
    .venv/bin/python benchmarks/train_throughput.py --quick      # tiny model, batch 8: a smoke run
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

PAPER_COUNTS = {2: 200, 3: 1000, 4: 1500, 5: 2000, 6: 3000, 7: 4000, 8: 10000}
PAD_ALL = 178  # the largest octapeptide: the paper's code pads every batch to it


def stats(values) -> str:
    return f"{min(values):.3g} / {statistics.median(values):.3g} / {max(values):.3g}"


def ratio_stats(num, den) -> str:
    """min / median / max of the per-round ratios num[r] / den[r] (each round times both)."""
    return stats([a / b for a, b in zip(num, den, strict=True)])


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics, or RSS sampled every 0.5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base, self.peak, self.running = self.rss(), 0, True

        def sample():
            while self.running:
                self.peak = max(self.peak, self.rss() - self.base)
                time.sleep(5e-4)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.rss() - self.base)


def return_freed_memory_at_once() -> None:
    """glibc: serve every allocation above 64 KiB by mmap (fixed threshold), so freed tensors leave RSS and
    RSS follows the live tensors (for the CPU peak-memory figures)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def paper_sequences(scale: float, seed: int) -> list[str]:
    """Random sequences, lengths 2-8 in the paper's proportions (counts x scale, at least 1 each)."""
    from proseflow.physics.sequences import AMINO_ACIDS

    rng = np.random.default_rng(seed)
    out = []
    for length, count in PAPER_COUNTS.items():
        for _ in range(max(1, round(count * scale))):
            out.append("".join(rng.choice(list(AMINO_ACIDS), length)))
    return sorted(set(out))


def build_store(path: Path, sequences: list[str], n_frames: int) -> Path:
    """A real frame store; coordinates are random (the cost of a step does not depend on them)."""
    from proseflow.data.dataset import write_store
    from proseflow.data.features import system_features

    def systems():
        for i, seq in enumerate(sequences):
            n = len(system_features(seq)["atom_type"])
            yield seq, np.random.default_rng(i).normal(0, 0.5, (n_frames, n, 3)).astype(np.float32)

    return write_store(path, systems(), subsample_every=1, frames_per_chunk=n_frames, frames_per_shard=n_frames)


class Step:
    """One full training step (forward + loss, backward, clip, AdamW, as proseflow.flow.train) for a variant."""

    def __init__(self, model, loss_fn, fused: bool, trim: bool = True, share: bool = True):
        from proseflow.flow.train import _fast_adamw

        kw = _fast_adamw(next(model.parameters()).device) if fused else {}  # {}: torch's default (today)
        self.model, self.loss_fn, self.trim, self.share = model, loss_fn, trim, share
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=4e-4, **kw)

    def inputs(self, batch: dict, scale_nm: float = 0.35):
        from proseflow.flow.preprocess import normalise
        from proseflow.flow.train import mark_length_dynamic

        x = normalise(batch["x"], batch["mask"], scale_nm)
        if self.trim:
            trimmed = self.model.trim(batch, share_conditioning=self.share)
            x = x[:, : trimmed["mask"].shape[1]].contiguous()
            mark_length_dynamic(x, trimmed)
        else:  # the paper's code: every batch at the loader's padded length (permutations padded in order)
            trimmed = {k: batch[k] for k in ("mask", "atom_type", "residue_type", "residue_index", "chain_length",
                                             "permutations")}  # fmt: skip
        return x[:, : trimmed["mask"].shape[1]].contiguous(), trimmed

    def __call__(self, batch: dict) -> None:
        x, trimmed = self.inputs(batch)
        loss = self.loss_fn(x, trimmed).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def make_model(preset: str, overrides: dict, device, seed: int = 0):
    from proseflow.flow import FlowConfig, ProseFlow

    torch.manual_seed(seed)
    model = ProseFlow(FlowConfig.preset(preset, **overrides)).to(device)
    with torch.no_grad():  # away from the identity initialisation, like a model in training
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (each figure: min / median / max)")
    p.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--buckets", type=int, default=8, help="length buckets of variant (c)")
    p.add_argument("--scale", type=float, default=0.005, help="systems per paper system (0.005: 109 systems)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny model, batch 8, 2 rounds: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.preset, args.blocks, args.layers, args.head_dim = "tiny", 2, 1, 16
        args.batch_size, args.rounds, args.steps, args.samples, args.scale = 8, 2, 1, 8, 0.002
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        return_freed_memory_at_once()

    from proseflow.data.dataset import FrameLoader
    from proseflow.flow import count_parameters
    from proseflow.flow.train import _NLL, compile_loss

    overrides = {"n_blocks": args.blocks, "n_layers": args.layers, "head_dim": args.head_dim}
    model = make_model(args.preset, overrides, device)
    cfg = model.config
    print(f"{args.preset} preset, {cfg.n_blocks} blocks x {cfg.n_layers} layers, {cfg.channels} channels, head dim "
          f"{cfg.head_dim}, MLP x{cfg.mlp_ratio}, {count_parameters(model) / 1e6:.2f}M parameters; batch "
          f"{args.batch_size}; {args.threads} threads; torch {torch.__version__} on {device}")  # fmt: skip
    print(f"figures: min / median / max over {args.rounds} rounds of {args.steps} step(s) per variant, interleaved")

    with tempfile.TemporaryDirectory() as tmp:
        rlmm = build_store(Path(tmp) / "rlmm.zarr", ["RLMM"], n_frames=args.batch_size)
        seqs = paper_sequences(args.scale, seed=0)
        paper = build_store(Path(tmp) / "paper.zarr", seqs, n_frames=8)

        def batches(loader, n):
            return [{k: v.to(device) for k, v in loader.batch(s).items()} for s in range(n)]

        fixed = batches(FrameLoader([rlmm], args.batch_size, seed=0, split="all"), 1)[0]
        n_steps = args.rounds * args.steps
        uniform = FrameLoader([paper], args.batch_size, seed=0, n_max=PAD_ALL, split="all")
        bucketed = FrameLoader([paper], args.batch_size, seed=0, n_max=PAD_ALL, split="all",
                               length_buckets=args.buckets)  # fmt: skip
        b_uniform, b_bucketed = batches(uniform, n_steps), batches(bucketed, n_steps)
        print(f"paper-distributed set: {len(seqs)} systems, {bucketed.n_frames_total} frames; buckets (max atoms: "
              f"frames) " + ", ".join(f"{e}: {f}" for e, f in zip(bucketed.bucket_edges, bucketed.bucket_frames,
                                                                  strict=True)))  # fmt: skip

        # one compiled loss for every compiled variant: the same model, dynamic shapes, compiled once
        compiled_fn = _NLL(model)
        fast = Step(model, compiled_fn, fused=True)
        compile_s = compile_loss(compiled_fn, lambda fn: fn(*fast.inputs(fixed)).mean().backward())
        if compile_s is None:
            print("torch.compile is not available here: the 'compiled' figures below are eager")
        else:
            print(f"compilation (forward + loss + backward, atom dimension dynamic): {compile_s:.1f} s, excluded below")
        # today (before issue 13): eager, torch's default AdamW, conditioning computed for every row
        variants = {
            "eager": Step(model, _NLL(model), fused=False, share=False),
            "compiled": fast,
            "eager_shared": Step(model, _NLL(model), fused=False),
            "compiled_rows": Step(model, compiled_fn, fused=True, share=False),
            # the best eager step the project has (what train.compile: false runs today): fused AdamW, shared
            # conditioning; the baseline compilation must beat to be worth its minutes
            "eager_best": Step(model, _NLL(model), fused=True),
            "pad178": Step(model, _NLL(model), fused=False, trim=False, share=False),
            "cut": Step(model, _NLL(model), fused=False, share=False),
        }
        t = time.perf_counter()
        for v in variants.values():  # warm-up (allocator, thread pools, the compiled graph at every shape kind)
            v(fixed)
        for b in b_bucketed[:2]:
            fast(b)
        print(f"warm-up, including the compiled graphs of the per-row and mixed batches: "
              f"{time.perf_counter() - t:.1f} s, excluded below")  # fmt: skip

        # ------------------------------------------------------------------ 1. fixed shape
        times = {"eager": [], "compiled": [], "eager_shared": [], "compiled_rows": [], "eager_best": []}
        for _ in range(args.rounds):
            for name in times:
                times[name].append(timed(lambda name=name: [variants[name](fixed) for _ in range(args.steps)],
                                         device) / args.steps)  # fmt: skip
        sps = {k: [1 / t for t in v] for k, v in times.items()}
        n_fixed = int(fixed["mask"][0].sum())
        print(f"\n1. fixed shape, RLMM ({n_fixed} atoms) x {args.batch_size}: steps/s")
        print(f"   eager (today)          {stats(sps['eager'])}")
        print(f"   compiled + fused AdamW {stats(sps['compiled'])}")
        print(f"   ratio compiled / eager {ratio_stats(sps['compiled'], sps['eager'])}   (goal >= 2)")
        print(f"   of which: eager + shared conditioning / eager "
              f"{ratio_stats(sps['eager_shared'], sps['eager'])}; compiled + fused, conditioning per row / eager "
              f"{ratio_stats(sps['compiled_rows'], sps['eager'])}")  # fmt: skip
        print(f"   eager, fused AdamW + shared conditioning (today's eager) {stats(sps['eager_best'])}")
        print(f"   **ratio compiled / today's eager** {ratio_stats(sps['compiled'], sps['eager_best'])}   "
              f"(what train.compile buys now)")  # fmt: skip

        # ------------------------------------------------------------------ 2. paper-distributed batches
        # mixed batches: conditioning per row in every variant (shared only for a batch of copies of one system)
        runs = {"a": ("pad178", b_uniform), "b": ("cut", b_uniform), "c": ("compiled", b_bucketed),
                "d": ("eager_best", b_bucketed)}
        rates = {k: [] for k in runs}
        for r in range(args.rounds):
            for key, (name, data) in runs.items():
                chunk = data[r * args.steps : (r + 1) * args.steps]
                dt = timed(lambda name=name, chunk=chunk: [variants[name](b) for b in chunk], device)
                rates[key].append(sum(int(b["mask"].sum()) for b in chunk) / dt)
        pad = {k: float(np.mean([b["mask"].sum(dim=1).max() if k != "a" else PAD_ALL for b in data]))
               for k, (_, data) in runs.items()}  # fmt: skip
        real = {k: float(np.mean([b["mask"].sum(dim=1).float().mean() for b in data])) for k, (_, data) in runs.items()}
        peaks = {}
        for key, (name, data) in runs.items():
            worst = max(data, key=lambda b: int(b["mask"].sum(dim=1).max()))  # the step with the longest system
            with PeakMemory(device) as mem:
                variants[name](worst)
            peaks[key] = mem.peak / 2**20
        labels = {"a": "(a) padded to 178 atoms, eager", "b": "(b) cut to longest, eager (today)",
                  "c": "(c) length buckets + compiled", "d": "(d) length buckets, eager + fused AdamW"}  # fmt: skip
        print(f"\n2. paper-distributed batches of {args.batch_size}: real atoms/s (mean real atoms per system / "
              f"padded length; peak memory of the longest batch's step)")  # fmt: skip
        for key, label in labels.items():
            print(f"   {label:34} {stats(rates[key]):>26}   {real[key]:.0f} / {pad[key]:.0f} atoms   "
                  f"{peaks[key]:.0f} MiB")  # fmt: skip
        print(f"   ratio (c)/(b) {ratio_stats(rates['c'], rates['b'])}   (goal >= 1.5)")
        print(f"   ratio (c)/(a) {ratio_stats(rates['c'], rates['a'])}   (goal >= 3)")
        print(f"   ratio (b)/(a) {ratio_stats(rates['b'], rates['a'])}")
        print(f"   **ratio (c)/(d): compilation alone on bucketed batches** {ratio_stats(rates['c'], rates['d'])}")

        # ------------------------------------------------------------------ 3. the KV-cached sampler
        model.eval()
        one = {k: v[:1] for k, v in fixed.items()}
        model.sample(one, n=2)
        sample_s = {False: [], True: []}
        for r in range(max(2, args.rounds // 2)):
            for share in sample_s:
                model.share_conditioning = share
                sample_s[share].append(timed(lambda r=r: model.sample(one, n=args.samples, generator=torch.Generator(
                    device).manual_seed(r)), device))  # fmt: skip
        rate = {k: [args.samples / t for t in v] for k, v in sample_s.items()}
        print(f"\n3. KV-cached sampler, {args.samples} RLMM samples/s: conditioning per row (before) {stats(rate[False])}"
              f", shared {stats(rate[True])}; ratio {ratio_stats(rate[True], rate[False])}")  # fmt: skip


if __name__ == "__main__":
    main()
