"""Evaluate a training run's EMA snapshots against the reference MD: the single-system study's curve.

A run with ``train.snapshot_every`` keeps ``results/models/{model}/snapshots/step_NNNNNNN.pt``; this script
scores each snapshot it has not scored yet (so it can run repeatedly while training goes on) with the same
library functions the pipeline's rules use: proposals with exact log q (:func:`proseflow.samplers.proposals.draw_proposals`),
energies (PyTorch backend), SNIS (:func:`proseflow.samplers.snis.snis`), the paper's metrics against evenly spaced
reference frames (:func:`proseflow.evaluation.evaluate.sampler_metrics`) and the weight diagnostics
(:mod:`proseflow.evaluation.diagnostics`). It writes, into ``--out`` (committed with the study):

- ``curve.csv``: one row per (snapshot, prior std): step, val NLL/dim (from train_log.csv), held-out NLL/dim
  on 2,000 reference-MD frames, ESS, E-W2, T-W2,
  TICA-W2 for the proposal and SNIS, bond-length RMS ratio, log-weight variance, top-1% weight share,
  the share of the MD's metastable states (k-means on TICA) that the SNIS set visits, wall times;
- ``noise_floor.json``: each W2 between two independent halves of the reference MD (replicas 0..R/2-1 vs
  R/2..R-1, or first vs second half) at ``n_metric / 2`` samples each: a metric at or below it is noise;
- ``curve.png``: ESS, E-W2, T-W2 and val NLL/dim against the step.

    python studies/checkpoint_curve.py --workdir /work/study_aa --system AA --out studies/aa
    python studies/checkpoint_curve.py ... --snapshot results/models/prose/model.pt --prior-std 1.0 0.9 0.8
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("checkpoint_curve")

COLUMNS = ("step", "prior_std", "val_nll", "heldout_nll", "heldout_nll_nm", "scale_nm", "n_proposals", "ess",
           "ess_gaussian_com", "n_distinct_resampled",
           "proposal_energy_w2", "proposal_torus_w2", "proposal_tica_w2", "snis_energy_w2", "snis_torus_w2",
           "snis_tica_w2", "proposal_median_energy_kT", "md_mean_energy_kT", "bond_rms_ratio_median",
           "angle_rms_ratio", "log_weight_var", "top1pct_weight_share", "states_visited_snis", "states_visited_proposal",
           "sample_s", "eval_s", "snapshot")


def state_coverage(ref_tica: np.ndarray, tica: np.ndarray, log_weights: np.ndarray | None, k: int = 20,
                   min_population: float = 0.01, min_share: float = 0.001, seed: int = 0) -> float:
    """Share of the MD's k-means states on the TICA map (population >= ``min_population``) in which the
    (weighted) sample set puts at least ``min_share`` of its weight."""
    from proseflow.evaluation.metrics import fit_kmeans
    from proseflow.samplers.resampling import normalise_log_weights

    model = fit_kmeans(ref_tica, k, seed)  # the clustering of TICA-JSD and of the report's viewer
    ref_tica = np.asarray(ref_tica, dtype=np.float64)
    n = model.cluster_centers.shape[0]
    pop = np.bincount(model.transform(ref_tica), minlength=n) / len(ref_tica)
    w = np.full(len(tica), 1.0 / len(tica)) if log_weights is None else np.exp(normalise_log_weights(log_weights))
    share = np.bincount(model.transform(np.asarray(tica, dtype=np.float64)), weights=w, minlength=n)
    states = pop >= min_population
    return float((share[states] >= min_share).mean())


def val_nll_at(train_log: Path, step: int) -> float | None:
    if not train_log.exists():
        return None
    with open(train_log) as fh:
        for row in csv.DictReader(fh):
            if int(row["step"]) == step and row.get("val_nll"):
                return float(row["val_nll"])
    return None


def heldout_nll(model, topology, positions_nm: np.ndarray, seed: int = 0) -> float:
    """Mean NLL/3N of reference-MD frames (independent runs, not trained on) under the training transform
    with a fixed augmentation: a held-out likelihood that does not depend on the validation run's build.
    The frames get the training stores' canonical labelling of equivalent hydrogens first."""
    import torch

    from proseflow.data.features import canonical_hydrogen_labels, equivalent_hydrogen_groups
    from proseflow.flow.checkpoint import model_scale_nm
    from proseflow.flow.train import TrainConfig, _generator, augment
    from proseflow.samplers.proposals import side_chains_of, system_batch

    positions_nm = canonical_hydrogen_labels(np.asarray(positions_nm), equivalent_hydrogen_groups(topology))
    x = torch.as_tensor(np.asarray(positions_nm, dtype=np.float32))
    batch = system_batch(topology, len(x), side_chains=side_chains_of(model))
    cfg = TrainConfig()
    xa = augment(x, batch["mask"], _generator(seed, 0), slice(0, len(x)), len(x), cfg, model_scale_nm(model))
    with torch.no_grad():
        return float(model.nll_per_dim(xa, batch).mean())


def evaluate_snapshot(path: Path, topology, tica_model, ref, temperature_K: float, n_proposals: int,
                      n_metric: int, prior_std: float, seed: int, md_positions: np.ndarray) -> dict:
    import torch

    from proseflow.evaluation.diagnostics import angle_deviation, bond_deviation, weight_spread
    from proseflow.evaluation.evaluate import project, sampler_metrics
    from proseflow.flow.checkpoint import load_model, model_scale_nm
    from proseflow.physics.energy import make_energy
    from proseflow.samplers.proposals import draw_proposals
    from proseflow.samplers.snis import snis

    model = load_model(path, "cpu")
    nll_heldout = heldout_nll(model, topology, md_positions)
    t0 = time.time()
    p = draw_proposals(model, topology, n_proposals, batch_size=2000, prior_std=prior_std,
                       scale_nm=model_scale_nm(model), com_correction="chi", seed=seed, progress=False)
    t_sample = time.time() - t0
    with torch.no_grad():
        e_kT = make_energy(topology, temperature_K, backend="torch").energy_kT(p.positions_nm)
    r = snis(-e_kT, p.log_q, drop_top_fraction=0.002, rng=seed)
    proj = project(p.positions_nm, e_kT, topology, tica_model)
    m_prop = sampler_metrics(ref, proj, None, n_metric, seed)
    m_snis = sampler_metrics(ref, proj, r.log_weights, n_metric, seed)
    spread = weight_spread(e_kT, p.log_q, centroid_flow=p.x_flow.astype(np.float64).mean(axis=1),
                           com_correction="chi")
    bonds = bond_deviation(topology, md_positions, p.positions_nm[: min(len(p.positions_nm), 2000)])
    angles = angle_deviation(topology, md_positions, p.positions_nm[: min(len(p.positions_nm), 2000)])
    scale_nm = model_scale_nm(model)
    finite = np.isfinite(e_kT)
    return {
        "step": int(model.meta.get("step", -1)), "prior_std": prior_std, "n_proposals": n_proposals,
        "heldout_nll": nll_heldout, "scale_nm": scale_nm,
        "heldout_nll_nm": nll_heldout + float(np.log(scale_nm)),  # per dim in nm: comparable across scales
        "ess": r.ess, "ess_gaussian_com": spread["ess"]["gaussian"],
        "n_distinct_resampled": int(len(np.unique(r.indices))),
        **{f"proposal_{k}": m_prop[k] for k in ("energy_w2", "torus_w2", "tica_w2")},
        **{f"snis_{k}": m_snis[k] for k in ("energy_w2", "torus_w2", "tica_w2")},
        "proposal_median_energy_kT": float(np.median(e_kT[finite])) if finite.any() else None,
        "md_mean_energy_kT": float(np.mean(ref.energy_kT)),
        "bond_rms_ratio_median": float(np.median([v["ratio"] for v in bonds.values() if v["ratio"] is not None])),
        "angle_rms_ratio": angles["ratio"],
        "log_weight_var": spread["log_weight_var"], "top1pct_weight_share": spread["top1pct_weight_share"],
        "states_visited_snis": state_coverage(ref.tica, proj.tica, r.log_weights),
        "states_visited_proposal": state_coverage(ref.tica, proj.tica, None),
        "sample_s": round(t_sample, 1), "eval_s": round(time.time() - t0, 1), "snapshot": str(path),
    }


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict]) -> None:
    from proseflow.artefacts import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    atomic_write(path, write)


def plot(rows: list[dict], floor: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if float(r["prior_std"]) == 1.0), key=lambda r: int(r["step"]))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]

    def col(k):
        return [float(r[k]) if r.get(k) not in (None, "", "None") else np.nan for r in rows]

    fig, ax = plt.subplots(1, 4, figsize=(15, 3.2))
    ax[0].semilogy(step, col("ess"), "o-", label="SNIS ESS (chi)")
    ax[0].semilogy(step, col("ess_gaussian_com"), "s--", label="ESS (gaussian COM)")
    ax[0].axhline(0.05, color="k", ls=":", label="target 0.05")
    for a, key, label, target in ((ax[1], "energy_w2", "E-W2 (kT)", 0.5), (ax[2], "torus_w2", "T-W2 (rad)", 0.2)):
        a.semilogy(step, col(f"proposal_{key}"), "o-", label="proposal")
        a.semilogy(step, col(f"snis_{key}"), "s-", label="SNIS")
        a.axhline(target, color="k", ls=":", label=f"target {target}")
        if key in floor:
            a.axhline(floor[key], color="grey", ls="--", label="MD half vs half")
        a.set_ylabel(label)
    ax[3].plot(step, col("heldout_nll_nm") if rows[0].get("heldout_nll_nm") else col("heldout_nll"), "o-",
               label="reference MD frames")
    ax[3].set_ylabel("held-out NLL / dim (nm)" if rows[0].get("heldout_nll_nm") else "held-out NLL / dim")
    for a in ax:
        a.set_xlabel("training step")
        a.grid(alpha=0.3)
    for a in ax[:3]:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="the study's Snakemake working directory")
    ap.add_argument("--system", default="AA")
    ap.add_argument("--model", default="prose")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--snapshot", type=Path, nargs="*", help="score these files (default: every new snapshot)")
    ap.add_argument("--prior-std", type=float, nargs="+", default=[1.0])
    ap.add_argument("--n-proposals", type=int, default=10_000)
    ap.add_argument("--n-metric", type=int, default=4000)
    ap.add_argument("--temperature-K", type=float, default=310.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from proseflow.evaluation.evaluate import noise_floor, reference, reference_indices
    from proseflow.evaluation.tica import TicaModel, fit_tica
    from proseflow.physics import trajectory_io
    from proseflow.physics.structures import load_pdb

    torch.set_num_threads(args.threads)
    wd = args.workdir
    args.out.mkdir(parents=True, exist_ok=True)
    md_path = wd / "results" / "md" / f"{args.system}.h5"
    topology, _ = load_pdb(wd / "results" / "structures" / f"{args.system}.pdb")
    tica_path = wd / "results" / "tica" / f"{args.system}.npz"
    if tica_path.exists():
        tica_model = TicaModel.load(tica_path)
    else:  # as the fit_tica rule does (lag from the study config: 10 ps = 20 frames at 0.5 ps)
        data = trajectory_io.read(md_path)
        tica_model = fit_tica(data["positions_nm"], lag=20, koopman=True,
                              topology=trajectory_io.mdtraj_topology(md_path), n_segments=trajectory_io.segments(md_path))
    ref = reference(md_path, topology, tica_model, args.temperature_K, 10_000)
    md_positions = trajectory_io.read(md_path)["positions_nm"][reference_indices(md_path, 2000)]

    floor_path = args.out / "noise_floor.json"
    if not floor_path.exists():
        floor_path.write_text(json.dumps(noise_floor(md_path, topology, tica_model, args.temperature_K,
                                                     2 * args.n_metric), indent=1))
    floor = json.loads(floor_path.read_text())

    csv_path = args.out / "curve.csv"
    rows = read_rows(csv_path)
    done = {(Path(r["snapshot"]).name, float(r["prior_std"])) for r in rows}
    model_dir = wd / "results" / "models" / args.model
    snaps = args.snapshot or sorted((model_dir / "snapshots").glob("step_*.pt"))
    for snap in snaps:
        snap = snap if snap.is_absolute() else wd / snap
        for s in args.prior_std:
            if (snap.name, s) in done and not args.snapshot:
                continue
            row = evaluate_snapshot(snap, topology, tica_model, ref, args.temperature_K, args.n_proposals,
                                    args.n_metric, s, args.seed, md_positions)
            row["val_nll"] = val_nll_at(model_dir / "train_log.csv", row["step"])
            row["snapshot"] = str(snap.relative_to(wd)) if snap.is_relative_to(wd) else str(snap)
            log.info("%s", json.dumps({k: row[k] for k in ("step", "prior_std", "ess", "snis_energy_w2",
                                                            "snis_torus_w2", "proposal_torus_w2", "val_nll")}))
            rows = [r for r in rows if (Path(r["snapshot"]).name, float(r["prior_std"])) != (snap.name, s)] + [row]
            rows.sort(key=lambda r: (int(r["step"]), -float(r["prior_std"])))
            write_rows(csv_path, rows)
            plot(read_rows(csv_path), floor, args.out / "curve.png")


if __name__ == "__main__":
    main()
