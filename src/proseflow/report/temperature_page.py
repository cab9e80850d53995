"""The temperature-transfer page: ESS and W2 metrics against temperature, plain vs scaled prior; rows from
:mod:`proseflow.evaluation.temperature`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.artefacts import save_text
from proseflow.evaluation.registry import TABLE2, label
from proseflow.evaluation.temperature import ROW_KEYS, temperature_frame
from proseflow.report.kit import esc, figure, html_table, page

LINESTYLES = {"scaled": "-", "plain": "--"}


def _figure_metrics(df: pd.DataFrame) -> Figure:
    """One panel per metric; a line per (sequence, prior): colour = sequence, solid = scaled, dashed = plain."""
    fig = Figure(figsize=(3.2 * len(TABLE2) + 1.5, 3.4), layout="constrained")
    axes = fig.subplots(1, len(TABLE2), squeeze=False)[0]
    seqs = list(dict.fromkeys(df["sequence"]))
    colors = {s: f"C{i % 10}" for i, s in enumerate(seqs)}
    for ax, metric in zip(axes, TABLE2, strict=True):
        for (seq, prior), d in df.groupby(["sequence", "prior"], sort=False):
            d = d.sort_values("temperature_K")
            x, y = d["temperature_K"].astype(float), pd.to_numeric(d[metric], errors="coerce")
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                ax.plot(x[keep], y[keep], color=colors[seq], ls=LINESTYLES.get(prior, ":"), marker="o", ms=3,
                        lw=1.3, label=f"{seq} {prior}")
        ax.set_xlabel("temperature (K)", fontsize=8)
        ax.set_ylabel(label(metric), fontsize=8)
        ax.set_title(label(metric), fontsize=9)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return fig


def write_temperature_page(path_html, rows, *, title: str = "Temperature transfer: plain vs scaled prior") -> Path:
    """Self-contained page: metric-vs-temperature panels (a line per sequence and prior) and the table of rows.

    rows: dicts {sequence, temperature_K, prior ("plain"/"scaled"), ess, energy_w2, torus_w2, tica_w2}.
    """
    df = temperature_frame(rows)
    parts = [f"<h1>{esc(title)}</h1>",
             "<p>Flow trained at T_train, used as the SNIS proposal at each target temperature T and reweighted to "
             "E/kT at T. Plain prior: z ~ N(0, I); scaled prior: z ~ N(0, (T/T_train) I). Metrics against reference "
             "MD at T (energies in kT, dihedrals in radians).</p>"]
    if len(df):
        parts.append(figure("temperature", _figure_metrics(df), "Metrics versus temperature, plain vs scaled prior",
                             "ESS (higher is better) and E-W2, T-W2, TICA-W2 (lower is better) versus target "
                             "temperature. Colour: sequence; solid: scaled prior; dashed: plain prior."))
        means = (df.groupby(["prior", "temperature_K"], sort=True)[list(TABLE2)]
                 .mean(numeric_only=True).reset_index())
        parts.append("<h2>Mean over sequences</h2>" + html_table(means, left_cols=("prior",)))
        cols, links = list(ROW_KEYS), ()
        if "page" in df and df["page"].notna().any():  # each evaluation's page, with its 3D structures
            df = df.assign(page=[f'<a href="{esc(h)}">metrics, maps, 3D structures</a>' if isinstance(h, str)
                                 else "–" for h in df["page"]])
            cols, links = cols + ["page"], ("page",)
        parts.append("<h2>All rows</h2>" + html_table(df[cols], left_cols=("sequence", "prior", *links),
                                                     raw_cols=links))
    else:
        parts.append("<p>No rows.</p>")
    return save_text(path_html, page(title, "\n".join(parts)))
