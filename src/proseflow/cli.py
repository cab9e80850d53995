"""Command-line adapters: a few lines each, called by the Snakemake rules (``python -m proseflow ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from proseflow.artefacts import save_csv, save_json, save_npz

log = logging.getLogger("proseflow")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def cmd_sequences(args) -> None:
    from proseflow.config import explicit_train, overlap_allowed, sequence_set, train_counts
    from proseflow.sequences import check_disjoint, draw_uniform, to_frame

    config = {"sequences": args.sequences}
    val, test = sequence_set(config, "val"), sequence_set(config, "test")
    train = explicit_train(config)
    if train is None:
        train = draw_uniform(train_counts(config), seed=args.sequences["seed"], exclude=[*val, *test])
    if overlap_allowed(config):
        log.warning("sequences.allow_train_test_overlap: training, validation and test sets may share sequences "
                    "(single-system study)")
    else:
        check_disjoint({"train": train, "val": val, "test": test})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, seqs in (("train", train), ("val", val), ("test", test)):
        save_csv(out / f"{name}.csv", to_frame(seqs))
        log.info("%s: %d sequences", name, len(seqs))


def cmd_structure(args) -> None:
    from proseflow.sequences import validate_sequence
    from proseflow.structures import build_peptide, write_pdb

    validate_sequence(args.sequence, min_length=1, max_length=args.max_length)
    topology, positions_nm = build_peptide(args.sequence)
    write_pdb(args.out, topology, positions_nm)
    log.info("%s: %d atoms -> %s", args.sequence, topology.getNumAtoms(), args.out)


def _md_protocol(args):
    from proseflow.md import MDProtocol

    return MDProtocol(**args.protocol)


def cmd_md(args) -> None:
    """Reference MD of one system (structure from its PDB)."""
    from proseflow.md import MDSystem, simulate, stable_seed
    from proseflow.structures import load_pdb

    protocol = _md_protocol(args)
    protocol = type(protocol)(**{**protocol.__dict__, "seed": stable_seed(protocol.seed, args.name)})
    topology, positions_nm = load_pdb(args.structure)
    system = MDSystem(args.name, topology, positions_nm, Path(args.out))
    work = Path(args.out).parent / ".work" / args.name
    t0 = time.time()
    simulate([system], protocol, work, threads=args.threads)
    log.info("MD of %s done in %.1f s", args.name, time.time() - t0)


def cmd_md_batch(args) -> None:
    """Training/validation MD: systems_per_job sequences of a split as copies in one context."""
    from proseflow.md import MDSystem, simulate, stable_seed
    from proseflow.sequences import read_sequences
    from proseflow.structures import build_peptide, write_pdb

    seqs = read_sequences(args.sequences_csv)
    mine = seqs[args.batch * args.systems_per_job : (args.batch + 1) * args.systems_per_job]
    out = Path(args.out_dir)
    tmp_dir = out.with_name(f".{out.name}.tmp")
    protocol = _md_protocol(args)
    # the split is part of the seed: a single-system study simulates the same sequence for train and val
    protocol = type(protocol)(**{**protocol.__dict__, "seed": stable_seed(protocol.seed, out.parent.name, out.name,
                                                                          *mine)})
    tmp_dir.mkdir(parents=True, exist_ok=True)
    systems = []
    for s in mine:
        topology, positions_nm = build_peptide(s)
        write_pdb(tmp_dir / f"{s}.pdb", topology, positions_nm)
        systems.append(MDSystem(s, topology, positions_nm, tmp_dir / f"{s}.h5"))
    if systems:
        simulate(systems, protocol, out.with_name(f".{out.name}.work"), threads=args.threads)
    (tmp_dir / "manifest.json").write_text(json.dumps({"sequences": mine, "protocol": protocol.__dict__},
                                                      indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_dir, out)
    log.info("batch %s: %d systems -> %s", args.batch, len(mine), out)


def cmd_dataset(args) -> None:
    """Zarr frame store of one MD batch, subsampled to the configured frame interval."""
    from proseflow.dataset import subsample_every_for, write_store

    md_dir = Path(args.md_dir)
    manifest = json.loads((md_dir / "manifest.json").read_text())
    every = subsample_every_for(manifest["protocol"]["save_interval_ps"], args.frame_interval_ps)
    systems = [(s, md_dir / f"{s}.h5") for s in manifest["sequences"]]
    write_store(args.out, systems, every, input_interval_ps=manifest["protocol"]["save_interval_ps"],
                expected_interval_ps=args.frame_interval_ps)
    log.info("%d systems -> %s (every %d-th frame)", len(systems), args.out, every)


def cmd_train(args) -> None:
    from proseflow.train import TrainConfig, train

    config = TrainConfig(**args.train)
    summary = train(config, args.train_stores, args.val_stores or None, args.out_dir)
    log.info("training finished: %s", json.dumps(summary, default=str))
    if not summary["completed"]:  # stopped by train.stop_after_s: checkpoint written, no model.pt
        raise RuntimeError(f"training stopped at step {summary['step']} before max_steps; rerun to resume")


def cmd_tica(args) -> None:
    from proseflow import trajectory_io
    from proseflow.tica import fit_tica

    n_segments = trajectory_io.segments(args.md)
    per_replica = trajectory_io.n_frames(args.md) // n_segments
    if per_replica % args.stride:
        raise ValueError(f"TICA stride {args.stride} does not divide the {per_replica} frames of each replica")
    data = trajectory_io.read(args.md, stride=args.stride)
    topology = trajectory_io.mdtraj_topology(args.md)
    model = fit_tica(data["positions_nm"], lag=args.lag_frames, dim=args.dim, koopman=True, topology=topology,
                     n_segments=n_segments)
    model.save(args.out)  # atomic (proseflow.artefacts)
    log.info("TICA of %s: %d frames (stride %d), lag %d frames -> %s", args.md, len(data["positions_nm"]),
             args.stride, args.lag_frames, args.out)


def cmd_sample(args) -> None:
    """Proposals x ~ q for one system: positions (nm), exact log q, chirality statistics."""
    import numpy as np
    import torch

    from proseflow.sampling import draw_proposals
    from proseflow.structures import load_pdb
    from proseflow.train import load_model

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    model = load_model(args.model, device)
    topology, _ = load_pdb(args.structure)
    p = draw_proposals(model, topology, args.n, batch_size=args.batch_size, prior_std=args.prior_std,
                       scale_nm=model.meta.get("scale_nm", 0.35), com_correction=args.com_correction,
                       seed=args.seed, device=device)
    save_npz(args.out, positions_nm=p.positions_nm, log_q=p.log_q, chirality_ok=p.chirality_ok,
              n_chirality_fixed=p.n_chirality_fixed, n_chirality_unfixable=p.n_chirality_unfixable,
              wall_time_s=p.wall_time_s, prior_std=args.prior_std, model=str(args.model),
              device=str(device), com_correction=args.com_correction,
              centroid_flow=p.x_flow.astype(np.float64).mean(axis=1))  # for the other COM correction's ESS
    log.info("%d proposals in %.1f s; chirality fixed %d, unfixable %d", args.n, p.wall_time_s,
             p.n_chirality_fixed, p.n_chirality_unfixable)


def cmd_snis(args) -> None:
    """Energies of the proposals and self-normalised importance weights."""
    import numpy as np

    from proseflow.energy import make_energy
    from proseflow.reweight import snis
    from proseflow.structures import load_pdb

    t0 = time.time()
    prop = np.load(args.proposals)
    topology, _ = load_pdb(args.structure)
    energy = make_energy(topology, args.temperature_K, backend=args.energy_backend)
    e_kT = energy.energy_kT(prop["positions_nm"])
    log_q = prop["log_q"]
    r = snis(-e_kT, log_q, drop_top_fraction=args.drop_top_fraction, rng=args.seed)
    save_npz(args.out, positions_nm=prop["positions_nm"], log_q=log_q, energy_kT=e_kT,
              log_weights=r.log_weights, resampled_indices=r.indices, ess=r.ess, n_distinct=r.n_distinct,
              n_nonfinite=r.n_nonfinite,
              n_dropped=r.n_dropped, n_energy_evals=len(e_kT), temperature_K=args.temperature_K,
              drop_top_fraction=args.drop_top_fraction,
              wall_time_s=time.time() - t0 + float(prop["wall_time_s"]))
    log.info("SNIS: ESS %.4f over %d proposals (%d non-finite, %d dropped)", r.ess, len(e_kT), r.n_nonfinite,
             r.n_dropped)


def cmd_evaluate(args) -> None:
    """Metrics of every sampler of one system against its reference MD; JSON + self-contained HTML page."""
    import platform

    import numpy as np

    from proseflow.evaluate import SAMPLER_COUNTS, project, reference, reference_indices, sampler_metrics
    from proseflow.report import write_system_report
    from proseflow.smc import count_distinct
    from proseflow.structures import load_pdb
    from proseflow.tica import TicaModel

    topology, _ = load_pdb(args.structure)
    tica_model = TicaModel.load(args.tica)
    ref = reference(args.md, topology, tica_model, args.temperature_K, args.reference_frames)
    metrics, sets, meta_rows = {}, {}, {}
    for path in args.samplers:
        name = Path(path).stem
        d = np.load(path)
        proj = project(d["positions_nm"], d["energy_kT"], topology, tica_model)
        n_evals = int(d["n_energy_evals"])
        if name == "snis":  # the raw proposal is the SNIS set without its weights
            metrics["proposal"] = sampler_metrics(ref, proj, None, args.n_metric, args.seed, n_evals, args.kmeans_k)
            metrics["proposal"]["n_distinct"] = count_distinct(d["positions_nm"])
            sets["proposal"] = {"energy_kT": proj.energy_kT, "weights": None, "phi_psi": proj.phi_psi,
                                "tica": proj.tica}
        log_w = d["log_weights"] if "log_weights" in d else None
        metrics[name] = sampler_metrics(ref, proj, log_w, args.n_metric, args.seed, n_evals, args.kmeans_k)
        if "ess" in d:  # the sampler's own ESS (SMC: before its final resampling)
            metrics[name]["ess"] = float(d["ess"])
        # distinct configurations next to the ESS, so a collapsed population shows (proseflow.smc doc)
        metrics[name]["n_distinct"] = int(d["n_distinct"]) if "n_distinct" in d else count_distinct(d["positions_nm"])
        for key in SAMPLER_COUNTS:
            if key in d:
                metrics[name][key] = float(d[key]) if key == "min_ess" else int(d[key])
        sets[name] = {"energy_kT": proj.energy_kT, "log_weights": log_w,
                      "phi_psi": proj.phi_psi, "tica": proj.tica}
        meta_rows[f"{name} wall time (s)"] = round(float(d["wall_time_s"]), 1) if "wall_time_s" in d else None
    diagnostics = None
    if args.proposals:
        prop = np.load(args.proposals)
        n = len(prop["log_q"])
        for key in metrics:
            metrics[key]["chirality_fixed_rate"] = float(prop["n_chirality_fixed"]) / n
            metrics[key]["chirality_unfixable_rate"] = float(prop["n_chirality_unfixable"]) / n
        snis_path = next((p for p in args.samplers if Path(p).stem == "snis"), None)
        if snis_path is not None:  # why the weights look the way they do (proseflow.diagnostics)
            from proseflow import trajectory_io
            from proseflow.diagnostics import diagnose

            d = np.load(snis_path)
            idx = reference_indices(args.md, args.reference_frames)
            diagnostics = diagnose(
                topology, args.temperature_K, trajectory_io.read(args.md)["positions_nm"][idx], d["positions_nm"],
                d["energy_kT"], d["log_q"], d["log_weights"],
                centroid_flow=prop["centroid_flow"] if "centroid_flow" in prop else None,
                com_correction=str(prop["com_correction"]) if "com_correction" in prop else "chi",
                drop_top_fraction=float(d["drop_top_fraction"]) if "drop_top_fraction" in d else 0.002)
    train = ({line.split(",")[0] for line in Path(args.train_sequences).read_text().split()[1:]}
             if args.train_sequences else set())
    seq = Path(args.structure).stem  # results/structures/{seq}.pdb (the MD may be {seq}_{T}K.h5)
    metadata = {"sequence": seq, "model": args.model_name, "checkpoint": args.model_path,
                "temperature (K)": args.temperature_K, "reference MD": args.md,
                "reference frames used": len(ref.energy_kT), "in training set": seq in train,
                "TICA Koopman-weighted": bool(tica_model.koopman), "TICA lag (frames)": tica_model.lag_frames,
                "hardware": f"{platform.node()} {platform.processor() or platform.machine()}",
                "generated": time.strftime("%Y-%m-%d %H:%M:%S"), **meta_rows}
    out = {"sequence": seq, "length": len(seq), "model": args.model_name, "metrics": metrics, "metadata": metadata,
           "diagnostics": diagnostics}
    write_system_report(args.out_html, {"sequence": seq, "metrics": metrics, "metadata": metadata,
                                         "diagnostics": diagnostics,
                                         "reference": {"energy_kT": ref.energy_kT, "phi_psi": ref.phi_psi,
                                                       "tica": ref.tica},
                                         "samplers": sets}, summary_href="summary.html")
    save_json(args.out_json, out)  # last: the JSON marks completion
    log.info("%s: %s", seq, json.dumps({k: {m: round(v, 4) for m, v in d.items() if m in ("ess", "energy_w2", "torus_w2", "tica_w2")} for k, d in metrics.items()}))


def cmd_summary(args) -> None:
    from proseflow.report import write_summary

    rows = []
    for path in args.evals:
        d = json.loads(Path(path).read_text())
        for sampler, m in d["metrics"].items():
            rows.append({"sequence": d["sequence"], "length": d["length"], "model": d["model"], "sampler": sampler,
                         **m})
    links = dict(link.split("=", 1) for link in args.link)
    write_summary(args.out_html, args.tables_dir, rows, links=links)
    log.info("summary of %d systems -> %s", len(args.evals), args.out_html)


def cmd_smc(args) -> None:
    """SMC with the flow as proposal (ULA or MALA moves), forces from the energy API."""
    import numpy as np
    import torch

    from proseflow.energy import make_energy
    from proseflow.sampling import STEP_SIZE_UNITS, run_smc
    from proseflow.structures import load_pdb
    from proseflow.train import load_model

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device)
    topology, _ = load_pdb(args.structure)
    energy = make_energy(topology, args.temperature_K, backend=args.energy_backend)
    result, positions, e_kT, n_fixed, n_unfixable, ok = run_smc(
        model, topology, energy, args.n_particles, args.kernel, seed=args.seed,
        scale_nm=model.meta.get("scale_nm", 0.35), device=device, **args.smc)
    save_npz(args.out, positions_nm=positions, energy_kT=e_kT, log_weights=result.log_weights,
              ess=result.final_ess_pre_resampling, ess_trace=np.asarray(result.ess), min_ess=result.min_ess,
              resampled=np.asarray(result.resampled), n_distinct=result.n_distinct,
              n_distinct_ancestors=result.n_distinct_ancestors, step_size_units=STEP_SIZE_UNITS,
              n_dropped_top_weight=result.info["n_dropped_top_weight"],
              n_dropped_high_energy=result.info["n_dropped_high_energy"],
              acceptance=np.asarray(result.acceptance, dtype=float), step_sizes=np.asarray(result.step_sizes),
              t_schedule=np.asarray(result.t_schedule), n_energy_evals=result.n_energy_evals,
              n_chirality_fixed=n_fixed, n_chirality_unfixable=n_unfixable, temperature_K=args.temperature_K,
              wall_time_s=time.time() - t0, kernel=args.kernel)
    log.info("SMC-%s: %d particles, final ESS before resampling %.4f (min %.4f), %d distinct (from %d proposals; "
             "%d + %d dropped before SMC), %d energy evaluations, %.1f s", args.kernel, args.n_particles,
             result.final_ess_pre_resampling, result.min_ess, result.n_distinct, result.n_distinct_ancestors,
             result.info["n_dropped_top_weight"], result.info["n_dropped_high_energy"], result.n_energy_evals,
             time.time() - t0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proseflow", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sequences", help="enumerate train/val/test sequences")
    s.add_argument("--sequences", type=_json, required=True, help="the config's `sequences` section as JSON")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_sequences)

    s = sub.add_parser("structure", help="build and minimise one peptide structure")
    s.add_argument("--sequence", required=True)
    s.add_argument("--max-length", type=int, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_structure)

    s = sub.add_parser("md", help="reference MD of one system")
    s.add_argument("--name", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--protocol", type=_json, required=True)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("md-batch", help="batched training/validation MD")
    s.add_argument("--sequences-csv", required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--systems-per-job", type=int, required=True)
    s.add_argument("--protocol", type=_json, required=True)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_md_batch)

    s = sub.add_parser("dataset", help="Zarr frame store of one MD batch")
    s.add_argument("--md-dir", required=True)
    s.add_argument("--frame-interval-ps", type=float, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("train", help="train (or resume) one flow")
    s.add_argument("--train", type=_json, required=True, help="TrainConfig fields as JSON")
    s.add_argument("--train-stores", nargs="+", required=True)
    s.add_argument("--val-stores", nargs="*", default=[])
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tica", help="TICA model of a reference trajectory")
    s.add_argument("--md", required=True)
    s.add_argument("--lag-frames", type=int, required=True)
    s.add_argument("--dim", type=int, default=2)
    s.add_argument("--stride", type=int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_tica)

    s = sub.add_parser("sample", help="draw proposals from a trained flow")
    s.add_argument("--model", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--prior-std", type=float, default=1.0)
    s.add_argument("--com-correction", choices=["chi", "gaussian"], default="chi")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("snis", help="energies and SNIS weights of proposals")
    s.add_argument("--proposals", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--temperature-K", type=float, required=True)
    s.add_argument("--energy-backend", default="openmm")
    s.add_argument("--drop-top-fraction", type=float, default=0.002)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_snis)

    s = sub.add_parser("evaluate", help="metrics and report page of one system")
    s.add_argument("--md", required=True)
    s.add_argument("--tica", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--samplers", nargs="+", required=True, help="sampler .npz files (name = file stem)")
    s.add_argument("--proposals", default=None)
    s.add_argument("--train-sequences", default=None)
    s.add_argument("--model-name", default="prose")
    s.add_argument("--model-path", default="")
    s.add_argument("--temperature-K", type=float, required=True)
    s.add_argument("--reference-frames", type=int, default=10_000)
    s.add_argument("--n-metric", type=int, default=10_000)
    s.add_argument("--kmeans-k", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out-json", required=True)
    s.add_argument("--out-html", required=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("summary", help="summary page and paper-style tables")
    s.add_argument("--evals", nargs="+", required=True)
    s.add_argument("--tables-dir", required=True)
    s.add_argument("--out-html", required=True)
    s.add_argument("--link", action="append", default=[], help="LABEL=HREF of another page to link")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("smc", help="SMC sampler with the flow as proposal")
    s.add_argument("--model", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--kernel", choices=["ula", "mala"], required=True)
    s.add_argument("--n-particles", type=int, required=True)
    s.add_argument("--smc", type=_json, default={}, help="SMCConfig overrides as JSON")
    s.add_argument("--temperature-K", type=float, required=True)
    s.add_argument("--energy-backend", default="openmm")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_smc)

    from proseflow.self_improve import add_parser as add_self_improve_parser

    add_self_improve_parser(sub)

    from proseflow import budget, temperature

    budget.add_parsers(sub)
    temperature.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:  # its own parser and exit status: proseflow.verify
        from proseflow.verify import main as verify_main

        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("proseflow %s %s", args.command, " ".join(sys.argv[1:]))
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
