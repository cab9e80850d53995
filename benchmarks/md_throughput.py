"""MD throughput: one system per OpenMM context vs batched non-interacting copies; energy API vs a loop.

Prints steps/s and ns/day per system for a dipeptide and a tetrapeptide, alone and as N copies in one
context (the way `simulate_batch` runs training MD), and the ratio; then energy evaluations per second of
the energy API (all cores) against a single-context loop. All baselines are measured in the same run.
    python benchmarks/md_throughput.py [--quick] [--copies 16] [--threads 2]
"""

import argparse
import os
import time

import numpy as np
import openmm
from openmm import unit

from proseflow.physics.energy import OpenMMEnergy
from proseflow.physics.md import combine_copies
from proseflow.physics.structures import build_peptide
from proseflow.physics.system import create_system


def steps_per_s(topology, positions, n_steps, threads):
    system = create_system(topology)
    integrator = openmm.LangevinMiddleIntegrator(310 * unit.kelvin, 0.3 / unit.picosecond, 1 * unit.femtosecond)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": str(threads)})
    ctx.setPositions(positions)
    ctx.setVelocitiesToTemperature(310 * unit.kelvin, 1)
    integrator.step(200)
    t0 = time.perf_counter()
    integrator.step(n_steps)
    return n_steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    n_steps = 2000 if args.quick else 10000
    print(f"CPU platform, {args.threads} threads, {n_steps} steps, 1 fs")
    print(f"{'system':10s} {'mode':>14s} {'steps/s':>10s} {'ns/day (all)':>14s} {'ratio':>7s}")
    for seq in ("AA", "RLMM"):
        top, pos = build_peptide(seq)
        single = steps_per_s(top, pos, n_steps, args.threads)
        ctop, cpos, _ = combine_copies([top] * args.copies, [pos] * args.copies, 2.0)
        batched = steps_per_s(ctop, cpos, max(200, n_steps // 4), args.threads) * args.copies
        for mode, rate in (("alone", single), (f"{args.copies} copies", batched)):
            print(f"{seq:10s} {mode:>14s} {rate:10.0f} {rate * 86400e-6:14.2f} {rate / single:7.2f}")

    n_eval = 200 if args.quick else 2000
    print(f"\nenergy evaluations ({n_eval} configurations)")
    for seq in ("AA", "RLMM"):
        top, pos = build_peptide(seq)
        x = pos[None] + 0.01 * np.random.default_rng(0).standard_normal((n_eval, *pos.shape))
        loop = OpenMMEnergy(top, 310.0, platform="CPU", n_workers=1)
        t0 = time.perf_counter()
        loop.energy_kT(x)
        r_loop = n_eval / (time.perf_counter() - t0)
        with OpenMMEnergy(top, 310.0, platform="CPU", n_workers=args.threads) as api:
            api.energy_kT(x[:200])  # start the workers
            t0 = time.perf_counter()
            api.energy_kT(x)
            r_api = n_eval / (time.perf_counter() - t0)
        print(f"{seq:10s} single-context loop {r_loop:8.0f}/s  energy API ({args.threads} workers) "
              f"{r_api:8.0f}/s  ratio {r_api / r_loop:5.2f}")


if __name__ == "__main__":
    main()
