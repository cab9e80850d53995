"""Energy-based (reverse-KL) fine-tuning of a trained flow on one system, mixed with maximum likelihood.

Beyond the paper (issue 10, Noe et al. 2019): with exact, differentiable energies the flow can be trained
toward the Boltzmann density itself. For one system with reduced energy u(x) = E(x)/kT,

    KL(q || p) = E_{x~q}[u(x) + log q(x)] + log Z,

estimated on a batch of the flow's own samples, with gradients through the sampling pass
(x = f^-1(z), z ~ N(0, I), the KV-cached reverse concatenating keys/values while grad is on). x is
the centred configuration in nm and log q its density under the centre-of-mass correction
(:func:`proseflow.flow.preprocess.proposal_log_prob_nm`; ``gaussian`` is the exact one). The loss per
step, per dimension 3N:

    loss = kl_weight * mean(u_reg(x) + log q(x)) / 3N  +  nll_weight * NLL(MD frames) / 3N

where u_reg is u with high energies tamed (linear below ``energy_soft_kT``, logarithmic above, as in
Noe et al.) so that one clashing sample cannot dominate the gradient. The NLL term (forward KL on MD
frames, the training loss) keeps the flow on every state the MD visits: reverse KL alone is
mode-seeking. ``kl_weight = 0`` is plain continued maximum-likelihood training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EnergyKLConfig:
    steps: int = 1000
    batch_size: int = 64  # flow samples per step for the energy term
    data_batch_size: int = 64  # MD frames per step for the likelihood term
    lr: float = 1e-5
    kl_weight: float = 1.0
    nll_weight: float = 1.0
    energy_soft_kT: float = 1000.0  # u above this grows only logarithmically (gradient taming; for a flow that
    # is already close: an untrained flow's clash energies sit far above it, where the entropy term wins)
    com_correction: str = "gaussian"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "data_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"energy_kl.{name} must be >= 1, got {getattr(self, name)}")
        if self.kl_weight < 0 or self.nll_weight < 0 or self.kl_weight + self.nll_weight == 0:
            raise ValueError(f"need kl_weight, nll_weight >= 0, not both 0 (got {self.kl_weight}, {self.nll_weight})")


def soft_energy(u, soft: float):
    """u below ``soft``; soft + log(1 + u - soft) above (continuous, slope 1 at the join); torch."""
    import torch

    excess = torch.clamp(u - soft, min=0.0)
    return torch.where(u > soft, soft + torch.log1p(excess), u)


def reverse_kl_terms(model, batch: dict, energy, scale_nm: float, com_correction: str, generator=None):
    """(u(x) [B] in kT, log q(x) [B] in nm units) of fresh samples x = f^-1(z), differentiable in the weights."""
    import torch

    from proseflow.flow.preprocess import proposal_log_prob_nm, to_nm

    mask = batch["mask"].bool()
    z = torch.randn(*mask.shape, 3, generator=generator, device=mask.device)
    z = torch.where(mask[..., None], z, 0.0)
    x, logdet = model.reverse(z, batch)  # grad flows through the cached autoregressive pass
    log_q_flow = model.prior_log_prob(z, mask) - logdet
    log_q = proposal_log_prob_nm(log_q_flow.double(), x.double(), mask, scale_nm, com_correction)
    u = energy.energy_kT(to_nm(x, mask, scale_nm).double())
    return u, log_q


def finetune_energy(model, topology, energy, md_positions_nm: np.ndarray, config: EnergyKLConfig,
                    scale_nm: float | None = None, device="cpu", progress: bool = True) -> list[dict]:
    """Fine-tune ``model`` in place; returns the log (one row per ``log_every`` steps).

    ``md_positions_nm``: frames labelled as the model's training frames were (read them from its store).
    ``scale_nm``: the model's coordinate scale (default: the model file's, ``checkpoint.model_scale_nm``).
    """
    import torch
    from tqdm.auto import tqdm

    if scale_nm is None:
        from proseflow.flow.checkpoint import model_scale_nm

        scale_nm = model_scale_nm(model)

    from proseflow.flow.preprocess import preprocess_train
    from proseflow.samplers.proposals import side_chains_of, system_batch
    from proseflow.samplers.resampling import finite_stat

    g = torch.Generator().manual_seed(config.seed)
    data = torch.as_tensor(np.asarray(md_positions_nm), dtype=torch.float32)  # as the model was trained on
    n_atoms = data.shape[1]
    dims = 3 * n_atoms
    sample_batch = system_batch(topology, config.batch_size, device, side_chains=side_chains_of(model))
    data_batch = system_batch(topology, config.data_batch_size, device, side_chains=side_chains_of(model))
    mask_cpu = torch.ones(config.data_batch_size, n_atoms, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    rows, window, t0 = [], [], time.time()
    model.train()
    for step in tqdm(range(1, config.steps + 1), desc="energy-KL fine-tuning", disable=not progress, mininterval=30):
        loss = torch.zeros((), dtype=torch.float64)
        kl = u_med = None
        if config.kl_weight > 0:
            u, log_q = reverse_kl_terms(model, sample_batch, energy, scale_nm, config.com_correction, g)
            finite = torch.isfinite(u) & torch.isfinite(log_q)
            if finite.any():
                kl_terms = soft_energy(u[finite], config.energy_soft_kT) + log_q[finite]
                kl = kl_terms.mean() / dims
                loss = loss + config.kl_weight * kl
                u_med = float(u[finite].detach().median())
        nll = None
        if config.nll_weight > 0:
            idx = torch.randint(len(data), (config.data_batch_size,), generator=g)
            x = preprocess_train(data[idx], mask_cpu, scale_nm, True, True, g).to(device)
            nll = model.nll_per_dim(x, data_batch).mean()
            loss = loss + config.nll_weight * nll.double()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if torch.isfinite(grad_norm):
            opt.step()
        window.append((float(kl.detach()) if kl is not None else math.nan,
                       float(nll.detach()) if nll is not None else math.nan,
                       u_med if u_med is not None else math.nan, float(grad_norm)))
        if step % config.log_every == 0 or step == config.steps:
            a = np.array(window)
            row = {"step": step, "kl_per_dim": finite_stat(a[:, 0]), "nll_per_dim": finite_stat(a[:, 1]),
                   "median_energy_kT": finite_stat(a[:, 2], np.median), "grad_norm": finite_stat(a[:, 3]),
                   "wall_s": round(time.time() - t0, 1)}
            rows.append(row)
            log.info("energy-KL step %d: %s", step, row)
            window.clear()
    model.eval()
    return rows
