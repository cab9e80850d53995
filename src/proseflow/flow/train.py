"""Training of the Prose flow (PAPER.md section 3), resumable and DDP-aware.

Recipe: loss = -log q(x) / 3N over the real atoms, mean over the systems of the global batch; AdamW
(lr 1e-4, betas 0.9/0.95, weight decay 4e-4); one-cycle cosine schedule (5% warm-up from lr/500, cosine decay to lr/500);
grad-norm clip 1.0; EMA 0.999; batch 512; 500k steps; fp32 with TF32 off. Inputs: frames in nm from
:class:`proseflow.data.dataset.FrameLoader`, centred, divided by 0.35 nm, randomly rotated, plus one
Gaussian centroid shift of std 1/sqrt(N) (:mod:`proseflow.flow.preprocess`).

Everything random in a step is a pure function of ``(seed, step)``: the loader's batch and the
augmentation (drawn for the whole global batch, then sliced per rank). So a run resumed from
``checkpoint.pt`` and a run on any number of DDP ranks see exactly the same inputs.

Outputs in ``out_dir``: ``train_log.csv``, ``loss_curve.png``, ``snapshots/step_NNNNNNN.pt`` (EMA model
every ``snapshot_every`` steps, if set), ``checkpoint.pt`` (every
``checkpoint_every`` steps, atomically) and, only once all steps are done, ``settings.json`` and then
``model.pt`` (EMA weights + FlowConfig + feature vocabulary; read it with :func:`load_model`).
Launch under ``torchrun --nproc-per-node G`` for DDP (nccl on CUDA, gloo on CPU).

Throughput (issue 13): the batch is cut to its longest system eagerly (:meth:`ProseFlow.trim`), then the
flow's forward pass and the loss run as one ``torch.compile``d region (``compile``; the atom dimension is
marked dynamic, so batches of any padded length share one compiled graph; compiled before the first step, its compilation time
logged and kept out of steps/s; eager if compilation is not available here). ``length_buckets`` draws each
batch from one bucket of systems of similar size (:class:`proseflow.data.dataset.FrameLoader`), so little of it
is padding. AdamW runs fused where torch has the fused kernel.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from proseflow.artefacts import atomic_write, save_json
from proseflow.data import features
from proseflow.data.dataset import CorruptStoreError, FrameLoader, coordinate_std_nm
from proseflow.flow.checkpoint import model_file
from proseflow.flow.config import FlowConfig, TrainConfig  # noqa: F401  (TrainConfig: re-exported)
from proseflow.flow.model import ProseFlow, count_parameters, set_fp32_numerics
from proseflow.flow.preprocess import n_atoms, normalise, random_rotations, rotate

log = logging.getLogger("proseflow")

LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "steps_per_s", "val_nll")
VAL_SEED = 0  # the held-out validation frames (and their augmentation) are the same in every run


# Settings that may change when a run is resumed; any other difference is an error.
_RESUMABLE_CHANGES = {
    "device", "val_every", "val_frames", "val_batch_size", "checkpoint_every", "snapshot_every", "log_every",
    "stop_after_s", "keep",
    "progress", "prefetch", "num_threads", "compile",
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- model
@dataclass
class BestSnapshot:
    """The EMA snapshot of lowest validation NLL so far (``train.keep: best``, early stopping by selection): its
    step and NLL travel in the checkpoint, so a resumed run keeps the best of the whole run."""

    step: int | None = None
    val_nll: float = math.inf

    def update(self, step: int, val_nll: float | None) -> bool:
        """Record ``(step, val_nll)`` if it is the best so far (finite and lower); True if it is."""
        if val_nll is None or not math.isfinite(val_nll) or val_nll >= self.val_nll:
            return False
        self.step, self.val_nll = int(step), float(val_nll)
        return True


def flow_config(config: TrainConfig) -> FlowConfig:
    """The FlowConfig of a run (its permutation rows index the loader's :data:`proseflow.data.permutations`)."""
    cfg = FlowConfig.preset(config.model_preset, **config.model)
    cfg = dataclasses.replace(cfg, perm_order=cfg.permutation_order())  # recorded explicitly in the model file
    if cfg.side_chains != "proseflow":
        raise ValueError(f"side_chains {cfg.side_chains!r} is for imported models: the training stores hold "
                         "proseflow's side-chain orders (train with side_chains: proseflow)")
    if cfg.n_atom_types < features.N_ATOM_TYPES or cfg.n_residue_types < features.N_RESIDUE_TYPES:
        raise ValueError("FlowConfig vocabulary is smaller than proseflow.data.features'")
    if cfg.n_permutations != features.N_PERMUTATIONS:
        raise ValueError(f"FlowConfig.n_permutations must be {features.N_PERMUTATIONS}")
    return cfg


class EMA:
    """Exponential moving average of the parameters: ema <- d * ema + (1 - d) * param.

    With ``step`` (the number of optimizer steps taken before this update) the decay warms up,
    d = min(decay, (1 + step) / (10 + step)), so a short run's EMA is not dominated by the initial
    (identity) flow: with d = 0.999 fixed, 13.5% of the EMA would still be the initial weights after
    2,000 steps. The warm-up is a function of the step alone, so a resumed run stays exact.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


class _NLL(nn.Module):
    """NLL/3N per system of a trimmed batch (:meth:`ProseFlow.trim`); wraps the flow so that DDP sees the
    forward pass, and is what ``compile`` compiles (in place: the flow's state-dict keys do not change)."""

    def __init__(self, flow: ProseFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, trimmed: dict) -> torch.Tensor:
        return self.flow.nll_per_dim_trimmed(x, trimmed)


def use_compile(config: TrainConfig, steps_left: int) -> bool:
    """Whether this run compiles its training step: ``compile`` true, or "auto" and a run long enough to pay
    back the compilation (``TrainConfig.COMPILE_MIN_STEPS``)."""
    if config.compile == "auto":
        return steps_left >= config.COMPILE_MIN_STEPS
    return bool(config.compile)


def mark_length_dynamic(x: torch.Tensor, trimmed: dict) -> None:
    """Mark the atom dimension of a trimmed batch dynamic, so that one compiled graph serves every padded length.
    (Only that dimension: with every dimension dynamic, torch would give equal sizes one symbol, e.g. a batch of
    3 and the 3 coordinates, and compile again when they differ.)"""
    torch._dynamo.maybe_mark_dynamic(x, 1)
    for key in ("mask", "atom_type", "residue_type", "residue_index"):
        torch._dynamo.maybe_mark_dynamic(trimmed[key], 1)
    torch._dynamo.maybe_mark_dynamic(trimmed["permutations"], 2)
    if "system_mask" in trimmed:  # shared conditioning (ProseFlow.trim): its atom dimension
        torch._dynamo.maybe_mark_dynamic(trimmed["system_mask"], 1)
        torch._dynamo.maybe_mark_dynamic(trimmed["system_permutations"], 2)


def compile_loss(loss_fn: nn.Module, warm_up) -> float | None:
    """Compile ``loss_fn`` in place and compile it now by running ``warm_up(loss_fn)`` (one forward and
    backward pass on a real batch, no optimizer step). Returns the compilation time in s, or None (and
    leaves ``loss_fn`` eager, with a warning in the log) if compilation is not available here. Inputs should be
    contiguous and marked with :func:`mark_length_dynamic` (then no batch compiles a second graph)."""
    t = time.perf_counter()
    try:
        loss_fn.compile()
        warm_up(loss_fn)
    except Exception as err:  # no C++ compiler, unsupported platform or Python, backend failure: run eagerly
        loss_fn._compiled_call_impl = None  # undo nn.Module.compile
        log.warning("torch.compile is not available here (%s: %s); training eagerly", type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return None
    return time.perf_counter() - t


def lr_factor(step: int, config: TrainConfig) -> float:
    """One-cycle cosine schedule (as torch OneCycleLR, anneal_strategy="cos"), as a multiple of lr."""
    start = 1.0 / config.start_lr_div
    end = start / config.final_div_factor
    warm = max(1, round(config.warmup_frac * config.max_steps))
    if step < warm:
        return start + (1 - start) * (1 - math.cos(math.pi * step / warm)) / 2
    t = min(1.0, (step - warm) / max(1, config.max_steps - warm))
    return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2


# ----------------------------------------------------------------------------------------------- data
def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def resolve_scale_nm(config: TrainConfig, train_stores: list[str | os.PathLike]) -> float:
    """The run's coordinate scale in nm: ``config.scale_nm``, or with "data" the std of the centred coordinates
    of the training split of ``train_stores``."""
    if config.scale_nm == "data":
        return coordinate_std_nm(train_stores, config.train_split)
    return float(config.scale_nm)


def augment(
    x_nm: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, rows: slice, n_global: int,
    config: TrainConfig, scale_nm: float,
) -> torch.Tensor:
    """Training transform of rows ``rows`` of a global batch of ``n_global`` systems: centre, scale,
    rotate, centroid shift. The random draws are made for the whole global batch (on CPU), so every
    system gets the same augmentation whatever the number of ranks."""
    x = normalise(x_nm, mask, scale_nm)
    rot = random_rotations(n_global, generator)[rows].to(x)
    eps = torch.randn(n_global, 1, 3, generator=generator)[rows].to(x)
    if config.rotation:
        x = rotate(x, rot)
    if config.com_augment:
        x = x + eps * n_atoms(mask).to(x.dtype).rsqrt()[:, None, None]
    return x * mask[..., None].to(x.dtype)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validation_nll(model: ProseFlow, loader: FrameLoader, n_frames: int, config: TrainConfig,
                   scale_nm: float) -> float:
    """Mean NLL/3N over a fixed draw of ``n_frames`` held-out frames (fixed augmentation)."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(math.ceil(n_frames / loader.batch_size)):
        batch = _to_device(loader.batch(i), device)
        n = min(loader.batch_size, n_frames - i * loader.batch_size)
        batch = {k: v[:n] for k, v in batch.items()}
        x = augment(batch["x"], batch["mask"], _generator(VAL_SEED, i, 1), slice(0, n), n, config, scale_nm)
        total += float(model.nll_per_dim(x, batch).sum())
        count += n
    return total / count


# ----------------------------------------------------------------------------------------------- files
def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class _CSVLog:
    """train_log.csv; on resume, rows after the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path, self.rows = path, []
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: dict) -> None:
        row = {k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, LOG_COLUMNS).writerow(row)

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(int(r["step"]), float(r[key])) for r in self.rows if r[key] not in ("", None)]
            return list(zip(*pts, strict=True)) if pts else ([], [])

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*series("loss"), lw=1, label="train (batch)")
        ax.plot(*series("val_nll"), "o-", ms=3, label="validation (EMA)")
        ax.set(xlabel="step", ylabel="NLL / 3N (normalised units)", title="Prose training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        os.replace(tmp, path)


def _versions() -> dict:
    import zarr

    from proseflow import __version__

    return {
        "proseflow": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "zarr": zarr.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }  # fmt: skip


def _hardware(world_size: int) -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "gpus": gpus, "world_size": world_size,
        "hostname": platform.node(),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- training
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # the process group was created here (and is destroyed at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(config: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{d.local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        d.owned = True
    return d, device


def _rng_states() -> dict:
    return {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }  # fmt: skip


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _agree(flag: bool, ddp: _Dist, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks stop at the same step)."""
    if ddp.world_size == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def _fast_adamw(device: torch.device) -> dict:
    """AdamW's fused kernel where torch has one for ``device`` (several times faster than its per-tensor loop
    on CPU), else its multi-tensor (foreach) implementation."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return {"fused": True} if device.type in _get_fused_kernels_supported_devices() else {"foreach": True}


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    now = config.to_dict()
    defaults = TrainConfig().to_dict()  # a setting added after the checkpoint was written had its default
    bad = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k])
    if bad:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in bad)
        raise ValueError(f"checkpoint.pt was written with other settings ({diff}); use a new out_dir")


def _set_aside_finished_run(out: Path, config: TrainConfig) -> bool:
    """A finished run (``settings.json`` says all ``max_steps`` are done) being run again is a forced rerun
    (Snakemake deletes ``model.pt`` first): move its checkpoint and settings aside as ``*.previous.*`` so
    the run starts fresh instead of "resuming" for 0 steps. True if it did."""
    settings, ckpt = out / "settings.json", out / "checkpoint.pt"
    if not (settings.exists() and ckpt.exists()):
        return False
    try:
        steps = int(json.loads(settings.read_text())["steps"])
    except (ValueError, KeyError, TypeError):
        return False
    if steps < config.max_steps:  # not finished (max_steps raised since: _check_resumable refuses, it sets the schedule)
        return False
    os.replace(ckpt, out / "checkpoint.previous.pt")
    os.replace(settings, out / "settings.previous.json")
    log.warning("%s holds a finished run (%d of %d steps): rerun, so starting a fresh run; its checkpoint and "
                "settings are kept as checkpoint.previous.pt and settings.previous.json", out, steps, config.max_steps)
    return True


def _model_file(ema: EMA, cfg: FlowConfig, config: TrainConfig, step: int, scale_nm: float) -> dict:
    """What ``model.pt`` (and each snapshot) holds: the EMA weights and everything needed to use them."""
    return model_file(ema.model, scale_nm, flow_config=cfg.to_dict(), train_config=config.to_dict(), step=step)


class _Run:
    """One training run, set up (model, EMA, optimiser, schedule, loaders; resumed from ``checkpoint.pt`` when one
    is there) and then driven by :func:`train` one step at a time. Only rank 0 writes files."""

    def __init__(self, config: TrainConfig, train_stores, val_stores, out: Path):
        self.t_start = time.time()
        self.config, self.out = config, out
        self.train_stores, self.val_stores = train_stores, val_stores
        out.mkdir(parents=True, exist_ok=True)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.ddp, self.device = _setup_distributed(config)
        if config.batch_size % self.ddp.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by world_size {self.ddp.world_size}")
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.cfg = cfg = flow_config(config)
        self.model = ProseFlow(cfg).to(self.device)
        if config.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        else:
            set_fp32_numerics()
        self.ema = EMA(self.model, config.ema_decay)
        self.loss_fn = _NLL(self.model)
        if self.ddp.world_size > 1:
            self.loss_fn = nn.parallel.DistributedDataParallel(
                self.loss_fn, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay, **_fast_adamw(self.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.loader = FrameLoader(
            train_stores, config.batch_size, config.seed, n_max=config.n_max, split=config.train_split,
            rank=self.ddp.rank, world_size=self.ddp.world_size, length_buckets=config.length_buckets,
        )  # fmt: skip
        if self.loader.n_max > cfg.max_atoms:
            raise ValueError(f"systems of {self.loader.n_max} atoms exceed FlowConfig.max_atoms={cfg.max_atoms}")
        self.scale_nm = resolve_scale_nm(config, train_stores)
        self.val_loader = None
        if val_stores and self.ddp.main:
            self.val_loader = FrameLoader(val_stores, config.val_batch_size, VAL_SEED, split=config.val_split)
            if self.val_loader.n_max > cfg.max_atoms:
                raise ValueError(f"validation systems of {self.val_loader.n_max} atoms exceed max_atoms={cfg.max_atoms}")
        self.step, self.ckpt_path, self.best = 0, out / "checkpoint.pt", BestSnapshot()
        self.val_nll, self.compile_s, self.compiling = None, None, False
        local = self.loader.local_batch_size
        self.rows = slice(self.ddp.rank * local, (self.ddp.rank + 1) * local)
        self._resume()
        self.csv_log = _CSVLog(out / "train_log.csv", self.step) if self.ddp.main else None
        self.n_params = count_parameters(self.model)
        if self.ddp.main:
            log.info("training %s (%s, %.1fM parameters) on %s x%d, %d systems, %d frames", config.model_preset,
                     cfg.arch, self.n_params / 1e6, self.device, self.ddp.world_size, len(self.loader.systems),
                     self.loader.n_frames_total)
            if len(self.loader.bucket_edges) > 1:
                log.info("length buckets (max atoms: frames): %s", ", ".join(
                    f"{e}: {f}" for e, f in zip(self.loader.bucket_edges, self.loader.bucket_frames, strict=True)))
        self.saved_step = self.step if self.ckpt_path.exists() else None  # step of the checkpoint on disk

    def _resume(self) -> None:
        if self.ddp.main:
            _set_aside_finished_run(self.out, self.config)
        if self.ddp.world_size > 1:
            dist.barrier()
        if not self.ckpt_path.exists():
            return
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        _check_resumable(ckpt["config"], self.config)
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.loader.load_state_dict(ckpt["loader"])
        _set_rng_states(ckpt["rng"])
        self.step = ckpt["step"]
        self.best = BestSnapshot(**ckpt.get("best", {}))
        if self.loader.step != self.step:
            raise ValueError(f"checkpoint at step {self.step} has loader step {self.loader.step}")
        log.info("resuming from %s at step %d", self.ckpt_path, self.step)

    def save_checkpoint(self) -> None:
        self.saved_step = self.loader.step = self.step
        _atomic_save({
            "step": self.step, "model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(), "rng": _rng_states(), "config": self.config.to_dict(),
            "flow_config": self.cfg.to_dict(), "best": dataclasses.asdict(self.best),
        }, self.ckpt_path)  # fmt: skip
        self.csv_log.plot(self.out / "loss_curve.png")

    def inputs(self, cpu_batch: dict, s: int) -> tuple[torch.Tensor, dict]:
        """Step ``s``'s augmented coordinates and batch, cut to the batch's longest system."""
        batch = _to_device(cpu_batch, self.device)
        x = augment(batch["x"], batch["mask"], _generator(self.config.seed, s), self.rows, self.config.batch_size,
                    self.config, self.scale_nm)
        trimmed = self.model.trim(batch)
        x = x[:, : trimmed["mask"].shape[1]].contiguous()
        if self.compiling:
            mark_length_dynamic(x, trimmed)
        return x, trimmed

    def compile(self) -> None:
        """torch.compile the forward + loss where it pays (:func:`use_compile`), warmed up on the next batch."""
        self.compiling = self.step < self.config.max_steps and use_compile(self.config, self.config.max_steps - self.step)
        if not self.compiling:
            return

        def warm_up(fn):  # compiles forward and backward on this run's next batch; changes no state but .grad
            fn(*self.inputs(self.loader.batch(self.step), self.step)).mean().backward()
            self.optimizer.zero_grad(set_to_none=True)

        loss_fn = self.loss_fn.module if isinstance(self.loss_fn, nn.parallel.DistributedDataParallel) else self.loss_fn
        self.compile_s = compile_loss(loss_fn, warm_up)
        if self.ddp.main and self.compile_s is not None:
            log.info("compiled the training step (forward + loss, any padded length) in %.1f s", self.compile_s)

    def should_stop(self) -> bool:
        """``train.stop_after_s`` has passed (all ranks agree)."""
        c = self.config
        return c.stop_after_s is not None and _agree(time.time() - self.t_start > c.stop_after_s, self.ddp, self.device)

    def train_step(self, cpu_batch: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser step (skipped on a non-finite gradient), the schedule and the EMA; (loss, grad norm, lr)."""
        x, trimmed = self.inputs(cpu_batch, self.step)
        loss = self.loss_fn(x, trimmed).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        if torch.isfinite(grad_norm):
            self.optimizer.step()
        else:
            log.warning("step %d: non-finite gradient norm, update skipped", self.step + 1)
        self.scheduler.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        loss = loss.detach()
        if self.ddp.world_size > 1:
            dist.all_reduce(loss)  # sum (gloo has no AVG)
            loss /= self.ddp.world_size
        return loss, grad_norm, lr

    def validate(self) -> float:
        """Validation NLL of the EMA model; the best EMA snapshot so far is kept as best.pt (train.keep: best)."""
        self.val_nll = validation_nll(self.ema.model, self.val_loader, self.config.val_frames, self.config,
                                      self.scale_nm)
        if self.best.update(self.step, self.val_nll):
            _atomic_save(self.model_file(), self.out / "best.pt")
        return self.val_nll

    def model_file(self) -> dict:
        return _model_file(self.ema, self.cfg, self.config, self.step, self.scale_nm)

    def finish(self) -> None:
        """settings.json (every setting, versions, hardware, the selected snapshot) and model.pt, written last."""
        c, loader = self.config, self.loader
        self.csv_log.plot(self.out / "loss_curve.png")
        settings = {
            "train_config": c.to_dict(), "flow_config": self.cfg.to_dict(), "n_parameters": self.n_params,
            "block_permutations": [features.PERMUTATION_NAMES[b.permutation.index] for b in self.model.blocks],
            "train_stores": [str(p) for p in self.train_stores], "val_stores": [str(p) for p in self.val_stores or []],
            "n_train_systems": len(loader.systems), "n_train_frames": loader.n_frames_total, "scale_nm": self.scale_nm,
            "steps": self.step, "final_val_nll": self.val_nll, "wall_time_s_last_session": time.time() - self.t_start,
            "compiled": self.compile_s is not None, "compile_s_last_session": self.compile_s,
            "length_buckets": {"max_atoms": loader.bucket_edges, "frames": loader.bucket_frames},
            "versions": _versions(), "hardware": _hardware(self.ddp.world_size), "device": str(self.device),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }  # fmt: skip
        final = self.model_file()
        if c.keep == "best" and self.best.step is not None and (self.out / "best.pt").exists():
            final = torch.load(self.out / "best.pt", map_location="cpu", weights_only=False)  # early stopping
        settings["selected"] = {"keep": c.keep, "step": int(final["step"]),
                                "val_nll": self.best.val_nll if final["step"] == self.best.step else self.val_nll}
        save_json(self.out / "settings.json", settings, default=str)
        _atomic_save(final, self.out / "model.pt")


class _Window:
    """The training loss averaged over the steps since the last log row, and the steps/s over them."""

    def __init__(self, device):
        self.loss_sum, self.n, self.t0 = torch.zeros((), device=device), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.n += 1

    def row(self, step: int, lr: float, grad_norm, val_nll: float | None) -> dict:
        row = {"step": step, "loss": f"{float(self.loss_sum) / self.n:.6g}", "lr": f"{lr:.6g}",
               "grad_norm": f"{float(grad_norm):.6g}", "steps_per_s": f"{self.n / (time.perf_counter() - self.t0):.4g}",
               "val_nll": None if val_nll is None else f"{val_nll:.6g}"}  # fmt: skip
        self.loss_sum.zero_()
        self.n, self.t0 = 0, time.perf_counter()
        return row


def train(
    config: TrainConfig,
    train_stores: list[str | os.PathLike],
    val_stores: list[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
) -> dict:
    """Train (or resume from ``out_dir/checkpoint.pt``) and write the outputs listed in the module doc.

    Returns a summary: step, completed (False if stopped by ``stop_after_s``), final val_nll, paths.
    Only rank 0 writes files; every rank returns the summary.
    """
    from tqdm.auto import tqdm

    run = _Run(config, train_stores, val_stores, Path(out_dir))
    main, c = run.ddp.main, config
    bar = tqdm(total=c.max_steps, initial=run.step, disable=not (main and c.progress), unit="step",
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    run.model.train()
    run.compile()
    pool = ThreadPoolExecutor(1) if c.prefetch else None  # the next batch is read while this one trains
    fetch = (lambda s: pool.submit(run.loader.batch, s)) if pool else None
    pending = fetch(run.step) if pool and run.step < c.max_steps else None
    window, completed = _Window(run.device), True
    try:
        while run.step < c.max_steps:
            if run.should_stop():
                completed = False
                break
            cpu_batch = pending.result() if pool else run.loader.batch(run.step)
            pending = fetch(run.step + 1) if pool and run.step + 1 < c.max_steps else None
            loss, grad_norm, lr = run.train_step(cpu_batch)
            bar.update(1)
            window.add(loss)
            step, last = run.step, run.step == c.max_steps
            validate = run.val_loader is not None and (step % c.val_every == 0 or last)
            if main and (step % c.log_every == 0 or validate or last):
                row = window.row(step, lr, grad_norm, run.validate() if validate else None)
                run.csv_log.append(row)
                bar.set_postfix(loss=row["loss"], **({"val": row["val_nll"]} if validate else {}), refresh=False)
            if main and c.snapshot_every and step % c.snapshot_every == 0:
                _atomic_save(run.model_file(), run.out / "snapshots" / f"step_{step:07d}.pt")
            if main and (step % c.checkpoint_every == 0 or last):
                run.save_checkpoint()
        if main and not completed:
            run.save_checkpoint()
            log.warning("stopped after %.0f s at step %d of %d; rerun to resume", time.time() - run.t_start,
                        run.step, c.max_steps)
    except CorruptStoreError as err:
        kept = (f"its last checkpoint {run.ckpt_path} (step {run.saved_step}) is kept" if run.saved_step is not None
                else "no checkpoint was written yet")
        raise CorruptStoreError(f"training stopped at step {run.step}: {err}. {kept}; after rebuilding the store, "
                                "rerun to resume") from err
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    if main and completed:
        run.finish()
    if run.ddp.owned:
        dist.barrier()
        dist.destroy_process_group()
    return {"step": run.step, "completed": completed, "val_nll": run.val_nll, "out_dir": str(run.out)}
