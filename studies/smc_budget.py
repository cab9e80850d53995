"""Samplers against the number of energy evaluations on one system (issue 20): SNIS, the paper's SMC (ULA 100
levels, MALA 50 levels, one step each), adaptive MALA, and MD with the same number of evaluations, each scored
against the reference MD with the pipeline's metrics (E-W2, T-W2, TICA-W2).

At budget B: SNIS draws min(B, --max-snis) proposals (one evaluation each); an SMC kernel gets B // (evaluations
per particle) particles (ULA 101, MALA 51, adaptive MALA at most 1 + steps x max_levels); MD is the reference
trajectory's prefix of B steps (:func:`proseflow.evaluation.budget.md_budget_curve`; it is part of the reference,
which flatters MD at the largest budgets); ``md_fresh`` is the fair one: a new MD run with the reference's protocol
and another seed, as many replicas of the reference's length as the largest budget needs, scored by its prefix of
B steps the same way (burn-in not counted, as for ``md``). Every row records the evaluations actually spent.

    python studies/smc_budget.py --workdir /work/study_aa --model ab_triangular --out studies/aa/smc_budget

Rows are written as they finish and a rerun skips the (sampler, budget) pairs its CSV already holds, so a killed
run resumes. Two single-threaded workers use two cores better than one two-threaded run (1.3x here): give each its
own ``--csv`` and its own samplers, then ``--merge`` writes ``smc_budget.csv`` and the figure from every
``smc_budget_*.csv`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("smc_budget")
FIELDS = ("sampler", "budget", "n_energy_evals", "n_flow_evals", "n_samples", "energy_w2", "torus_w2", "tica_w2",
          "ess", "n_distinct", "n_distinct_ancestors", "n_levels", "wall_s", "status")


def smc_row(name, kernel, model, topology, energy, budget, evals_per_particle, ref, tica_model, n_metric, seed,
            overrides) -> dict:
    from proseflow.evaluation.evaluate import project, sampler_metrics
    from proseflow.flow.checkpoint import model_scale_nm
    from proseflow.samplers.proposals import run_smc

    n = int(budget // evals_per_particle)
    if n < 10:
        return {"sampler": name, "budget": budget, "status": f"skipped: {n} particles"}
    t0 = time.time()
    try:
        result, positions, e_kT, *_ = run_smc(model, topology, energy, n, kernel, seed=seed,
                                              scale_nm=model_scale_nm(model), batch_size=1000, **overrides)
    except RuntimeError as err:  # every weight vanished: a result too
        return {"sampler": name, "budget": budget, "status": f"failed: {err}"[:200], "wall_s": time.time() - t0}
    m = sampler_metrics(ref, project(positions, e_kT, topology, tica_model), None, n_metric, seed,
                        result.n_energy_evals)
    ess = min(result.final_ess_pre_resampling, result.n_distinct_ancestors / n)
    return {"sampler": name, "budget": budget, "n_energy_evals": result.n_energy_evals,
            "n_flow_evals": result.n_proposal_evals, "n_samples": n, **{k: m[k] for k in ("energy_w2", "torus_w2",
            "tica_w2")}, "ess": ess, "n_distinct": result.n_distinct,
            "n_distinct_ancestors": result.n_distinct_ancestors, "n_levels": len(result.ess),
            "wall_s": round(time.time() - t0, 1), "status": "ok"}


def snis_row(model, topology, energy, budget, ref, tica_model, n_metric, seed, max_snis) -> dict:
    from proseflow.evaluation.evaluate import project, sampler_metrics
    from proseflow.flow.checkpoint import model_scale_nm
    from proseflow.samplers.proposals import draw_proposals
    from proseflow.samplers.snis import snis

    n = int(min(budget, max_snis))
    t0 = time.time()
    p = draw_proposals(model, topology, n, batch_size=2000, scale_nm=model_scale_nm(model), seed=seed, progress=False)
    e_kT = energy.energy_kT(p.positions_nm)
    r = snis(-e_kT, p.log_q, drop_top_fraction=0.002, rng=seed, valid=p.chirality_ok)
    m = sampler_metrics(ref, project(p.positions_nm, e_kT, topology, tica_model), r.log_weights, n_metric, seed, n)
    return {"sampler": "snis", "budget": budget, "n_energy_evals": n, "n_flow_evals": n, "n_samples": n,
            **{k: m[k] for k in ("energy_w2", "torus_w2", "tica_w2")}, "ess": r.ess, "n_distinct": r.n_distinct,
            "wall_s": round(time.time() - t0, 1), "status": "ok" if n == budget else f"capped at {n} proposals"}


def plot(rows: list[dict], floor: dict | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, key, label, target in zip(axes, ("energy_w2", "torus_w2", "tica_w2"), ("E-W2 (kT)", "T-W2 (rad)", "TICA-W2"),
                                      (0.5, 0.2, None), strict=True):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            scored = [r for r in rows if r["sampler"] == name and r.get(key) is not None
                      and (r.get("status") == "ok" or str(r.get("status", "")).startswith("capped"))]
            pts = sorted((float(r["n_energy_evals"]), float(r[key])) for r in scored)
            pts = [p for p in pts if np.isfinite(p[1])]
            if pts:
                ax.loglog(*zip(*pts, strict=True), "o-", label=name)
        if target:
            ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target}")
        if floor and key in floor:
            ax.axhline(floor[key], color="grey", ls="--", lw=1, label="MD half vs half")
        ax.set(xlabel="energy evaluations", ylabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(fh)]


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def merge(out: Path, floor: dict | None) -> None:
    """One table and one figure from every worker's CSV (rows ordered by budget, then sampler)."""
    order = {"md": 0, "md_fresh": 1, "snis": 2, "smc_ula": 3, "smc_mala": 4, "smc_amala": 5}
    rows = {}
    for path in sorted(out.glob("smc_budget_*.csv")):  # the workers' files (not the merged one)
        for r in read_rows(path):
            rows[(r["sampler"], float(r["budget"]))] = r
    merged = sorted(rows.values(), key=lambda r: (float(r["budget"]), order.get(r["sampler"], 9), r["sampler"]))
    write_rows(out / "smc_budget.csv", merged)
    plot(merged, floor, out / "smc_budget.png")
    log.info("merged %d rows into %s", len(merged), out / "smc_budget.csv")


def fresh_md(reference_path: Path, topology, pdb: Path, max_budget: float, out: Path, seed: int, threads: int) -> Path:
    """An MD run independent of the reference: its protocol (from the file), another seed, enough replicas of its
    length for ``max_budget`` steps after burn-in. Resumable (the MD checkpoint); reused when already written."""
    import math
    from dataclasses import fields, replace

    from proseflow.physics import trajectory_io
    from proseflow.physics.md import MDProtocol, MDSystem, simulate, stable_seed
    from proseflow.physics.structures import load_pdb

    stored = trajectory_io.protocol(reference_path)
    protocol = MDProtocol(**{f.name: stored[f.name] for f in fields(MDProtocol) if f.name in stored})
    per_replica = protocol.n_frames * protocol.steps_per_frame
    protocol = replace(protocol, replicas=math.ceil(max_budget / per_replica), seed=stable_seed(seed, "md_fresh"),
                       platform="CPU")
    if protocol.seed == stored["seed"]:
        raise ValueError("md_fresh: the seed equals the reference's; it would not be independent")
    path = out / f"md_fresh_seed{protocol.seed}_x{protocol.replicas}.h5"  # another seed or length: another file
    if path.exists():
        return path
    log.info("md_fresh: %d replica(s) of %g ps, seed %d (reference: seed %d)", protocol.replicas, protocol.length_ps,
             protocol.seed, stored["seed"])
    _, positions = load_pdb(pdb)
    simulate([MDSystem(reference_path.stem, topology, positions, path)], protocol, path.with_suffix(".work"),
             threads=threads, progress=True)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--system", default="AA")
    ap.add_argument("--model", required=True)
    ap.add_argument("--snapshot", type=Path, help="model file (default results/models/<model>/model.pt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--samplers", nargs="+", default=["md", "md_fresh", "snis", "smc_ula", "smc_mala", "smc_amala"])
    ap.add_argument("--max-snis", type=int, default=100_000)
    ap.add_argument("--n-metric", type=int, default=4000)
    ap.add_argument("--temperature-K", type=float, default=310.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise-floor", type=Path, help="checkpoint_curve.py's noise_floor.json (drawn as a line)")
    ap.add_argument("--csv", default="smc_budget.csv", help="this worker's CSV file name inside --out")
    ap.add_argument("--merge", action="store_true", help="only merge every smc_budget_*.csv in --out and plot")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    floor = json.loads(args.noise_floor.read_text()) if args.noise_floor else None
    if args.merge:
        merge(args.out, floor)
        return

    import torch

    from proseflow.evaluation.budget import md_budget_curve
    from proseflow.evaluation.evaluate import reference
    from proseflow.evaluation.tica import TicaModel, fit_tica
    from proseflow.flow.checkpoint import load_model
    from proseflow.physics import trajectory_io
    from proseflow.physics.energy import make_energy
    from proseflow.physics.structures import load_pdb

    torch.set_num_threads(args.threads)
    wd = args.workdir
    args.out.mkdir(parents=True, exist_ok=True)
    md_path = wd / "results" / "md" / f"{args.system}.h5"
    topology, _ = load_pdb(wd / "results" / "structures" / f"{args.system}.pdb")
    tica_path = wd / "results" / "tica" / f"{args.system}.npz"
    tica_model = TicaModel.load(tica_path) if tica_path.exists() else fit_tica(
        trajectory_io.read(md_path)["positions_nm"], lag=20, koopman=True,
        topology=trajectory_io.mdtraj_topology(md_path), n_segments=trajectory_io.segments(md_path))
    ref = reference(md_path, topology, tica_model, args.temperature_K, 10_000)
    model = load_model(args.snapshot or wd / "results" / "models" / args.model / "model.pt")
    energy = make_energy(topology, args.temperature_K, backend="torch")
    no_filter = {"max_target_energy": None}  # a partly trained flow proposes little below 100 kT (the demo's choice)
    kernels = {"smc_ula": ("ula", 101, no_filter), "smc_mala": ("mala", 51, no_filter),
               "smc_amala": ("amala", 1 + 5 * 20, {**no_filter, "max_levels": 20, "n_mcmc_steps": 5})}
    csv_path = args.out / args.csv
    settings_name = "settings.json" if args.csv == "smc_budget.csv" else f"settings_{csv_path.stem}.json"
    (args.out / settings_name).write_text(json.dumps({**{k: str(v) for k, v in vars(args).items()},
                                                      "kernels": {k: list(v) for k, v in kernels.items()}}, indent=1))
    rows = read_rows(csv_path)
    done = {(r["sampler"], float(r["budget"])) for r in rows}
    if rows:
        log.info("resuming: %d rows already in %s", len(rows), csv_path)
    for name in ("md", "md_fresh"):  # MD rows: the reference's prefix, and an independent run; saved as they come
        if name not in args.samplers or any(r["sampler"] == name for r in rows):
            continue
        path = md_path if name == "md" else fresh_md(md_path, topology, wd / "results" / "structures" /
                                                     f"{args.system}.pdb", max(args.budgets), args.out, args.seed,
                                                     args.threads)
        for r in md_budget_curve(path, topology, tica_model, ref, args.budgets, args.n_metric, args.seed,
                                 sequence=args.system, temperature_K=args.temperature_K):
            rows.append({"sampler": name, "budget": r["budget"], "n_energy_evals": r["budget"],
                         "n_samples": r.get("n_samples"), **{k: r.get(k) for k in ("energy_w2", "torus_w2", "tica_w2")},
                         "status": r["status"], "wall_s": r.get("wall_time_s")})
        write_rows(csv_path, rows)
    for b in args.budgets:
        for name in args.samplers:
            if (name, float(b)) in done:
                continue
            if name == "snis":
                rows.append(snis_row(model, topology, energy, b, ref, tica_model, args.n_metric, args.seed, args.max_snis))
            elif name in kernels:
                kernel, per, over = kernels[name]
                rows.append(smc_row(name, kernel, model, topology, energy, b, per, ref, tica_model, args.n_metric,
                                    args.seed, over))
            else:
                continue
            log.info("%s", json.dumps(rows[-1], default=str))
            write_rows(csv_path, rows)
            plot(rows, floor, args.out / csv_path.with_suffix(".png").name)


if __name__ == "__main__":
    main()
