"""Evaluation and report stages: TICA, per-system metrics and pages, the summary, MD vs flow at equal budget,
temperature transfer.

Declared as every stage is (:mod:`proseflow.stages`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    interval_ps = trajectory_io.frame_interval_ps(md)
    frames = s.lag_ps / (interval_ps * s.stride)
    if frames < 1 - 1e-6 or abs(frames - round(frames)) > 1e-6:
        raise ValueError(f"eval.tica_lag_ps {s.lag_ps} is not a whole number (>= 1) of the {md}'s strided frames "
                         f"({interval_ps} ps x stride {s.stride})")
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
    from proseflow.artefacts import save_json
    from proseflow.evaluation.registry import TABLE2
    from proseflow.report.system_page import write_system_report

    ref = _reference(s, inputs)
    metrics, sets, snis, walls = _sampler_metrics(s, ref, inputs.many("samplers"))
    diagnostics = _proposal_facts(s, ref, metrics, snis, inputs.optional("proposals"))
    metadata = _run_metadata(s, ref, inputs.optional("model") or "", inputs.optional("train"), walls)
    viewer, states = _system_viewer(s, ref.seq, ref.topology, ref.md, ref.frames[0], ref.projection, snis, sets)
    p = ref.projection
    write_system_report(outputs.one("html"), {"sequence": ref.seq, "metrics": metrics, "metadata": metadata,
                                              "diagnostics": diagnostics, "viewer": viewer,
                                              "noise_floor": ref.noise_floor,
                                              "reference": {"energy_kT": p.energy_kT, "phi_psi": p.phi_psi,
                                                            "tica": p.tica},
                                              "samplers": sets}, summary_href=s.summary_href)
    save_json(outputs.one("json"), {"sequence": ref.seq, "length": len(ref.seq), "model": s.model, "metrics": metrics,
                                    "metadata": metadata, "diagnostics": diagnostics, "states": states,
                                    "noise_floor": ref.noise_floor})  # strict JSON, written last: it marks completion
    log.info("%s: %s", ref.seq, json.dumps({k: {m: round(v, 4) for m, v in d.items() if m in TABLE2}
                                            for k, d in metrics.items()}))


@dataclass
class _Reference:
    """One system's reference: its sequence, topology, TICA model, the frames used and their projection."""

    seq: str
    md: str
    topology: Any
    tica: Any
    frames: Any  # (positions, frame indices) of the reference frames (evaluation.evaluate.reference_frames)
    projection: Any  # evaluation.evaluate.Projection of those frames
    noise_floor: dict  # evaluation.evaluate.noise_floor: what the reference resolves


def _reference(s: S.EvaluateSettings, inputs: Files) -> _Reference:
    from proseflow.evaluation.evaluate import noise_floor, reference, reference_frames
    from proseflow.evaluation.tica import TicaModel
    from proseflow.physics import trajectory_io
    from proseflow.physics.structures import load_pdb

    structure, md = inputs.one("structure"), inputs.one("md")
    topology, _ = load_pdb(structure)
    tica_model = TicaModel.load(inputs.one("tica"))
    data = trajectory_io.read(md)  # read once: metrics, diagnostics, viewer, and the noise floor
    frames = reference_frames(md, s.reference_frames, data)
    projection = reference(md, topology, tica_model, s.temperature_K, s.reference_frames, frames=frames)
    floor = noise_floor(md, topology, tica_model, s.temperature_K, s.n_metric, data)  # what the reference resolves
    # results/structures/{seq}.pdb names the system (the MD may be at another temperature)
    return _Reference(Path(structure).stem, md, topology, tica_model, frames, projection, floor)


def _sampler_metrics(s: S.EvaluateSettings, ref: _Reference, paths: list) -> tuple[dict, dict, Any, dict]:
    """Each sample set's metrics (and the raw proposal's, from the SNIS set without its weights), the projected
    sets for the page's figures, the SNIS set itself (diagnostics, viewer) and each set's wall time."""
    from proseflow.evaluation.evaluate import project, sampler_metrics
    from proseflow.evaluation.registry import SAMPLER_COUNTS
    from proseflow.samplers.resampling import count_distinct
    from proseflow.samplers.sample_set import SampleSet

    metrics, sets, walls, snis = {}, {}, {}, None
    for path in paths:
        name = Path(path).stem
        d = SampleSet.load(path)
        proj = project(d.positions_nm, d.energy_kT, ref.topology, ref.tica)
        if name == "snis":  # the raw proposal is the SNIS set without its weights
            snis = d
            metrics["proposal"] = sampler_metrics(ref.projection, proj, None, s.n_metric, s.seed, d.n_energy_evals,
                                                  s.kmeans_k)
            metrics["proposal"]["n_distinct"] = count_distinct(d.positions_nm)
            sets["proposal"] = {"energy_kT": proj.energy_kT, "weights": None, "phi_psi": proj.phi_psi,
                                "tica": proj.tica}
        m = sampler_metrics(ref.projection, proj, d.log_weights, s.n_metric, s.seed, d.n_energy_evals, s.kmeans_k)
        m["ess"] = d.ess  # the sampler's own ESS (SMC: before its final resampling ...
        if d.get("n_distinct_ancestors") is not None:  # ... capped by the share of distinct ancestors
            m["ess"] = min(d.ess, int(d.get("n_distinct_ancestors")) / len(d))
        # distinct configurations next to the ESS, so a collapsed population shows (proseflow.samplers.smc doc)
        m["n_distinct"] = d.n_distinct
        for key in SAMPLER_COUNTS:
            if d.get(key) is not None:
                m[key] = float(d.get(key)) if key == "min_ess" else int(d.get(key))
        metrics[name] = m
        sets[name] = {"energy_kT": proj.energy_kT, "log_weights": d.log_weights, "phi_psi": proj.phi_psi,
                      "tica": proj.tica}
        walls[f"{name}_wall_time_s"] = round(d.wall_time_s, 1)
    return metrics, sets, snis, walls


def _proposal_facts(s: S.EvaluateSettings, ref: _Reference, metrics: dict, snis, proposals: str | None):
    """The proposals' chirality rates (into every sampler's metrics) and why the weights look the way they do
    (proseflow.evaluation.diagnostics, from the SNIS set); None without proposals or SNIS."""
    import numpy as np

    if not proposals:
        return None
    prop = np.load(proposals)
    n = len(prop["log_q"])
    for m in metrics.values():
        m["chirality_fixed_rate"] = float(prop["n_chirality_fixed"]) / n
        m["chirality_unfixable_rate"] = float(prop["n_chirality_unfixable"]) / n
    if snis is None:
        return None
    from proseflow.evaluation.diagnostics import diagnose

    return diagnose(ref.topology, s.temperature_K, ref.frames[1], snis.positions_nm, snis.energy_kT,
                    snis.get("log_q"), snis.log_weights,
                    centroid_flow=prop["centroid_flow"] if "centroid_flow" in prop else None,
                    com_correction=str(prop["com_correction"]) if "com_correction" in prop else "chi",
                    drop_top_fraction=float(snis.get("drop_top_fraction")))


def _model_source(model_file: str, train: set) -> tuple[str, set]:
    """Where the model came from (trained here, imported or shipped: its provenance.json) and the systems it was
    trained on (a shipped model's own list, else this run's training set)."""
    provenance = Path(model_file).with_name("provenance.json") if model_file else None
    if provenance is None or not provenance.is_file():
        return ("trained here" if model_file else ""), train
    p = json.loads(provenance.read_text())  # proseflow.flow.checkpoint.adopt_model or flow.released
    how = "shipped" if p.get("source") == "shipped" else "imported"
    source = f"{how} from {p['file']} (sha256 {p['sha256'][:12]}...), not trained in this run"
    trained = p.get("trained") or {}
    if trained:
        source += "; trained " + ", ".join(f"{k} {trained[k]}" for k in ("config", "commit", "steps") if k in trained)
    return source, set(trained["systems"]) if trained.get("systems") is not None else train


def _run_metadata(s: S.EvaluateSettings, ref: _Reference, model_file: str, train_csv: str | None,
                  walls: dict) -> dict:
    import platform

    train = {line.split(",")[0] for line in Path(train_csv).read_text().split()[1:]} if train_csv else set()
    source, train = _model_source(model_file, train)
    return {"sequence": ref.seq, "model": s.model, "checkpoint": model_file, "model_source": source,
            "temperature_K": s.temperature_K, "reference_md": ref.md,
            "reference_frames_used": len(ref.projection.energy_kT), "in_training_set": ref.seq in train,
            "n_training_systems": len(train - {ref.seq}),
            "tica_koopman_weighted": bool(ref.tica.koopman), "tica_lag_frames": ref.tica.lag_frames,
            "hardware": f"{platform.node()} {platform.processor() or platform.machine()}",
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"), **walls}


def _system_viewer(s: S.EvaluateSettings, seq: str, topology, md: str, frame_indices, ref, snis,
                   sets: dict) -> tuple[str | None, list | None]:
    """The page's 3D viewer of the TICA states (MD vs the SNIS-resampled set ``snis``, its sample file's arrays) and
    their summary for the JSON."""
    from proseflow.evaluation.conformations import system_conformations
    from proseflow.report.viewer import SYSTEM_CAPTION, viewer_section

    if snis is None:
        return None, None
    snis = {"positions_nm": snis.positions_nm, "log_weights": snis.log_weights,
            "resampled_indices": snis.resampled_indices, "energy_kT": snis.energy_kT}
    data, states = system_conformations(topology, md, frame_indices, ref.tica, snis,
                                        sets["snis"]["tica"], s.kmeans_k, s.seed, reference_energy_kT=ref.energy_kT)
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
