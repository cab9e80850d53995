"""Self-improvement fine-tuning of a trained flow on one test system (PAPER.md section 4).

Each round: draw ``n_samples`` proposals from the current model -> energies -> SNIS weights -> multinomial
resampling -> ``steps`` fine-tuning steps on the resampled set. The fine-tuning loss per batch is

    mean(-log q(x) / 3N) + reg_weight * mean(((log q(x) - log q_initial(x)) / 3N)^2),

with x the training transform of resampled configurations (centred nm -> /scale -> random rotation -> centroid
shift N(0, I/N), exactly as in :func:`proseflow.flow.train.augment`), and both log densities evaluated on the same
augmented batch (q_initial: the frozen model before round 1). Both terms are per dimension (log q / 3N), as in
the authors' code, where the flow's log density is a per-dimension mean; on raw log q the paper's weight 0.5
would outweigh the NLL/3N by a factor of order (3N)^2 and freeze the model.

After the last round, ``n_final`` proposals from the fine-tuned model are SNIS-reweighted: the evaluation set.
``n_energy_evals`` counts every energy evaluation (all rounds + final): the budget the method spent.

Files in ``out_dir``: ``model.pt`` (rewritten after every round, the format of :func:`proseflow.flow.checkpoint.load_model`;
with ``keep_round_models`` also ``model_round{k}.pt``) and ``rounds.json`` (per-round metrics, rewritten after
every round).

Importing this module is light (no torch): :func:`add_parser` is called when the CLI parser is built, also in
environments without torch.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np

from proseflow.artefacts import save_json
from proseflow.samplers.config import SelfImproveConfig  # noqa: F401  (re-exported)

log = logging.getLogger("proseflow")


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def finetune_loss(model, initial, x, batch: dict, reg_weight: float):
    """(loss, nll, reg) of one augmented batch ``x`` (normalised flow coordinates); see the module doc."""
    import torch

    dims = 3 * batch["mask"].sum(dim=1)
    log_q = model.log_prob(x, batch)
    with torch.no_grad():
        log_q0 = initial.log_prob(x, batch)
    nll = (-log_q / dims).mean()
    reg = ((log_q - log_q0) / dims).pow(2).mean()
    return nll + reg_weight * reg, nll, reg


def finetune(model, initial, optimizer, positions_nm: np.ndarray, topology, config: SelfImproveConfig,
             scale_nm: float, seed: int, device) -> dict:
    """``config.steps`` steps on batches of ``positions_nm`` (centred nm), epochs of random permutations."""
    import torch

    from proseflow.data.features import canonical_hydrogen_labels, equivalent_hydrogen_groups
    from proseflow.flow.preprocess import preprocess_train
    from proseflow.samplers.proposals import side_chains_of, system_batch

    # the training stores' labelling of equivalent hydrogens (chirality-fixed samples are mirror images)
    positions_nm = canonical_hydrogen_labels(np.asarray(positions_nm), equivalent_hydrogen_groups(topology))
    data = torch.as_tensor(positions_nm, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    cond = system_batch(topology, config.batch_size, device, side_chains=side_chains_of(model))
    mask_cpu = torch.ones(config.batch_size, data.shape[1], dtype=torch.bool)
    order, pos, nlls, regs = torch.randperm(len(data), generator=g), 0, [], []
    model.train()
    for _ in range(config.steps):
        idx = []
        while len(idx) < config.batch_size:  # a batch may wrap into the next epoch
            take = order[pos : pos + config.batch_size - len(idx)]
            idx.extend(take.tolist())
            pos += len(take)
            if pos >= len(order):
                order, pos = torch.randperm(len(data), generator=g), 0
        x = preprocess_train(data[idx], mask_cpu, scale_nm, config.rotation, config.com_augment, g).to(device)
        loss, nll, reg = finetune_loss(model, initial, x, cond, config.reg_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if torch.isfinite(grad_norm):
            optimizer.step()
        nlls.append(float(nll.detach()))
        regs.append(float(reg.detach()))
    model.eval()
    return {"nll": float(np.mean(nlls)) if nlls else None, "reg": float(np.mean(regs)) if regs else None}


def _snis_set(model, topology, energy_api, n: int, config: SelfImproveConfig, scale_nm: float, seed: int,
              device, progress: bool):
    from proseflow.samplers.proposals import draw_proposals
    from proseflow.samplers.snis import snis

    p = draw_proposals(model, topology, n, batch_size=config.sample_batch_size, prior_std=config.prior_std,
                       scale_nm=scale_nm, com_correction=config.com_correction, seed=seed, device=device,
                       progress=progress)
    e_kT = np.asarray(energy_api.energy_kT(p.positions_nm), dtype=np.float64)
    r = snis(-e_kT, p.log_q, drop_top_fraction=config.drop_top_fraction, rng=seed, valid=p.chirality_ok)
    return p, e_kT, r


def _base_meta(model, scale_nm: float) -> dict:
    from proseflow.flow.checkpoint import feature_vocabulary

    meta = dict(getattr(model, "meta", None) or {})
    meta.setdefault("flow_config", model.config.to_dict())
    meta.setdefault("features", feature_vocabulary())
    meta.setdefault("scale_nm", scale_nm)
    return meta


def self_improve(model, topology, energy_api, config: SelfImproveConfig, out_dir, seed: int = 0,
                 device="cpu", progress: bool = True) -> dict:
    """Fine-tune a copy of ``model`` in ``config.n_rounds`` rounds, then draw and reweight the final set.

    Returns {"model": the fine-tuned model (eval mode), "rounds": per-round metrics, "final": the arrays of the
    sampler's .npz (``cmd_snis`` layout plus round_ess, round_n_energy_evals, chirality counts)}.
    """
    import torch

    from proseflow.flow.checkpoint import model_scale_nm, save_model

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale_nm = model_scale_nm(model)
    meta = _base_meta(model, scale_nm)
    initial = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    model = copy.deepcopy(model).to(device).eval().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    rounds, n_evals = [], 0
    for k in range(1, config.n_rounds + 1):
        t_round = time.time()
        p, e_kT, r = _snis_set(model, topology, energy_api, config.n_samples, config, scale_nm, _seed(seed, k, 0),
                               device, progress)
        n_evals += len(e_kT)
        row = {"round": k, "ess": r.ess, "n_energy_evals": n_evals, "n_nonfinite": r.n_nonfinite,
               "n_dropped": r.n_dropped, "n_unique_resampled": int(len(np.unique(r.indices))),
               "n_chirality_fixed": p.n_chirality_fixed, "nll": None, "reg": None}
        if len(r.indices):
            row.update(finetune(model, initial, optimizer, p.positions_nm[r.indices], topology, config, scale_nm,
                                _seed(seed, k, 1), device))
        else:
            log.warning("round %d: no finite importance weight; model not fine-tuned", k)
        row["wall_time_s"] = time.time() - t_round
        rounds.append(row)
        round_meta = {**meta, "self_improve": {"round": k, "config": config.to_dict(), "seed": seed}}
        save_model(model, out / "model.pt", round_meta)
        if config.keep_round_models:
            save_model(model, out / f"model_round{k}.pt", round_meta)
        save_json(out / "rounds.json", rounds)
        log.info("self-improvement round %d/%d: ESS %.4f (%d energy evaluations so far), nll %s, reg %s",
                 k, config.n_rounds, r.ess, n_evals, row["nll"], row["reg"])

    p, e_kT, r = _snis_set(model, topology, energy_api, config.n_final, config, scale_nm, _seed(seed, 0, 2),
                           device, progress)
    n_evals += len(e_kT)
    final = {
        "positions_nm": p.positions_nm, "log_q": p.log_q, "energy_kT": e_kT, "log_weights": r.log_weights,
        "resampled_indices": r.indices, "ess": r.ess, "n_distinct": r.n_distinct, "n_nonfinite": r.n_nonfinite,
        "n_dropped": r.n_dropped,
        "n_energy_evals": n_evals, "temperature_K": float(getattr(energy_api, "temperature_K", np.nan)),
        "wall_time_s": time.time() - t0,
        "round_ess": np.array([row["ess"] for row in rounds], dtype=np.float64),
        "round_n_energy_evals": np.array([row["n_energy_evals"] for row in rounds], dtype=np.int64),
        "n_chirality_fixed": p.n_chirality_fixed, "n_chirality_unfixable": p.n_chirality_unfixable,
        "settings": json.dumps(config.to_dict()),
    }  # fmt: skip
    log.info("self-improvement: final ESS %.4f over %d proposals, %d energy evaluations in all, %.1f s", r.ess,
             len(e_kT), n_evals, final["wall_time_s"])
    return {"model": model.requires_grad_(False), "rounds": rounds, "final": final}
