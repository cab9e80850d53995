"""Proposal sampling from a trained flow and the flow-as-proposal adapters the samplers use.

Conventions: the flow lives in normalised, uncentred coordinates x (nm / scale, centroid c = mean of the
real atoms); a sample's configuration is its centred form in nm, ``to_nm(x)``. ``log_q`` of a sample is
the density of that centred configuration in nm (:func:`proseflow.flow.preprocess.proposal_log_prob_nm`,
with the paper's centre-of-mass correction by default).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from proseflow.data.features import pad_permutations, system_features
from proseflow.flow.preprocess import (
    SCALE_NM,
    proposal_log_prob_nm,
    to_nm,
)
from proseflow.physics.chirality import chiral_centres, fix_chirality, handedness

log = logging.getLogger(__name__)

# SMC runs in the flow's coordinates, so its step sizes h are in these units (h_nm2 = h * scale_nm**2)
STEP_SIZE_UNITS = "normalised flow coordinates squared ((nm / scale_nm)^2, scale_nm: the model file's scale)"


def side_chains_of(model) -> str:
    """The side-chain orders a model's permutations use (FlowConfig.side_chains; imported released models differ)."""
    return getattr(getattr(model, "config", None), "side_chains", "proseflow")


def system_batch(topology_or_sequence, n: int, device="cpu", n_max: int | None = None,
                 side_chains: str = "proseflow") -> dict:
    """A batch of ``n`` copies of one system's conditioning (the loader's batch layout, without x), with the
    permutations of ``side_chains`` (:func:`side_chains_of` the model that will read it)."""
    f = system_features(topology_or_sequence, side_chains)
    n_real = len(f["atom_type"])
    n_max = n_real if n_max is None else n_max

    def padded(a):
        out = np.zeros(n_max, dtype=np.int64)
        out[:n_real] = a
        return torch.from_numpy(out)[None].expand(n, -1).contiguous().to(device)

    mask = torch.zeros(n, n_max, dtype=torch.bool, device=device)
    mask[:, :n_real] = True
    perms = torch.from_numpy(pad_permutations(f["permutations"], n_max))[None].expand(n, -1, -1).contiguous()
    return {
        "mask": mask,
        "atom_type": padded(f["atom_type"]),
        "residue_type": padded(f["residue_type"]),
        "residue_index": padded(f["residue_index"]),
        "chain_length": torch.full((n,), f["chain_length"], dtype=torch.int64, device=device),
        "permutations": perms.to(device),
    }


def first_rows(batch: dict, n: int) -> dict:
    """The first ``n`` rows of a batch (conditioning is computed once, then sliced per chunk)."""
    return {k: v[:n] for k, v in batch.items()}


def check_fits_model(model, topology_or_sequence) -> int:
    """Number of atoms; a clear error if the system is larger than the model accepts."""
    n = len(system_features(topology_or_sequence)["atom_type"])
    max_atoms = getattr(model.config, "max_atoms", None)
    if max_atoms is not None and n > max_atoms:
        raise ValueError(f"system {topology_or_sequence!r} has {n} atoms, more than the model's max_atoms={max_atoms}")
    return n


@dataclass
class Proposals:
    positions_nm: np.ndarray  # [n, N, 3] float32, centred, chirality-fixed
    log_q: np.ndarray  # [n] float64, density of the centred configuration in nm
    x_flow: np.ndarray  # [n, N, 3] float32, the raw flow sample (normalised, uncentred)
    n_chirality_fixed: int
    n_chirality_unfixable: int
    chirality_ok: np.ndarray  # [n] bool
    wall_time_s: float


@torch.no_grad()
def draw_proposals(model, topology, n: int, batch_size: int = 1024, prior_std: float = 1.0,
                   scale_nm: float = SCALE_NM, com_correction: str = "chi", seed: int = 0,
                   device: str | torch.device = "cpu", progress: bool = True) -> Proposals:
    """``n`` proposals with exact log q, batched; wrong-handed samples are mirrored (log q is unchanged:
    mirroring is an isometry, and the mirrored sample is what the samplers use)."""
    check_fits_model(model, topology)
    t0 = time.time()
    generator = torch.Generator(device=device).manual_seed(int(seed))
    xs, log_qs, flows = [], [], []
    full = system_batch(topology, min(batch_size, n), device, side_chains=side_chains_of(model))
    for start in tqdm(range(0, n, batch_size), desc="proposals", unit="batch", disable=not progress):
        batch = first_rows(full, min(batch_size, n - start))
        x, log_q, used = model.sample(batch, prior_std=prior_std, generator=generator)
        mask = used["mask"]
        xs.append(to_nm(x, mask, scale_nm).cpu().numpy().astype(np.float32))
        log_qs.append(proposal_log_prob_nm(log_q.double(), x.double(), mask, scale_nm, com_correction).cpu().numpy())
        flows.append(x.cpu().numpy().astype(np.float32))
    positions = np.concatenate(xs)
    fixed, n_fixed, n_unfixable, ok = fix_chirality(positions, topology)
    return Proposals(positions_nm=np.asarray(fixed, dtype=np.float32), log_q=np.concatenate(log_qs),
                     x_flow=np.concatenate(flows), n_chirality_fixed=int(n_fixed),
                     n_chirality_unfixable=int(n_unfixable), chirality_ok=np.asarray(ok),
                     wall_time_s=time.time() - t0)


class FlowExtendedEnergy:
    """E_q(x) = -log q(x) in the flow's own coordinates (normalised, uncentred), with forces.

    SMC runs in the flow's coordinates on the extended space (centred configuration y, centroid c), where
    the proposal is the flow q(x) (with latent std ``prior_std``) and the target is pi(y) h(c) with
    h = N(0, I/N) (the training augmentation, :class:`TargetExtendedEnergy`): both are normalised densities
    of x, so the path exp(-E_t) starts at the proposal itself and Langevin moves need no special treatment of
    the centroid.
    """

    def __init__(self, model, topology, device="cpu", chunk_size: int = 256, prior_std: float = 1.0):
        self.model, self.device, self.chunk_size, self.prior_std = model, device, chunk_size, prior_std
        self.batch = system_batch(topology, chunk_size, device, side_chains=side_chains_of(model))

    def energy_and_forces(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        es, fs = [], []
        for start in range(0, len(x), self.chunk_size):
            xb = torch.tensor(x[start : start + self.chunk_size], dtype=torch.float32, device=self.device)
            xb.requires_grad_(True)
            batch = first_rows(self.batch, len(xb))
            e = -self.model.log_prob(xb, batch, prior_std=self.prior_std)
            (grad,) = torch.autograd.grad(e.sum(), xb)
            es.append(e.detach().double().cpu().numpy())
            fs.append(-grad.double().cpu().numpy())
        return np.concatenate(es), np.concatenate(fs)


class TargetExtendedEnergy:
    """E(x) = E_MD(to_nm(x)) / kT - log h(c), h = N(0, I/N): the extended target in flow coordinates.

    With ``topology``, a configuration whose chiral centres have mixed handedness (no mirror makes it all-L)
    is outside the all-L target's support: energy +inf, so SMC gives it weight zero and MALA rejects moves
    into it (a wholly mirrored configuration is kept: the force field is achiral and it is mirrored at the end).
    """

    def __init__(self, energy_api, scale_nm: float = SCALE_NM, topology=None):
        self.energy, self.scale = energy_api, scale_nm
        self.centres = None if topology is None else chiral_centres(topology)

    def energy_and_forces(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[1]
        c = x.mean(axis=1, keepdims=True)
        y_nm = ((x - c) * self.scale).astype(np.float64)
        e_kT, f_kT_per_nm = self.energy.energy_and_forces_kT(y_nm)
        if self.centres is not None:
            hand = handedness(y_nm, self.centres)
            mixed = ~(np.all(hand == 1, axis=1) | np.all(hand == -1, axis=1))
            e_kT = np.where(mixed, np.inf, e_kT)
        # -log h(c) = N |c|^2 / 2 + const; d/dx_i of it is c (dc/dx_i = 1/N)
        e = e_kT + 0.5 * n * (c[:, 0] ** 2).sum(-1) - 1.5 * math.log(n / (2 * math.pi))
        f = f_kT_per_nm * self.scale - c
        bad = ~np.isfinite(e)
        f[bad] = 0.0
        return e, f


def flow_to_nm(x: np.ndarray, scale_nm: float = SCALE_NM) -> np.ndarray:
    """Centred configuration in nm of flow-coordinate samples ``[B, N, 3]`` (no padding)."""
    return ((x - x.mean(axis=1, keepdims=True)) * scale_nm).astype(np.float32)


def run_smc(model, topology, energy_api, n_particles: int, kernel: str, seed: int = 0, scale_nm: float = SCALE_NM,
            batch_size: int = 1024, device="cpu", prior_std: float = 1.0, config=None, **smc_overrides):
    """SMC from the flow (PAPER.md section 4) in the flow's extended coordinates; returns (result, positions_nm,
    energy_kT, n_fixed, n_unfixable, ok). The initial particles are flow samples with latent std ``prior_std``
    (the proposal the path starts from). Final particles are equally weighted; the force field is achiral, so
    wrong-handed final particles are mirrored like proposals."""
    from proseflow.samplers.smc import SMCConfig, smc

    check_fits_model(model, topology)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    xs, log_qs = [], []
    full = system_batch(topology, min(batch_size, n_particles), device, side_chains=side_chains_of(model))
    with torch.no_grad():
        for start in range(0, n_particles, batch_size):
            batch = first_rows(full, min(batch_size, n_particles - start))
            x, log_q, _ = model.sample(batch, prior_std=prior_std, generator=generator)
            xs.append(x.double().cpu().numpy())
            log_qs.append(log_q.double().cpu().numpy())  # the flow density over all 3N coordinates
    x0, log_q0 = np.concatenate(xs), np.concatenate(log_qs)
    if config is None:  # the kernel's settings (SMCConfig.for_kernel) with the overrides over them
        config = SMCConfig.for_kernel(kernel, **smc_overrides)
    elif smc_overrides:
        raise ValueError(f"give an SMCConfig or overrides, not both (got {sorted(smc_overrides)})")
    result = smc(x0, log_q0, FlowExtendedEnergy(model, topology, device, prior_std=prior_std),
                 TargetExtendedEnergy(energy_api, scale_nm, topology), config, np.random.default_rng(seed))
    n = x0.shape[1]
    c = result.x.mean(axis=1)
    energy_kT = result.target_energy - 0.5 * n * (c**2).sum(-1) + 1.5 * math.log(n / (2 * math.pi))
    positions, n_fixed, n_unfixable, ok = fix_chirality(flow_to_nm(result.x, scale_nm), topology)
    return result, np.asarray(positions, dtype=np.float32), energy_kT, n_fixed, n_unfixable, ok
