"""The pipeline's stages: one function per Snakemake rule kind, ``run_<stage>(settings, inputs, outputs)``.

Each takes its stage's settings (:mod:`proseflow.stages.settings`) and the rule's named input and output files,
and calls the library. Imports are made inside each function, so running one stage imports only what that
stage needs (the MD stage loads neither torch nor matplotlib); ``tests/test_env_guard.py`` checks every
stage against the conda env of the rules that run it. ``python -m proseflow run <stage>`` is the entry
point (:mod:`proseflow.cli`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from proseflow.stages import settings as S

log = logging.getLogger("proseflow")


class Files:
    """A rule's named files: ``files.one("md")`` for a single path, ``files.many("evals")`` for a list."""

    def __init__(self, kind: str, named: Mapping[str, Sequence[str]]):
        self.kind = kind
        self.named = {k: [str(p) for p in v] for k, v in named.items()}

    def _get(self, name: str) -> list[str]:
        try:
            return self.named[name]
        except KeyError:
            raise ValueError(f"missing {self.kind} {name!r} (given: {', '.join(sorted(self.named)) or 'none'})") from None

    def one(self, name: str) -> str:
        paths = self._get(name)
        if len(paths) != 1:
            raise ValueError(f"{self.kind} {name!r} must be one path, got {len(paths)}")
        return paths[0]

    def many(self, name: str, default: list[str] | None = None) -> list[str]:
        if default is not None and name not in self.named:
            return default
        return self._get(name)

    def optional(self, name: str) -> str | None:
        return self.one(name) if name in self.named else None


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------- physics stages
def run_sequences(s: S.SequencesSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.physics.sequences import check_disjoint, draw_uniform, to_frame

    config = {"sequences": s.to_dict()}
    val, test = S.sequence_set(config, "val"), S.sequence_set(config, "test")
    train = S.explicit_train(config)
    if train is None:
        train = draw_uniform(S.train_counts(config), seed=s.seed, exclude=[*val, *test])
    if s.allow_train_test_overlap:
        log.warning("sequences.allow_train_test_overlap: training, validation and test sets may share sequences "
                    "(single-system study)")
    else:
        check_disjoint({"train": train, "val": val, "test": test})
    from proseflow.artefacts import save_csv

    for name, seqs in (("train", train), ("val", val), ("test", test)):
        save_csv(outputs.one(name), to_frame(seqs))
        log.info("%s: %d sequences", name, len(seqs))


def run_structure(s: S.StructureSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.physics.sequences import validate_sequence
    from proseflow.physics.structures import build_peptide, write_pdb

    validate_sequence(s.sequence, min_length=1, max_length=s.max_target_length)
    topology, positions_nm = build_peptide(s.sequence)
    out = outputs.one("pdb")
    write_pdb(out, topology, positions_nm)
    log.info("%s: %d atoms -> %s", s.sequence, topology.getNumAtoms(), out)


def run_md(s: S.MDSettings, inputs: Files, outputs: Files, threads: int | None = None) -> None:
    """Reference MD of one system (split reference), or a batch of training/validation systems."""
    from dataclasses import replace

    from proseflow.physics.md import MDSystem, simulate, stable_seed

    protocol = S.MDProtocol(**s.protocol)
    if s.split == "reference":
        from proseflow.physics.structures import load_pdb

        if not s.name:
            raise ValueError("reference MD needs the system's name (settings.name)")
        protocol = replace(protocol, seed=stable_seed(protocol.seed, s.name))
        topology, positions_nm = load_pdb(inputs.one("structure"))
        out = Path(outputs.one("h5"))
        t0 = time.time()
        simulate([MDSystem(s.name, topology, positions_nm, out)], protocol, out.parent / ".work" / s.name,
                 threads=threads)
        log.info("MD of %s done in %.1f s", s.name, time.time() - t0)
        return

    from proseflow.physics.sequences import read_sequences
    from proseflow.physics.structures import build_peptide, write_pdb

    if s.batch is None or s.systems_per_job is None:
        raise ValueError(f"{s.split} MD needs settings.batch and settings.systems_per_job")
    seqs = read_sequences(inputs.one("sequences"))
    mine = seqs[s.batch * s.systems_per_job: (s.batch + 1) * s.systems_per_job]
    out = Path(outputs.one("batch"))
    tmp_dir = out.with_name(f".{out.name}.tmp")
    # the split is part of the seed: a single-system study simulates the same sequence for train and val
    protocol = replace(protocol, seed=stable_seed(protocol.seed, out.parent.name, out.name, *mine))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    systems = []
    for seq in mine:
        topology, positions_nm = build_peptide(seq)
        write_pdb(tmp_dir / f"{seq}.pdb", topology, positions_nm)
        systems.append(MDSystem(seq, topology, positions_nm, tmp_dir / f"{seq}.h5"))
    if systems:
        simulate(systems, protocol, out.with_name(f".{out.name}.work"), threads=threads)
    (tmp_dir / "manifest.json").write_text(json.dumps({"sequences": mine, "protocol": protocol.__dict__}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_dir, out)
    log.info("batch %s: %d systems -> %s", s.batch, len(mine), out)


# ---------------------------------------------------------------------------------- flow stages
def run_dataset(s: S.DatasetSettings, inputs: Files, outputs: Files) -> None:
    """Zarr frame store of one MD batch, subsampled to the configured frame interval."""
    from proseflow.data.dataset import subsample_every_for, write_store

    md_dir = Path(inputs.one("batch"))
    manifest = json.loads((md_dir / "manifest.json").read_text())
    every = subsample_every_for(manifest["protocol"]["save_interval_ps"], s.frame_interval_ps)
    systems = [(seq, md_dir / f"{seq}.h5") for seq in manifest["sequences"]]
    out = outputs.one("store")
    write_store(out, systems, every, input_interval_ps=manifest["protocol"]["save_interval_ps"],
                expected_interval_ps=s.frame_interval_ps)
    log.info("%d systems -> %s (every %d-th frame)", len(systems), out, every)


def run_train(s: S.TrainSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.flow.train import TrainConfig, train

    config = TrainConfig(**s.config)
    out_dir = Path(outputs.one("model")).parent
    summary = train(config, inputs.many("train"), inputs.many("val", default=[]) or None, out_dir)
    log.info("training finished: %s", json.dumps(summary, default=str))
    if not summary["completed"]:  # stopped by train.stop_after_s: checkpoint written, no model.pt
        raise RuntimeError(f"training stopped at step {summary['step']} before max_steps; rerun to resume")


def run_import(s: S.ImportSettings, inputs: Files, outputs: Files) -> None:
    """A model not trained here -> a proseflow model file with provenance.json beside it: the authors' released
    Prose weights (``weights``; arch prose_released) or a proseflow model file used as is (``file``)."""
    if s.source == "proseflow":
        from proseflow.flow.checkpoint import adopt_model

        out = adopt_model(inputs.one("file"), outputs.one("model"))
        log.info("model file %s -> %s (model %s, used as is)", inputs.one("file"), out, s.model)
        return
    from proseflow.flow.released import import_weights

    out = import_weights(inputs.one("weights"), outputs.one("model"), head_dim=s.head_dim, max_atoms=s.max_atoms)
    log.info("imported %s -> %s (model %s)", inputs.one("weights"), out, s.model)


def run_reference_file(s: S.ReferenceFileSettings, inputs: Files, outputs: Files) -> None:
    """A reference MD file used as is (``md.reference_files``): checked against the system's structure and the
    temperature, then copied."""
    from proseflow.physics.structures import load_pdb
    from proseflow.physics.trajectory_io import adopt_reference

    topology, _ = load_pdb(inputs.one("structure"))
    out = adopt_reference(inputs.one("file"), outputs.one("h5"), s.name, [a.name for a in topology.atoms()],
                          s.temperature_K)
    log.info("reference MD of %s: %s used as is -> %s", s.name, inputs.one("file"), out)


# ------------------------------------------------------------------------------- sampler stages
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
        batch_size=s.batch_size, device=device, prior_std=s.prior_std, **s.smc)
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
    from proseflow.samplers.self_improve import SelfImproveConfig, self_improve

    device = _device(s.device)
    config = SelfImproveConfig(**s.improve)
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


# ---------------------------------------------------------------------------- evaluation stages
def run_tica(s: S.TicaSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.evaluation.tica import fit_tica
    from proseflow.physics import trajectory_io

    md = inputs.one("md")
    n_segments = trajectory_io.segments(md)
    per_replica = trajectory_io.n_frames(md) // n_segments
    if per_replica % s.stride:
        raise ValueError(f"TICA stride {s.stride} does not divide the {per_replica} frames of each replica")
    frames = s.lag_ps / (trajectory_io.frame_interval_ps(md) * s.stride)
    if frames < 1 - 1e-6 or abs(frames - round(frames)) > 1e-6:
        raise ValueError(f"eval.tica_lag_ps {s.lag_ps} is not a whole number (>= 1) of the {md}'s strided frames "
                         f"({trajectory_io.frame_interval_ps(md)} ps x stride {s.stride})")
    lag = int(round(frames))
    data = trajectory_io.read(md, stride=s.stride)
    topology = trajectory_io.mdtraj_topology(md)
    model = fit_tica(data["positions_nm"], lag=lag, dim=s.dim, koopman=True, topology=topology,
                     n_segments=n_segments)
    out = outputs.one("tica")
    model.save(out)  # atomic (proseflow.artefacts)
    log.info("TICA of %s: %d frames (stride %d), lag %d frames (%g ps) -> %s", md, len(data["positions_nm"]),
             s.stride, lag, s.lag_ps, out)


def run_evaluate(s: S.EvaluateSettings, inputs: Files, outputs: Files) -> None:
    """Metrics of every sampler of one system against its reference MD; JSON + self-contained HTML page."""
    import platform

    import numpy as np

    from proseflow.artefacts import save_json
    from proseflow.evaluation.evaluate import (
        noise_floor,
        project,
        reference,
        reference_frames,
        sampler_metrics,
    )
    from proseflow.evaluation.registry import SAMPLER_COUNTS
    from proseflow.evaluation.tica import TicaModel
    from proseflow.physics.structures import load_pdb
    from proseflow.report.system_page import write_system_report
    from proseflow.samplers.resampling import count_distinct
    from proseflow.samplers.sample_set import SampleSet

    structure, md = inputs.one("structure"), inputs.one("md")
    topology, _ = load_pdb(structure)
    tica_model = TicaModel.load(inputs.one("tica"))
    frames = reference_frames(md, s.reference_frames)  # read once: metrics, diagnostics, viewer
    ref = reference(md, topology, tica_model, s.temperature_K, s.reference_frames, frames=frames)
    metrics, sets, meta_rows, snis = {}, {}, {}, None
    for path in inputs.many("samplers"):
        name = Path(path).stem
        d = SampleSet.load(path)
        proj = project(d.positions_nm, d.energy_kT, topology, tica_model)
        if name == "snis":  # the raw proposal is the SNIS set without its weights
            snis = d  # also read by the diagnostics and the viewer below
            metrics["proposal"] = sampler_metrics(ref, proj, None, s.n_metric, s.seed, d.n_energy_evals, s.kmeans_k)
            metrics["proposal"]["n_distinct"] = count_distinct(d.positions_nm)
            sets["proposal"] = {"energy_kT": proj.energy_kT, "weights": None, "phi_psi": proj.phi_psi,
                                "tica": proj.tica}
        metrics[name] = sampler_metrics(ref, proj, d.log_weights, s.n_metric, s.seed, d.n_energy_evals, s.kmeans_k)
        metrics[name]["ess"] = d.ess  # the sampler's own ESS (SMC: before its final resampling ...
        if d.get("n_distinct_ancestors") is not None:  # ... capped by the share of distinct ancestors
            metrics[name]["ess"] = min(d.ess, int(d.get("n_distinct_ancestors")) / len(d))
        # distinct configurations next to the ESS, so a collapsed population shows (proseflow.samplers.smc doc)
        metrics[name]["n_distinct"] = d.n_distinct
        for key in SAMPLER_COUNTS:
            if d.get(key) is not None:
                metrics[name][key] = float(d.get(key)) if key == "min_ess" else int(d.get(key))
        sets[name] = {"energy_kT": proj.energy_kT, "log_weights": d.log_weights, "phi_psi": proj.phi_psi,
                      "tica": proj.tica}
        meta_rows[f"{name}_wall_time_s"] = round(d.wall_time_s, 1)
    proposals = inputs.optional("proposals")
    diagnostics = None
    if proposals:
        prop = np.load(proposals)
        n = len(prop["log_q"])
        for key in metrics:
            metrics[key]["chirality_fixed_rate"] = float(prop["n_chirality_fixed"]) / n
            metrics[key]["chirality_unfixable_rate"] = float(prop["n_chirality_unfixable"]) / n
        if snis is not None:  # why the weights look the way they do (proseflow.evaluation.diagnostics)
            from proseflow.evaluation.diagnostics import diagnose

            diagnostics = diagnose(
                topology, s.temperature_K, frames[1], snis.positions_nm, snis.energy_kT, snis.get("log_q"),
                snis.log_weights, centroid_flow=prop["centroid_flow"] if "centroid_flow" in prop else None,
                com_correction=str(prop["com_correction"]) if "com_correction" in prop else "chi",
                drop_top_fraction=float(snis.get("drop_top_fraction")))
    train_csv = inputs.optional("train")
    train = {line.split(",")[0] for line in Path(train_csv).read_text().split()[1:]} if train_csv else set()
    seq = Path(structure).stem  # results/structures/{seq}.pdb (the MD may be at another temperature)
    model_file = inputs.optional("model") or ""
    provenance = Path(model_file).with_name("provenance.json") if model_file else None
    if provenance is not None and provenance.is_file():  # imported or shipped (proseflow.flow.checkpoint.adopt_model)
        p = json.loads(provenance.read_text())
        how = "shipped" if p.get("source") == "shipped" else "imported"
        model_source = f"{how} from {p['file']} (sha256 {p['sha256'][:12]}...), not trained in this run"
        trained = p.get("trained") or {}
        if trained:
            model_source += "; trained " + ", ".join(f"{k} {trained[k]}" for k in ("config", "commit", "steps")
                                                     if k in trained)
        if trained.get("systems") is not None:  # the shipped model's own training set, not this run's
            train = set(trained["systems"])
    else:
        model_source = "trained here" if model_file else ""
    metadata = {"sequence": seq, "model": s.model, "checkpoint": model_file, "model_source": model_source,
                "temperature_K": s.temperature_K, "reference_md": md,
                "reference_frames_used": len(ref.energy_kT), "in_training_set": seq in train,
                "tica_koopman_weighted": bool(tica_model.koopman), "tica_lag_frames": tica_model.lag_frames,
                "hardware": f"{platform.node()} {platform.processor() or platform.machine()}",
                "generated": time.strftime("%Y-%m-%d %H:%M:%S"), **meta_rows}
    viewer, states = _system_viewer(s, seq, topology, md, frames[0], ref, snis, sets)
    floor = noise_floor(md, topology, tica_model, s.temperature_K, s.n_metric)  # what the reference can resolve
    out = {"sequence": seq, "length": len(seq), "model": s.model, "metrics": metrics, "metadata": metadata,
           "diagnostics": diagnostics, "states": states, "noise_floor": floor}
    write_system_report(outputs.one("html"), {"sequence": seq, "metrics": metrics, "metadata": metadata,
                                              "diagnostics": diagnostics, "viewer": viewer, "noise_floor": floor,
                                              "reference": {"energy_kT": ref.energy_kT, "phi_psi": ref.phi_psi,
                                                            "tica": ref.tica},
                                              "samplers": sets}, summary_href=s.summary_href)
    save_json(outputs.one("json"), out)  # strict JSON, written last: it marks completion
    log.info("%s: %s", seq, json.dumps({k: {m: round(v, 4) for m, v in d.items()
                                            if m in ("ess", "energy_w2", "torus_w2", "tica_w2")}
                                        for k, d in metrics.items()}))


def _system_viewer(s: S.EvaluateSettings, seq: str, topology, md: str, frame_indices, ref, snis,
                   sets: dict) -> tuple[str | None, list | None]:
    """The page's 3D viewer of the TICA states (MD vs the SNIS-resampled set ``snis``, its sample file's arrays) and
    their summary for the JSON."""
    from proseflow.evaluation.conformations import system_conformations
    from proseflow.report.viewer import SYSTEM_CAPTION, viewer_section

    if snis is None:
        return None, None
    snis = {"positions_nm": snis.positions_nm, "log_weights": snis.log_weights,
            "resampled_indices": snis.resampled_indices}
    data, states = system_conformations(topology, md, frame_indices, ref.tica, snis,
                                        sets["snis"]["tica"], s.kmeans_k, s.seed)
    html = viewer_section(data, heading="3D structures of the TICA states", caption=SYSTEM_CAPTION, name=seq)
    return html, states


def run_report(s: S.ReportSettings, inputs: Files, outputs: Files) -> None:
    """Summary page and the paper's tables (in the folder of outputs.table2)."""
    from proseflow.report.summary import write_summary

    rows = []
    evals = inputs.many("evals")
    for path in evals:
        d = json.loads(Path(path).read_text())
        for sampler, m in d["metrics"].items():
            rows.append({"sequence": d["sequence"], "length": d["length"], "model": d["model"], "sampler": sampler, **m})
    html = outputs.one("html")
    write_summary(html, Path(outputs.one("table2")).parent, rows, links=s.links)
    log.info("summary of %d systems -> %s", len(evals), html)


def run_budget(s: S.BudgetSettings, inputs: Files, outputs: Files) -> None:
    """One system: MD and flow curves at equal energy-evaluation budgets (JSON rows) and the TICA maps (npz)."""
    from proseflow.artefacts import save_json, save_npz
    from proseflow.evaluation.budget import budget_map_sets, flow_budget_curve, md_budget_curve
    from proseflow.evaluation.evaluate import reference
    from proseflow.evaluation.tica import TicaModel
    from proseflow.physics.structures import load_pdb

    md, snis_path = inputs.one("md"), inputs.one("snis")
    topology, _ = load_pdb(inputs.one("structure"))
    tica_model = TicaModel.load(inputs.one("tica"))
    seq = Path(md).stem
    ref = reference(md, topology, tica_model, s.temperature_K, s.reference_frames)
    rows = md_budget_curve(md, topology, tica_model, ref, s.budgets, s.n_metric, s.seed, sequence=seq,
                           temperature_K=s.temperature_K, kmeans_k=s.kmeans_k)
    rows += flow_budget_curve(snis_path, topology, tica_model, ref, s.budgets, s.n_metric, s.seed,
                              s.drop_top_fraction, sequence=seq, kmeans_k=s.kmeans_k)
    sets = budget_map_sets(md, snis_path, topology, tica_model, s.map_budget, s.n_metric, s.seed,
                           s.drop_top_fraction, s.temperature_K)
    viewer = _budget_viewer(s, topology, md, ref, sets, snis_path)
    save_npz(outputs.one("maps"), md_tica=sets.md_tica, flow_tica=sets.flow_tica, reference_tica=ref.tica,
             sequence=seq, map_budget=float(s.map_budget), viewer=json.dumps(viewer))
    out = save_json(outputs.one("json"), {"sequence": seq, "md": str(md), "snis": str(snis_path), "rows": rows})
    log.info("%s: %d budget rows (%d skipped) -> %s", seq, len(rows), sum(r["status"] != "ok" for r in rows), out)


def _budget_viewer(s: S.BudgetSettings, topology, md: str, ref, sets, snis_path: str) -> dict:
    """3D-viewer data of the states the short MD and the flow found at the map budget (the budget page's)."""

    from proseflow.evaluation.conformations import budget_conformations
    from proseflow.evaluation.evaluate import reference_indices
    from proseflow.samplers.sample_set import SampleSet

    positions = SampleSet.load(snis_path).positions_nm
    data, _ = budget_conformations(topology, md, reference_indices(md, s.reference_frames), ref.tica, sets,
                                   positions, s.kmeans_k, s.seed)
    return data


def run_budget_report(s: S.ReportSettings, inputs: Files, outputs: Files) -> None:
    """All systems: the budget page (Figure 1 / Figure 4 style) and CSV."""
    import numpy as np

    from proseflow.evaluation.budget import write_budget_csv
    from proseflow.report.budget_page import write_budget_page

    curves = {}
    for p in inputs.many("curves"):
        d = json.loads(Path(p).read_text())
        curves[d["sequence"]] = d["rows"]
    maps, viewers, map_budget = {}, {}, None
    for p in inputs.many("maps", default=[]):
        with np.load(p) as m:
            maps[str(m["sequence"])] = (m["md_tica"], m["flow_tica"], None, m["reference_tica"])
            map_budget = float(m["map_budget"])
            if "viewer" in m:  # 3D structures of the states (maps written before the viewer have none)
                viewers[str(m["sequence"])] = json.loads(str(m["viewer"]))
    write_budget_csv(outputs.one("csv"), curves)
    write_budget_page(outputs.one("html"), curves, maps, map_budget=map_budget, viewers=viewers)
    log.info("budget study of %d systems -> %s", len(curves), outputs.one("html"))


def run_temperature(s: S.TemperatureSettings, inputs: Files, outputs: Files) -> None:
    """The temperature-transfer page and CSV (plain vs scaled prior)."""
    from proseflow.evaluation.temperature import rows_from_evals, write_temperature_csv
    from proseflow.report.temperature_page import write_temperature_page

    rows = rows_from_evals(inputs.many("evals"), s.priors, s.sampler, page_dir=Path(outputs.one("html")).parent)
    write_temperature_csv(outputs.one("csv"), rows)
    write_temperature_page(outputs.one("html"), rows)
    log.info("temperature transfer: %d rows -> %s", len(rows), outputs.one("html"))


# stage name -> (settings stage, runner). A runner's stage name is what `proseflow run` takes.
STAGES: dict[str, tuple[str, Callable]] = {
    "sequences": ("sequences", run_sequences),
    "structure": ("structure", run_structure),
    "md": ("md", run_md),
    "dataset": ("dataset", run_dataset),
    "train": ("train", run_train),
    "import": ("import", run_import),
    "reference_file": ("reference_file", run_reference_file),
    "sample": ("sample", run_sample),
    "snis": ("snis", run_snis),
    "smc": ("smc", run_smc),
    "self_improve": ("self_improve", run_self_improve),
    "export": ("export", run_export),
    "tica": ("tica", run_tica),
    "evaluate": ("evaluate", run_evaluate),
    "report": ("report", run_report),
    "budget": ("budget", run_budget),
    "budget_report": ("report", run_budget_report),
    "temperature": ("temperature", run_temperature),
}
THREADED = {"md"}  # stages that take the job's thread count


def run(stage: str, settings_json: str, inputs: Mapping[str, Sequence[str]], outputs: Mapping[str, Sequence[str]],
        threads: int | None = None) -> None:
    """Run ``stage`` with its settings (JSON) on the named files."""
    try:
        settings_stage, runner = STAGES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(sorted(STAGES))})") from None
    s = S.from_json(settings_stage, settings_json)
    kwargs = {"threads": threads} if stage in THREADED else {}
    runner(s, Files("input", inputs), Files("output", outputs), **kwargs)
