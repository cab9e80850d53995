"""The budget page (paper Figures 1 and 4): W2 metrics of MD and of the flow + SNIS against energy evaluations
and wall time, and TICA maps at equal cost; rows from :mod:`proseflow.evaluation.budget`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.artefacts import save_text
from proseflow.evaluation.budget import SAMPLERS, budget_frame, mean_curves
from proseflow.evaluation.registry import W2, label
from proseflow.report.kit import esc, figure, html_table, map_grid, page, tica_extent

SAMPLER_LABELS = {"md": "MD", "flow": "flow + SNIS"}
COLORS = {"md": "tab:blue", "flow": "tab:orange"}

def _positive(values) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool((v > 0).all())


def _curve_figure(ok: pd.DataFrame, means: pd.DataFrame | None, title: str) -> Figure:
    """2 x 3 panels: rows = x axis (budget, wall time), columns = metrics; per-system lines thin, means thick."""
    fig = Figure(figsize=(11, 6.2), layout="constrained")
    axes = fig.subplots(2, len(W2), squeeze=False)
    fig.suptitle(title, fontsize=10)
    thin = means is not None
    for row, xkey, xlabel in ((0, "budget", "energy evaluations"), (1, "wall_time_s", "wall time (s)")):
        for col, metric in enumerate(W2):
            ax = axes[row, col]
            ys = []
            for sampler in SAMPLERS:
                d = ok[ok["sampler"] == sampler]
                for i, (_, ds) in enumerate(d.groupby("sequence", sort=False)):
                    ds = ds.sort_values("budget")
                    keep = np.isfinite(ds[xkey].astype(float)) & np.isfinite(ds[metric].astype(float))
                    if not keep.any():
                        continue
                    ys.append(ds[metric][keep])
                    ax.plot(ds[xkey][keep], ds[metric][keep], color=COLORS[sampler], marker="" if thin else "o",
                            lw=0.7 if thin else 1.6, alpha=0.35 if thin else 1.0, ms=4,
                            label=None if thin or i else SAMPLER_LABELS[sampler])
                if thin:
                    dm = means[means["sampler"] == sampler].sort_values("budget")
                    keep = np.isfinite(dm[xkey].astype(float)) & np.isfinite(dm[metric].astype(float))
                    if keep.any():
                        ys.append(dm[metric][keep])
                        ax.plot(dm[xkey][keep], dm[metric][keep], color=COLORS[sampler], marker="o", lw=2.2,
                                ms=4, label=f"{SAMPLER_LABELS[sampler]} (mean)")
            has_data = bool(ys)
            if has_data:
                ax.set_xscale("log")
                if _positive(pd.concat(ys)):
                    ax.set_yscale("log")
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no data" if xkey == "budget" else "no wall time recorded",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(label(metric), fontsize=8)
            ax.tick_params(labelsize=7)
    return fig


def write_budget_page(path_html, system_curves: dict, tica_maps: dict | None = None, *,
                      map_budget: float | None = None, title: str = "MD vs flow at equal cost",
                      viewers: dict | None = None) -> Path:
    """Self-contained HTML page of the budget study (Figure 1 and Figure 4 style).

    ``system_curves``: sequence -> rows (``md_budget_curve`` + ``flow_budget_curve``). ``tica_maps``: sequence
    -> (md_tica [n, 2], flow_tica [n, 2], flow weights or None[, reference_tica [m, 2]]). ``viewers``: sequence
    -> 3D-viewer data of the states at the map budget (``evaluation.conformations.budget_conformations``),
    shown in one viewer.
    """
    df = budget_frame(system_curves)
    ok = df[df["status"] == "ok"]
    means = mean_curves(system_curves)
    seqs = list(dict.fromkeys(df["sequence"]))
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p>{len(seqs)} system(s). Cost = energy evaluations: one per MD integration step (the first B "
             "steps after burn-in), one per flow proposal (the first B proposals, SNIS redone on them). Wall time: "
             "MD from its measured steps/s, the flow from its sampling + energy time, pro rata. All W2 against "
             "evenly spaced frames of the reference MD (energies in kT, dihedrals in radians).</p>",
             '<nav><a href="#mean">Mean over systems</a><a href="#systems">Per system</a>'
             '<a href="#tica">TICA maps</a>' + ('<a href="#viewer">3D structures</a>' if viewers else '')
             + '<a href="#table">Table</a></nav>']

    parts.append('<h2 id="mean">Mean over systems</h2>')
    if len(ok):
        parts.append(figure("budget-mean", _curve_figure(ok, means, "mean over systems (thick), systems (thin)"),
                             "W2 metrics versus cost, mean over systems",
                             "E-W2, T-W2 and TICA-W2 versus energy evaluations (top) and wall time (bottom), log "
                             "axes. Thick: mean over systems at the budgets every system reached; thin: each "
                             "system. Blue: MD; orange: flow + SNIS."))
        parts.append(html_table(means, left_cols=("sampler",)))
    else:
        parts.append("<p>No budget was served.</p>")

    parts.append('<h2 id="systems">Per system</h2>')
    for i, seq in enumerate(seqs):
        d = ok[ok["sequence"] == seq]
        if len(d):
            parts.append(f"<h3>{esc(seq)}</h3>" + figure(
                f"budget-{i}", _curve_figure(d, None, str(seq)), f"W2 metrics versus cost for {seq}",
                f"{esc(seq)}: W2 metrics versus energy evaluations (top) and wall time (bottom)."))
        else:
            parts.append(f"<h3>{esc(seq)}</h3><p>No budget was served.</p>")

    parts.append('<h2 id="tica">TICA free energy at equal cost</h2>')
    budget_txt = f"{map_budget:.3g} energy evaluations" if map_budget else "the map budget"
    for i, (seq, maps) in enumerate((tica_maps or {}).items()):
        md_tica, flow_tica, weights = maps[:3]
        ref_tica = maps[3] if len(maps) > 3 else None
        panels = ([("MD reference", np.asarray(ref_tica), None)] if ref_tica is not None else [])
        panels += [(f"MD, {budget_txt}", np.asarray(md_tica), None),
                   (f"flow + SNIS, {budget_txt}", np.asarray(flow_tica), weights)]
        basis = ref_tica if ref_tica is not None else np.concatenate([np.asarray(md_tica), np.asarray(flow_tica)])
        fig = map_grid(panels, tica_extent(basis), len(panels), 2.8, "TIC 1", "TIC 2")
        parts.append(f"<h3>{esc(seq)}</h3>" + figure(
            f"tica-{i}", fig, f"TICA free-energy maps of {seq} at equal cost",
            f"{esc(seq)}: free energy -log p (kT, min 0) on the first two TICA components of short MD and of the "
            f"flow + SNIS (resampled) at {budget_txt} (paper Figure 4: the short MD sees fewer metastable states)."))
    if not tica_maps:
        parts.append("<p>No maps.</p>")
    if viewers:
        from proseflow.evaluation.conformations import merge_viewer_data
        from proseflow.report.viewer import BUDGET_CAPTION, viewer_section

        parts.append(viewer_section(merge_viewer_data(viewers), heading=f"3D structures at {esc(budget_txt)}",
                                    caption=BUDGET_CAPTION, name="budget"))

    parts.append('<h2 id="table">All rows</h2>')
    table_cols = ["sequence", "sampler", "budget", "status", "n_samples", "wall_time_s", "ess", *W2]
    parts.append('<div class="scroll">' + html_table(df[table_cols], left_cols=("sequence", "sampler", "status"))
                 + "</div>")

    return save_text(path_html, page(title, "\n".join(parts)))
