"""Sampler cost: energy evaluations per second and wall time per 1e4 particles, as ratios against SNIS.

One run, one system, one (untrained, tiny) flow: SNIS (proposals + energies), SMC with ULA and MALA moves
(annealing levels as in config.yaml), each with the torch energy backend; the energy backends alone too.
    python benchmarks/sampler_cost.py [--quick] [--sequence AA] [--n 10000]
"""

import argparse
import time

import torch

from proseflow.flow.model import ProseFlow
from proseflow.flow.train import TrainConfig, flow_config
from proseflow.physics.energy import make_energy
from proseflow.physics.structures import build_peptide
from proseflow.samplers.proposals import draw_proposals, run_smc
from proseflow.samplers.snis import snis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sequence", default="AA")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--levels-ula", type=int, default=100)
    ap.add_argument("--levels-mala", type=int, default=50)
    args = ap.parse_args()
    if args.quick:
        args.n, args.levels_ula, args.levels_mala = 500, 10, 5
    torch.manual_seed(0)
    top, _ = build_peptide(args.sequence)
    model = ProseFlow(flow_config(TrainConfig(model_preset="tiny"))).eval()
    energy = make_energy(top, 310.0, backend="torch")
    scale = 1e4 / args.n
    rows = []

    t0 = time.perf_counter()
    prop = draw_proposals(model, top, args.n, batch_size=1000, progress=False)
    e = energy.energy_kT(prop.positions_nm)
    snis(-e, prop.log_q, rng=0)
    rows.append(("snis", time.perf_counter() - t0, args.n))

    for kernel, levels in (("ula", args.levels_ula), ("mala", args.levels_mala)):
        t0 = time.perf_counter()
        result, *_ = run_smc(model, top, energy, args.n, kernel, seed=0, n_levels=levels, step_size=1e-5)
        rows.append((f"smc_{kernel}", time.perf_counter() - t0, result.n_energy_evals))

    x = prop.positions_nm[: min(args.n, 2000)]
    for name, backend in (("energies torch", energy), ("energies openmm (all cores)", make_energy(top, 310.0))):
        backend.energy_and_forces_kT(x[:256])  # warm up (worker processes start, allocations)
        t0 = time.perf_counter()
        backend.energy_and_forces_kT(x)
        rows.append((name, (time.perf_counter() - t0) * args.n / len(x), args.n))

    base = rows[0][1]
    print(f"{args.sequence}: {args.n} particles (times scaled to 1e4 particles), untrained tiny flow, CPU")
    print(f"{'sampler':30s} {'wall s / 1e4':>13s} {'energy evals':>13s} {'evals/s':>10s} {'x SNIS time':>12s}")
    for name, wall, evals in rows:
        print(f"{name:30s} {wall * scale:13.2f} {evals:13d} {evals / wall:10.0f} {wall / base:12.2f}")


if __name__ == "__main__":
    main()
