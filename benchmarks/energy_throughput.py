"""Energy throughput: OpenMM one context one sample at a time vs the PyTorch backend (and the energy API).

Prints evaluations/s (energy) and evaluations+forces/s for B = 1e2, 1e3, 1e4 samples of a dipeptide,
tetrapeptide and octapeptide (minimised structure + 0.01 nm noise), with the ratio to the OpenMM loop:
  (a) OpenMM, one CPU-platform context, ``setPositions`` + ``getState`` per sample (the baseline);
  (b) PyTorch ``TorchEnergy`` in float64 and float32, eager and ``compile=True``;
  (c) ``proseflow.physics.energy.OpenMMEnergy`` (OpenMM on all cores), when that module provides it.
The loop rate does not depend on B, so (a) is timed on at most ``--loop-samples`` samples.
    python benchmarks/energy_throughput.py [--quick] [--compile | --no-compile] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import openmm
import torch
from openmm import unit

from proseflow.physics.energy_torch import TorchEnergy
from proseflow.physics.structures import build_peptide
from proseflow.physics.system import create_system

TEMPERATURE_K = 310.0
SEQUENCES = {"dipeptide": "GY", "tetrapeptide": "GYDP", "octapeptide": "GYDPETGT"}


def openmm_loop_rates(system, frames_nm, threads) -> tuple[float, float]:
    """(a): evaluations/s without and with forces, one context, one sample at a time."""
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, {"Threads": str(threads)})
    rates = []
    for forces in (False, True):
        context.setPositions(frames_nm[0])
        context.getState(getEnergy=True, getForces=forces)
        start = time.perf_counter()
        for x in frames_nm:
            context.setPositions(x)
            state = context.getState(getEnergy=True, getForces=forces)
            state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if forces:
                state.getForces(asNumpy=True)
        rates.append(len(frames_nm) / (time.perf_counter() - start))
    return rates[0], rates[1]


def timed_rates(energy_kT, energy_and_forces_kT, frames_nm) -> tuple[float, float, np.ndarray]:
    """Evaluations/s of a batch evaluator (after warm-up calls: compilation, worker pools), and its energies."""
    energy_kT(frames_nm[:256])
    energy_and_forces_kT(frames_nm[:256])
    start = time.perf_counter()
    energies = np.asarray(energy_kT(frames_nm))
    middle = time.perf_counter()
    energy_and_forces_kT(frames_nm)
    end = time.perf_counter()
    return len(frames_nm) / (middle - start), len(frames_nm) / (end - middle), energies


def torch_evaluator(model: TorchEnergy):
    def energy_kT(x):
        with torch.no_grad():
            return model.energy_kT(x).cpu().numpy()

    return energy_kT, model.energy_and_forces_kT


def openmm_energy_api(system):
    """(c) if ``proseflow.physics.energy.OpenMMEnergy`` exists (the lead's multi-core evaluator), else None."""
    try:
        from proseflow.physics.energy import OpenMMEnergy
    except ImportError:  # hook: (c) is skipped until proseflow.physics.energy provides OpenMMEnergy
        return None
    return OpenMMEnergy(system, TEMPERATURE_K, platform="CPU")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B = 100 and 1000 only, no compiled variants")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include torch.compile variants (default: on, off with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for OpenMM (a) and torch (b)")
    parser.add_argument("--loop-samples", type=int, default=1000)
    parser.add_argument("--no-api", action="store_true", help="skip (c)")
    args = parser.parse_args()
    use_compile = (not args.quick) if args.compile is None else args.compile
    batch_sizes = (100, 1000) if args.quick else (100, 1000, 10000)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"threads={args.threads} torch device={device} cores={len(os.sched_getaffinity(0))} "
          f"torch {torch.__version__} openmm {openmm.__version__}")
    print(f"{'system':13s} {'N':>4s} {'B':>6s} {'evaluator':22s} {'eval/s':>10s} {'x(a)':>7s} "
          f"{'eval+F/s':>10s} {'x(a)':>7s}  max|dE| (kT) vs eager float64")
    rng = np.random.default_rng(0)
    for label, sequence in SEQUENCES.items():
        topology, minimised_nm = build_peptide(sequence)
        system = create_system(topology)
        n_atoms = len(minimised_nm)
        all_frames = minimised_nm + 0.01 * rng.standard_normal((max(batch_sizes), n_atoms, 3))
        loop_e, loop_ef = openmm_loop_rates(system, all_frames[: args.loop_samples], args.threads)
        variants = {f"torch {d}{' compiled' if c else ''}": (d, c) for c in ([False, True] if use_compile else [False])
                    for d in ("float64", "float32")}
        models = {name: TorchEnergy(system, TEMPERATURE_K, dtype=getattr(torch, d), device=device, compile=c)
                  for name, (d, c) in variants.items()}
        api = None if args.no_api else openmm_energy_api(system)
        def row(b, name, e_rate, ef_rate, rel_error="", label=label, n_atoms=n_atoms, loop=(loop_e, loop_ef)):
            print(f"{label:13s} {n_atoms:4d} {b:6d} {name:22s} {e_rate:10.0f} {e_rate / loop[0]:7.1f} "
                  f"{ef_rate:10.0f} {ef_rate / loop[1]:7.1f}  {rel_error}", flush=True)

        for b in batch_sizes:
            frames = all_frames[:b]
            row(b, "(a) openmm loop", loop_e, loop_ef)
            reference = None
            for name, model in models.items():
                e_rate, ef_rate, energies = timed_rates(*torch_evaluator(model), torch.as_tensor(frames))
                reference = energies if reference is None else reference
                row(b, "(b) " + name, e_rate, ef_rate, f"{np.max(np.abs(energies - reference)):.1e}")
            if api is not None:
                e_rate, ef_rate, _ = timed_rates(api.energy_kT, api.energy_and_forces_kT, frames)
                row(b, f"(c) OpenMMEnergy x{api.n_workers}", e_rate, ef_rate)
        if api is not None:
            api.close()


if __name__ == "__main__":
    main()
