"""Evaluation and report stages: TICA, per-system metrics and pages, the summary, MD vs flow at equal budget,
temperature transfer.

Each stage is declared once, side by side: its settings (a dataclass that travels as JSON), the builder of
those settings from the config (standard library only: the workflow runs it when the DAG is built), and its
runner (which imports the library inside the function, so a stage loads only what it needs), registered with
:func:`proseflow.stages.settings.register`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from proseflow.samplers.prior import prior_std_for
from proseflow.stages import settings as S
from proseflow.stages._files import Files
from proseflow.stages.settings import (
    Stage,
    StageSettings,
    _temperature,
    eval_model_of,
    model_overlay,
    register,
    temperature_cases,
)

log = logging.getLogger("proseflow")


# ------------------------------------------------------------------------------------------ settings
@dataclass
class TicaSettings(StageSettings):
    stage: ClassVar[str] = "tica"
    lag_ps: float  # eval.tica_lag_ps; in frames of the reference file's own spacing (a whole number, checked)
    stride: int
    dim: int = 2


@dataclass
class EvaluateSettings(StageSettings):
    stage: ClassVar[str] = "evaluate"
    model: str  # condition: the evaluated variant
    temperature_K: float
    reference_frames: int
    n_metric: int
    kmeans_k: int
    seed: int
    summary_href: str = "summary.html"  # condition: the summary page relative to this system's page


@dataclass
class BudgetSettings(StageSettings):
    stage: ClassVar[str] = "budget"
    budgets: list
    map_budget: float
    temperature_K: float
    reference_frames: int
    n_metric: int
    kmeans_k: int
    drop_top_fraction: float
    seed: int


@dataclass
class TemperatureSettings(StageSettings):
    stage: ClassVar[str] = "temperature"
    priors: list  # condition: the prior mode of each evaluation file, in input order
    sampler: str = "snis"


@dataclass
class ReportSettings(StageSettings):
    stage: ClassVar[str] = "report"
    links: dict = field(default_factory=dict)  # label -> href of the other pages


# ------------------------------------------------------------------------------------------ builders
def _tica(config, seq=None):
    if seq is not None:
        config = model_overlay(config, eval_model_of(config, seq))
    return TicaSettings(lag_ps=float(config["eval"]["tica_lag_ps"]), stride=config["eval"]["tica_stride"])


def _evaluate(config, model=None, temperature_K=None, summary_href=None):
    config = model_overlay(config, model)
    ev = config["eval"]
    return EvaluateSettings(model=config["sampling"]["model"] if model is None else model,
                            temperature_K=_temperature(config, temperature_K), reference_frames=ev["reference_frames"],
                            n_metric=ev["n_metric"], kmeans_k=ev["kmeans_k"], seed=config["sampling"]["seed"],
                            **({} if summary_href is None else {"summary_href": summary_href}))


def _budget(config, model=None):
    config = model_overlay(config, model)
    ev, bu = config["eval"], config["budget"]
    return BudgetSettings(budgets=[float(b) for b in bu["budgets"]], map_budget=float(bu["map_budget"]),
                          temperature_K=_temperature(config, None), reference_frames=ev["reference_frames"],
                          n_metric=ev["n_metric"], kmeans_k=ev["kmeans_k"],
                          drop_top_fraction=config["sampling"]["drop_top_fraction"], seed=config["sampling"]["seed"])


def _temperature_report(config, priors=None):
    priors = [p for *_, p in temperature_cases(config)] if priors is None else list(priors)
    for p in priors:
        prior_std_for(1.0, 1.0, p)  # names an unknown prior mode
    return TemperatureSettings(priors=priors)


def _report(config, links=None):
    return ReportSettings(links=dict(links or {}))


# ------------------------------------------------------------------------------------------ runners
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
    from proseflow.evaluation.registry import SAMPLER_COUNTS, TABLE2
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
                                            if m in TABLE2}
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


register(
    Stage("tica", TicaSettings, _tica, run_tica, defaults={"dim": "two TICA components (the paper's maps)"}),
    Stage("evaluate", EvaluateSettings, _evaluate, run_evaluate, conditions=("model", "summary_href")),
    Stage("budget", BudgetSettings, _budget, run_budget),
    Stage("temperature", TemperatureSettings, _temperature_report, run_temperature,
          defaults={"sampler": "the temperature study reweights with SNIS"}),
    Stage("report", ReportSettings, _report, run_report, conditions=("links",)),
    Stage("budget_report", ReportSettings, _report, run_budget_report, conditions=("links",)),
)
