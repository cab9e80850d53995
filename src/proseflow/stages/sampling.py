"""Sampling stages: proposals with exact log q, SNIS, SMC, self-improvement, sample sets as trajectories.

Declared as every stage is (:mod:`proseflow.stages`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from proseflow import typed
from proseflow.samplers.config import SMC_KERNELS, SelfImproveConfig, SMCConfig
from proseflow.samplers.prior import prior_std_for
from proseflow.stages import settings as S
from proseflow.stages._files import Files
from proseflow.stages.settings import ConfigError, Stage, StageSettings, _temperature, model_overlay, register

log = logging.getLogger("proseflow")


# ------------------------------------------------------------------------------------------ settings
@dataclass
class SampleSettings(StageSettings):
    """Proposals x ~ q with exact log q."""

    stage: ClassVar[str] = "sample"
    n_proposals: int
    batch_size: int
    com_correction: str
    seed: int
    prior_std: float = 1.0  # sampling.prior_std x the condition's factor (scaled prior: sqrt(T / T_train))
    device: str = "auto"


@dataclass
class SnisSettings(StageSettings):
    stage: ClassVar[str] = "snis"
    temperature_K: float  # the config's MD temperature or a target temperature (condition)
    energy_backend: str
    drop_top_fraction: float
    seed: int


@dataclass
class SmcSettings(StageSettings):
    stage: ClassVar[str] = "smc"
    kernel: str  # condition: ula or mala
    n_particles: int
    smc: SMCConfig  # the kernel's SMCConfig: its defaults (SMCConfig.for_kernel) with smc.<kernel> over them
    temperature_K: float
    energy_backend: str
    batch_size: int
    seed: int
    prior_std: float = 1.0  # sampling.prior_std: the latent std of the flow samples SMC starts from
    device: str = "auto"


@dataclass
class SelfImproveSettings(StageSettings):
    stage: ClassVar[str] = "self_improve"
    improve: SelfImproveConfig  # sampling's values (proposals, batch, COM correction, drop, prior) and self_improve
    temperature_K: float
    energy_backend: str
    seed: int
    device: str = "auto"


@dataclass
class ExportSettings(StageSettings):
    """A sample set written as a trajectory (proseflow.samplers.export): nothing to set, the files say it all."""

    stage: ClassVar[str] = "export"


# ------------------------------------------------------------------------------------------ builders
def _sample(config, temperature_K=None, prior="plain", model=None):
    config = model_overlay(config, model)
    sp = config["sampling"]
    return SampleSettings(n_proposals=sp["n_proposals"], batch_size=sp["batch_size"],
                          com_correction=sp["com_correction"], seed=sp["seed"],
                          # sampling.prior_std (a reduced prior temperature, exact IS) times the condition's factor
                          prior_std=sp.get("prior_std", 1.0) * prior_std_for(
                              _temperature(config, temperature_K), config["md"]["temperature_K"], prior))


def _snis(config, temperature_K=None, model=None):
    config = model_overlay(config, model)
    sp = config["sampling"]
    return SnisSettings(temperature_K=_temperature(config, temperature_K), energy_backend=sp["energy_backend"],
                        drop_top_fraction=sp["drop_top_fraction"], seed=sp["seed"])


def _smc(config, kernel, model=None):
    config = model_overlay(config, model)
    if kernel not in SMC_KERNELS:
        raise ConfigError(f"SMC kernel must be one of {', '.join(SMC_KERNELS)}, got {kernel!r}")
    sp = config["sampling"]
    # sampling.drop_top_fraction reaches SMC's filter too, unless smc.<kernel> sets its own
    smc = {"drop_top_fraction": sp["drop_top_fraction"], **copy.deepcopy(dict(config["smc"].get(kernel, {})))}
    try:
        smc = SMCConfig.for_kernel(kernel, **smc)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"smc.{kernel}: {e}") from None
    return SmcSettings(kernel=kernel, n_particles=config["smc"]["n_particles"], smc=smc,
                       temperature_K=_temperature(config, None), energy_backend=sp["energy_backend"],
                       batch_size=sp["batch_size"], seed=sp["seed"], prior_std=sp.get("prior_std", 1.0))


def _self_improve(config, model=None):
    config = model_overlay(config, model)
    sp = config["sampling"]
    improve = {"n_final": sp["n_proposals"], "sample_batch_size": sp["batch_size"],
               "com_correction": sp["com_correction"], "drop_top_fraction": sp["drop_top_fraction"],
               "prior_std": sp.get("prior_std", 1.0),
               **copy.deepcopy(dict(config["self_improve"]))}
    return SelfImproveSettings(improve=typed.build(SelfImproveConfig, improve, "self_improve"), temperature_K=_temperature(config, None),
                               energy_backend=sp["energy_backend"], seed=sp["seed"])


def _export(config):
    return ExportSettings()


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ runners
def run_sample(s: S.SampleSettings, inputs: Files, outputs: Files) -> None:
    """Proposals x ~ q for one system: positions (nm), exact log q, chirality statistics."""
    from proseflow.artefacts import save_npz
    from proseflow.flow.checkpoint import load_model, model_scale_nm
    from proseflow.physics.structures import load_pdb
    from proseflow.samplers.proposals import draw_proposals

    device = _device(s.device)
    model_path = inputs.one("model")
    model = load_model(model_path, device)
    topology, _ = load_pdb(inputs.one("structure"))
    p = draw_proposals(model, topology, s.n_proposals, batch_size=s.batch_size, prior_std=s.prior_std,
                       scale_nm=model_scale_nm(model), com_correction=s.com_correction,
                       seed=s.seed, device=device)
    save_npz(outputs.one("proposals"), positions_nm=p.positions_nm, log_q=p.log_q, chirality_ok=p.chirality_ok,
             n_chirality_fixed=p.n_chirality_fixed, n_chirality_unfixable=p.n_chirality_unfixable,
             wall_time_s=p.wall_time_s, prior_std=s.prior_std, model=str(model_path),
             device=str(device), com_correction=s.com_correction,
             centroid_flow=p.x_flow.astype("float64").mean(axis=1))  # for the other COM correction's ESS
    log.info("%d proposals in %.1f s; chirality fixed %d, unfixable %d", s.n_proposals, p.wall_time_s,
             p.n_chirality_fixed, p.n_chirality_unfixable)


def run_snis(s: S.SnisSettings, inputs: Files, outputs: Files) -> None:
    """Energies of the proposals and self-normalised importance weights."""
    import numpy as np

    from proseflow.physics.energy import make_energy
    from proseflow.physics.structures import load_pdb
    from proseflow.samplers.sample_set import SampleSet
    from proseflow.samplers.snis import snis

    t0 = time.time()
    prop = np.load(inputs.one("proposals"))
    topology, _ = load_pdb(inputs.one("structure"))
    energy = make_energy(topology, s.temperature_K, backend=s.energy_backend)
    e_kT = energy.energy_kT(prop["positions_nm"])
    log_q = prop["log_q"]
    # a chirality no mirror fixes is outside the all-L target's support: weight zero (counted)
    r = snis(-e_kT, log_q, drop_top_fraction=s.drop_top_fraction, rng=s.seed, valid=prop["chirality_ok"])
    SampleSet(positions_nm=prop["positions_nm"], energy_kT=e_kT, log_weights=r.log_weights, ess=r.ess,
              n_distinct=r.n_distinct, n_energy_evals=len(e_kT), temperature_K=s.temperature_K,
              wall_time_s=time.time() - t0 + float(prop["wall_time_s"]),
              extras={"log_q": log_q, "resampled_indices": r.indices, "n_nonfinite": r.n_nonfinite,
                      "n_dropped": r.n_dropped, "n_chirality_zero_weight": r.n_invalid,
                      "drop_top_fraction": s.drop_top_fraction}).save(outputs.one("snis"))
    log.info("SNIS: ESS %.4f over %d proposals (%d non-finite, %d dropped)", r.ess, len(e_kT), r.n_nonfinite,
             r.n_dropped)


def run_smc(s: S.SmcSettings, inputs: Files, outputs: Files) -> None:
    """SMC with the flow as proposal (ULA or MALA moves), forces from the energy API."""
    import numpy as np

    from proseflow.flow.checkpoint import load_model, model_scale_nm
    from proseflow.physics.energy import make_energy
    from proseflow.physics.structures import load_pdb
    from proseflow.samplers import proposals as sampling
    from proseflow.samplers.sample_set import SampleSet

    t0 = time.time()
    device = _device(s.device)
    model = load_model(inputs.one("model"), device)
    topology, _ = load_pdb(inputs.one("structure"))
    energy = make_energy(topology, s.temperature_K, backend=s.energy_backend)
    result, positions, e_kT, n_fixed, n_unfixable, ok = sampling.run_smc(
        model, topology, energy, s.n_particles, s.kernel, seed=s.seed, scale_nm=model_scale_nm(model),
        batch_size=s.batch_size, device=device, prior_std=s.prior_std, config=s.smc)
    SampleSet(positions_nm=positions, energy_kT=e_kT, log_weights=result.log_weights,
              ess=result.final_ess_pre_resampling, n_distinct=result.n_distinct,
              n_energy_evals=result.n_energy_evals, temperature_K=s.temperature_K, wall_time_s=time.time() - t0,
              extras={"ess_trace": np.asarray(result.ess), "min_ess": result.min_ess,
                      "cess_trace": np.asarray(result.cess), "resampled": np.asarray(result.resampled),
                      "n_distinct_ancestors": result.n_distinct_ancestors,
                      "step_size_units": sampling.STEP_SIZE_UNITS,
                      "n_dropped_top_weight": result.info["n_dropped_top_weight"],
                      "n_dropped_high_energy": result.info["n_dropped_high_energy"],
                      "acceptance": np.asarray(result.acceptance, dtype=float),
                      "step_sizes": np.asarray(result.step_sizes), "t_schedule": np.asarray(result.t_schedule),
                      "n_flow_evals": result.n_proposal_evals, "n_chirality_fixed": n_fixed,
                      "n_chirality_unfixable": n_unfixable, "kernel": s.kernel}).save(outputs.one("samples"))
    log.info("SMC-%s: %d particles, final ESS before resampling %.4f (min %.4f), %d distinct (from %d proposals; "
             "%d + %d dropped before SMC), %d energy evaluations, %.1f s", s.kernel, s.n_particles,
             result.final_ess_pre_resampling, result.min_ess, result.n_distinct, result.n_distinct_ancestors,
             result.info["n_dropped_top_weight"], result.info["n_dropped_high_energy"], result.n_energy_evals,
             time.time() - t0)


def run_self_improve(s: S.SelfImproveSettings, inputs: Files, outputs: Files) -> None:
    """Self-improvement of one system: fine-tuned model (and rounds.json) beside outputs.model, final SNIS set."""
    from proseflow.flow.checkpoint import load_model
    from proseflow.physics.energy import make_energy
    from proseflow.physics.structures import load_pdb
    from proseflow.samplers.sample_set import SampleSet
    from proseflow.samplers.self_improve import self_improve

    device = _device(s.device)
    config = s.improve
    model_path = inputs.one("model")
    model = load_model(model_path, device)
    topology, _ = load_pdb(inputs.one("structure"))
    energy = make_energy(topology, s.temperature_K, backend=s.energy_backend)
    try:
        result = self_improve(model, topology, energy, config, Path(outputs.one("model")).parent, seed=s.seed,
                              device=device)
    finally:
        close = getattr(energy, "close", None)
        if close is not None:
            close()
    final = {**result["final"], "temperature_K": s.temperature_K}
    required = {k: final.pop(k) for k in SampleSet.REQUIRED}
    SampleSet(**required, extras={**final, "model": str(model_path), "device": str(device),
                                  "com_correction": config.com_correction}).save(outputs.one("samples"))


def run_export(s: S.ExportSettings, inputs: Files, outputs: Files) -> None:
    """A final sample set as a trajectory molecular viewers open: XTC, topology PDB, weights and energies CSV."""
    from proseflow.samplers.export import export_sample_set

    n = export_sample_set(inputs.one("samples"), inputs.one("structure"), outputs.one("xtc"), outputs.one("pdb"),
                          outputs.one("csv"))
    log.info("%s: %d frames -> %s", inputs.one("samples"), n, outputs.one("xtc"))


register(
    Stage("sample", SampleSettings, _sample, run_sample, conditions=("prior_std",),
          defaults={"device": "auto: CUDA when present"}),
    Stage("snis", SnisSettings, _snis, run_snis),
    Stage("smc", SmcSettings, _smc, run_smc, conditions=("kernel",), defaults={"device": "auto: CUDA when present"}),
    Stage("self_improve", SelfImproveSettings, _self_improve, run_self_improve,
          defaults={"device": "auto: CUDA when present"}),
    Stage("export", ExportSettings, _export, run_export),
)
