"""The samplers' settings as plain values: standard library only, so the settings layer that builds the DAG
constructs them (a typo under ``smc.ula``, ``smc.mala`` or ``self_improve`` fails ``snakemake -n``).
:mod:`proseflow.samplers.smc` and :mod:`proseflow.samplers.self_improve` use and re-export them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PAPER_STEP_SIZE = {"ula": 1e-5 * 0.01, "mala": 5e-4}  # normalised flow coordinates squared

# The one list of SMC kernels and of samplers: the config check, the rules' wildcards and the pages derive
# theirs from these. ula / mala: the paper's fixed schedules; amala: adaptive MALA (SMCConfig.adaptive_mala).
SMC_KERNELS = ("ula", "mala", "amala")
SAMPLERS = ("snis", *(f"smc_{k}" for k in SMC_KERNELS), "self_improve")
PAPER_DROP_TOP_FRACTION = 0.002  # the paper drops the top 0.2% of the importance weights (SNIS, SMC, self-improvement)


@dataclass(frozen=True)
class SMCConfig:
    kernel: Literal["ula", "mala"] = "ula"
    n_levels: int = 100  # K annealing increments; the schedule has K + 1 points 0 = t_0 < ... < t_K = 1
    n_mcmc_steps: int = 1  # Langevin steps per level (0: pure annealed importance weights, no moves)
    step_size: float = 1e-3  # h in x' = x + h F + sqrt(2h) xi, in (coordinate unit)^2 (see the module doc)
    adapt_step_size: bool | None = None  # None: adapt for MALA only (ULA has no acceptance signal)
    target_accept: float = 0.6  # "exp" rule: log h += adapt_rate * (acceptance - target_accept)
    adapt_rate: float = 1.0
    adapt_rule: Literal["exp", "band"] = "exp"  # "band": h x adapt_factor above the band, / below it
    target_accept_band: tuple[float, float] = (0.55, 0.6)
    adapt_factor: float = 1.1
    step_size_bounds: tuple[float, float] = (1e-12, 1e3)
    ess_threshold: float = 0.5  # resample when the normalised Kish ESS drops below this
    schedule: Sequence[float] | None = None  # explicit t levels (overrides n_levels)
    # before SMC: drop the largest drop_top_fraction of the importance weights exp(-E_target - log q), then
    # the particles with E_target above max_target_energy (kT); dropped particles get weight zero
    drop_top_fraction: float = 0.0
    max_target_energy: float | None = None
    # adaptive mode (not the paper's): each next level t' is the largest t' <= 1 whose conditional ESS
    # (Zhou, Johansen & Aston 2016: the ESS of the increment under the current weights) is at least
    # target_cess, found by bisection; max_levels bounds the number of levels (the budget)
    adaptive: bool = False
    target_cess: float = 0.95
    max_levels: int = 1000

    def __post_init__(self) -> None:
        if self.kernel not in ("ula", "mala"):
            raise ValueError(f"kernel must be 'ula' or 'mala', got {self.kernel!r}")
        if self.n_mcmc_steps < 0:
            raise ValueError(f"n_mcmc_steps must be >= 0, got {self.n_mcmc_steps}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if not 0.0 < self.target_cess < 1.0:
            raise ValueError(f"target_cess must be in (0, 1), got {self.target_cess}")
        if self.max_levels < 1:
            raise ValueError(f"max_levels must be >= 1, got {self.max_levels}")
        if not 0.0 <= self.drop_top_fraction < 1.0:
            raise ValueError(f"drop_top_fraction must be in [0, 1), got {self.drop_top_fraction}")

    @classmethod
    def paper(cls, kernel: Literal["ula", "mala"], **overrides) -> SMCConfig:
        """Paper settings: ULA 100 levels at h = 1e-7 (eps 1e-5 x dt 0.01); MALA 50 levels from h = 5e-4,
        adapted x/÷1.1 toward 0.55-0.6 acceptance; one step per level, resampling at every level; the top
        0.2% of the weights and the proposals above 100 kT dropped first. Step sizes in normalised flow
        coordinates squared ((nm / scale_nm)^2: the model file's coordinate scale)."""
        base = {
            "kernel": kernel,
            "n_levels": 100 if kernel == "ula" else 50,
            "n_mcmc_steps": 1,
            "ess_threshold": 1.0,
            "step_size": PAPER_STEP_SIZE[kernel],
            "adapt_rule": "band",
            "drop_top_fraction": PAPER_DROP_TOP_FRACTION,
            "max_target_energy": 100.0,
        }
        return cls(**{**base, **overrides})

    @classmethod
    def for_kernel(cls, kernel: str, **overrides) -> SMCConfig:
        """The settings of a pipeline SMC kernel (:data:`SMC_KERNELS`) with the config's overrides over them."""
        if kernel == "amala":
            return cls.adaptive_mala(**overrides)
        if kernel in ("ula", "mala"):
            return cls.paper(kernel, **overrides)
        raise ValueError(f"unknown SMC kernel {kernel!r} (known: {', '.join(SMC_KERNELS)})")

    @classmethod
    def adaptive_mala(cls, **overrides) -> SMCConfig:
        """Adaptive MALA (issue 20; not in the paper): levels by bisection at conditional ESS 0.95, five MALA
        steps per level with the step size adapted toward 0.6 acceptance, resampling below ESS 0.5; the
        paper's filters before SMC (top 0.2% of the weights, proposals above 100 kT)."""
        base = {"kernel": "mala", "adaptive": True, "target_cess": 0.95, "n_mcmc_steps": 5,
                "step_size": PAPER_STEP_SIZE["mala"], "adapt_rule": "exp", "target_accept": 0.6,
                "ess_threshold": 0.5, "drop_top_fraction": PAPER_DROP_TOP_FRACTION, "max_target_energy": 100.0}
        return cls(**{**base, **overrides})

    def check_schedule(self) -> list[float]:
        """The annealing levels t_0 = 0 < ... < t_K = 1 as a list (standard library: the settings layer checks
        them when the DAG is built); ValueError for n_levels < 1 or a schedule that is not strictly increasing
        from exactly 0 to exactly 1."""
        if self.schedule is None:
            if self.n_levels < 1:
                raise ValueError("n_levels must be >= 1")
            return [k / self.n_levels for k in range(self.n_levels)] + [1.0]
        t = [float(v) for v in self.schedule]
        if len(t) < 2 or t[0] != 0.0 or t[-1] != 1.0 or any(b <= a for a, b in zip(t, t[1:], strict=False)):
            raise ValueError(f"schedule must increase strictly from exactly 0 to exactly 1, got {t}")
        return t

    def t_schedule(self):
        """The annealing levels t_0 = 0 < ... < t_K = 1 (numpy array)."""
        import numpy as np

        t = self.check_schedule()
        return np.linspace(0.0, 1.0, self.n_levels + 1) if self.schedule is None else np.asarray(t, dtype=float)

    def adapts(self) -> bool:
        return self.kernel == "mala" if self.adapt_step_size is None else bool(self.adapt_step_size)



@dataclass
class SelfImproveConfig:
    """Defaults: the paper's self-improvement recipe (PAPER.md section 4)."""

    n_rounds: int = 4
    n_samples: int = 200_000  # SNIS proposals per round
    steps: int = 250  # fine-tuning steps per round
    batch_size: int = 256
    lr: float = 5e-6
    reg_weight: float = 0.5  # weight of mean(((log q - log q_initial) / 3N)^2)
    n_final: int = 10_000  # proposals of the final (evaluated) SNIS set
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW, one optimizer over all rounds, constant lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    rotation: bool = True
    com_augment: bool = True
    sample_batch_size: int = 1024
    com_correction: str = "chi"
    drop_top_fraction: float = PAPER_DROP_TOP_FRACTION
    prior_std: float = 1.0  # latent std of every round's proposals (sampling.prior_std)
    keep_round_models: bool = False  # also keep model_round{k}.pt of every round

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("n_samples", "batch_size", "n_final", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"self_improve.{name} must be >= 1, got {getattr(self, name)}")
        if not self.prior_std > 0:
            raise ValueError(f"self_improve.prior_std must be > 0, got {self.prior_std}")
        if self.n_rounds < 0 or self.steps < 0 or self.reg_weight < 0:
            raise ValueError("self_improve.n_rounds, steps and reg_weight must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
