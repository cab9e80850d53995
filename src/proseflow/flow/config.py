"""The flow's and the training run's settings as plain values: standard library only, so the settings layer
that builds the DAG constructs them (a typo in ``train`` or ``models.*.overrides`` fails ``snakemake -n``).
:mod:`proseflow.flow.model` and :mod:`proseflow.flow.train` use and re-export them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from proseflow.data.permutations import N_PERMUTATIONS, schedule_indices

AFFINE_KINDS = ("diagonal", "triangular")  # the per-atom affine map of a block (flow.model.Affine)
ARCHS = ("prose", "prose_released", "tarflow")


@dataclass
class FlowConfig:
    """Size and switches of the flow. ``None`` switches take the default of ``arch``.

    arch="prose": adaLN-Zero conditioning, QK-LayerNorm, SwiGLU transition, lookahead conditioning,
        chemistry-aware permutations (backbone-first and residue-by-residue, standard and variant,
        each with its flip).
    arch="prose_released": the authors' released Prose as a function (``flow.released`` imports their weights):
        adaLN as LN(h) sigmoid(W_g LN(c) + b_g) + W_b LN(c), residual gates sigmoid(W c + b) of the raw
        conditioning, attention with its own pre-LayerNorm, QK-LayerNorm over all channels and an inner residual
        (MLP on u + a), no LayerNorm before the output layer, token 0 left unchanged, conditioning sinusoids
        interleaved with base 1000, conditioning masked on padding. Preset "released" has its sizes.
        proseflow's form (arch="prose") stays the default: at equal size, steps and learning rate it learns
        about 0.6 nats/dim faster on AA (shared/prose-fixture/DIFFERENCES.md, measured).
    arch="tarflow": the plain TarFlow baseline: conditioning added to the input embedding, plain
        LayerNorm, no QK norm, no transition, GELU MLP, permutations alternating residue-by-residue
        and its flip.
    backbone_first=False (ablation): only the four residue-by-residue permutations are cycled.
    Block k uses permutation ``permutation_order()[k % len]``: the schedules of
    :data:`proseflow.data.permutations.SCHEDULES` (prose: the paper's interleaved cycle of all 8 orders).
    adaln_gate: "zero" (adaLN-Zero: the residual gates start at exactly 0) or "sigmoid" (the paper's code:
    gate = sigmoid(linear), bias -2, so every gate starts at sigmoid(-2) = 0.12).
    """

    arch: str = "prose"
    channels: int = 384
    n_blocks: int = 8
    n_layers: int = 8
    head_dim: int = 64
    mlp_ratio: int = 4
    n_atom_types: int = 64  # atom-name vocabulary incl. 0 = padding (must cover the loader's vocabulary)
    n_residue_types: int = 21  # 0 = padding, 1..20 amino acids
    cond_dim: int = 128  # width of each of the 4 conditioning features before the MLP
    max_atoms: int = 256  # length of the learned position embedding (8AA has at most 178 atoms)
    n_permutations: int = N_PERMUTATIONS
    backbone_first: bool = True
    transition: bool | None = None
    lookahead: bool | None = None
    qk_norm: bool | None = None
    perm_order: tuple[int, ...] | None = None  # explicit override of permutation_order()
    grad_checkpoint: bool = False  # recompute each layer's activations in backward (training memory)
    adaln_gate: str = "zero"
    affine: str = "diagonal"  # per-atom map: "diagonal" (x = exp(alpha) z + mu) or "triangular" (x = L z + mu)
    # side-chain orders of the permutations a sampler builds from a topology: "proseflow" (those of the training
    # stores) or "released" (the authors' released Prose: an imported model needs them; data.features)
    side_chains: str = "proseflow"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r} (known: {', '.join(ARCHS)})")
        prose = self.arch != "tarflow"
        for name in ("transition", "lookahead", "qk_norm"):
            if getattr(self, name) is None:
                setattr(self, name, prose)
        if self.channels % self.head_dim:
            raise ValueError("channels must be a multiple of head_dim")
        if self.adaln_gate not in ("zero", "sigmoid"):
            raise ValueError(f"adaln_gate must be 'zero' or 'sigmoid', got {self.adaln_gate!r}")
        if self.side_chains not in ("proseflow", "released"):
            raise ValueError(f"side_chains must be 'proseflow' or 'released', got {self.side_chains!r}")
        if self.affine not in AFFINE_KINDS:
            raise ValueError(f"affine must be one of {AFFINE_KINDS}, got {self.affine!r}")
        if self.perm_order is not None:
            self.perm_order = tuple(int(i) for i in self.perm_order)

    @property
    def adaptive(self) -> bool:
        return self.arch != "tarflow"

    @property
    def released(self) -> bool:
        """The authors' released block form (arch="prose_released")."""
        return self.arch == "prose_released"

    def permutation_order(self) -> tuple[int, ...]:
        """Rows of the loader's permutations, cycled over the blocks (block k uses order[k % len])."""
        if self.perm_order is not None:
            return tuple(self.perm_order)
        if self.arch == "tarflow":
            return schedule_indices("tarflow")
        return schedule_indices("prose" if self.backbone_first else "no_backbone_first")

    @classmethod
    def preset(cls, name: str, **overrides) -> FlowConfig:
        """"paper" (~288M params for prose, ~117M for tarflow), "small" and "tiny" (CPU).

        Every preset keeps the paper's 8 blocks, so every model cycles all 8 permutations; the CPU presets
        shrink the layers per block and the channels instead.
        """
        sizes = {
            "paper": dict(channels=384, n_blocks=8, n_layers=8, head_dim=64, mlp_ratio=4, cond_dim=128),
            # the released checkpoint (transferable/prose_up_to_8aa.pth): 288,117,560 parameters in their layout
            "released": dict(arch="prose_released", channels=384, n_blocks=8, n_layers=8, head_dim=64, mlp_ratio=4,
                             cond_dim=384, n_atom_types=128, n_residue_types=64, side_chains="released"),
            "small": dict(channels=128, n_blocks=8, n_layers=1, head_dim=32, mlp_ratio=4, cond_dim=64),
            "tiny": dict(channels=32, n_blocks=8, n_layers=1, head_dim=16, mlp_ratio=2, cond_dim=16),
        }
        return cls(**{**sizes[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the paper's recipe."""

    model_preset: str = "paper"  # FlowConfig.preset name: paper / small / tiny
    model: dict = field(default_factory=dict)  # FlowConfig overrides: arch, transition, grad_checkpoint, ...
    batch_size: int = 512  # global batch (split evenly over DDP ranks)
    max_steps: int = 500_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 4e-4
    warmup_frac: float = 0.05  # one-cycle: cosine warm-up over this fraction of the steps ...
    start_lr_div: float = 500.0  # ... from lr / start_lr_div, then cosine decay ...
    final_div_factor: float = 1.0  # ... to lr / start_lr_div / final_div_factor (paper: OneCycleLR factor 1 -> lr/500)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    scale_nm: float | str = 0.35  # coordinate scale (nm): the paper's 0.35, or "data": the std of the centred
    # training coordinates (dataset.coordinate_std_nm), resolved when training starts and kept in the model file
    rotation: bool = True
    com_augment: bool = True
    tf32: bool = False
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda
    n_max: int | None = None  # pad every batch to this many atoms (default: the largest training system)
    train_split: str = "train"  # FrameLoader split of the training stores
    val_split: str = "all"  # ... and of the validation stores
    val_every: int = 5000  # validation NLL/3N of the EMA model every this many steps (and at the end)
    val_frames: int = 2048  # number of held-out frames (fixed draw from the validation stores)
    val_batch_size: int = 256
    checkpoint_every: int = 1000
    snapshot_every: int | None = None  # also keep the EMA model every this many steps: snapshots/step_NNNNNNN.pt
    log_every: int = 100
    stop_after_s: float | None = None  # stop cleanly (checkpoint, no model.pt) after this wall time
    progress: bool = True
    prefetch: bool = True  # load the next batch in a background thread
    num_threads: int | None = None  # torch CPU threads
    compile: bool | str = False  # torch.compile the forward + loss: true, false, or auto (runs >= 1000 steps)
    length_buckets: int | list[int] | None = None  # batches from one length bucket (FrameLoader): k or edges
    keep: str = "last"  # model.pt is the last EMA model, or "best": the EMA snapshot of lowest validation NLL

    # "auto" compiles runs of at least this many steps: compilation costs about a minute (CPU, small models) to
    # a few minutes (paper preset) and each step then runs about twice as fast (benchmarks/train_throughput.py).
    COMPILE_MIN_STEPS = 1000

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.model = dict(self.model)
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "val_every", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep not in ("last", "best"):
            raise ValueError(f"train.keep must be 'last' or 'best', got {self.keep!r}")
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"train.compile must be true, false or 'auto', got {self.compile!r}")
        if isinstance(self.scale_nm, str):
            if self.scale_nm != "data":
                raise ValueError(f"train.scale_nm must be a length in nm or 'data', got {self.scale_nm!r}")
        elif not self.scale_nm > 0:
            raise ValueError(f"train.scale_nm must be > 0 nm, got {self.scale_nm}")
        if isinstance(self.length_buckets, list | tuple):
            self.length_buckets = [int(e) for e in self.length_buckets]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
