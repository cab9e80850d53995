"""Temperature transfer (PAPER.md section 4): a flow trained at T_train used as the proposal at T.

"scaled" prior: z ~ N(0, (T / T_train) I), i.e. q_z^beta with beta = T_train / T, so the prior std is
sqrt(T / T_train); "plain" prior: z ~ N(0, I). Either way the proposals are reweighted to E/kT at T
(the sampling stage takes the prior std; SNIS takes the target temperature). Paper: RLMM at 310, 393,
498, 631 and 800 K.

This module gives the prior std for a mode, and the page / CSV comparing the two priors across temperatures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.artefacts import save_csv, save_text
from proseflow.samplers.prior import PRIOR_MODES, prior_std_for  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

ROW_KEYS = ("sequence", "temperature_K", "prior", "ess", "energy_w2", "torus_w2", "tica_w2")
PLOT_METRICS = ("ess", "energy_w2", "torus_w2", "tica_w2")
LINESTYLES = {"scaled": "-", "plain": "--"}


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for k in ROW_KEYS:
        if k not in df:
            df[k] = np.nan
    df = df[list(ROW_KEYS) + [c for c in df.columns if c not in ROW_KEYS]]
    return df.sort_values(["sequence", "prior", "temperature_K"], kind="stable").reset_index(drop=True)


def write_temperature_csv(path, rows) -> Path:
    return save_csv(path, _frame(rows))


def _figure_metrics(df: pd.DataFrame) -> Figure:
    """One panel per metric; a line per (sequence, prior): colour = sequence, solid = scaled, dashed = plain."""
    from proseflow.report import LABELS

    fig = Figure(figsize=(3.2 * len(PLOT_METRICS) + 1.5, 3.4), layout="constrained")
    axes = fig.subplots(1, len(PLOT_METRICS), squeeze=False)[0]
    seqs = list(dict.fromkeys(df["sequence"]))
    colors = {s: f"C{i % 10}" for i, s in enumerate(seqs)}
    for ax, metric in zip(axes, PLOT_METRICS, strict=True):
        for (seq, prior), d in df.groupby(["sequence", "prior"], sort=False):
            d = d.sort_values("temperature_K")
            x, y = d["temperature_K"].astype(float), pd.to_numeric(d[metric], errors="coerce")
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                ax.plot(x[keep], y[keep], color=colors[seq], ls=LINESTYLES.get(prior, ":"), marker="o", ms=3,
                        lw=1.3, label=f"{seq} {prior}")
        ax.set_xlabel("temperature (K)", fontsize=8)
        ax.set_ylabel(LABELS.get(metric, metric), fontsize=8)
        ax.set_title(LABELS.get(metric, metric), fontsize=9)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return fig


def write_temperature_page(path_html, rows, *, title: str = "Temperature transfer: plain vs scaled prior") -> Path:
    """Self-contained page: metric-vs-temperature panels (a line per sequence and prior) and the table of rows.

    rows: dicts {sequence, temperature_K, prior ("plain"/"scaled"), ess, energy_w2, torus_w2, tica_w2}.
    """
    from proseflow.report import _esc, _figure, _html_table, _page

    df = _frame(rows)
    parts = [f"<h1>{_esc(title)}</h1>",
             "<p>Flow trained at T_train, used as the SNIS proposal at each target temperature T and reweighted to "
             "E/kT at T. Plain prior: z ~ N(0, I); scaled prior: z ~ N(0, (T/T_train) I). Metrics against reference "
             "MD at T (energies in kT, dihedrals in radians).</p>"]
    if len(df):
        parts.append(_figure("temperature", _figure_metrics(df), "Metrics versus temperature, plain vs scaled prior",
                             "ESS (higher is better) and E-W2, T-W2, TICA-W2 (lower is better) versus target "
                             "temperature. Colour: sequence; solid: scaled prior; dashed: plain prior."))
        means = (df.groupby(["prior", "temperature_K"], sort=True)[list(PLOT_METRICS)]
                 .mean(numeric_only=True).reset_index())
        parts.append("<h2>Mean over sequences</h2>" + _html_table(means, left_cols=("prior",)))
        parts.append("<h2>All rows</h2>" + _html_table(df[list(ROW_KEYS)], left_cols=("sequence", "prior")))
    else:
        parts.append("<p>No rows.</p>")
    return save_text(path_html, _page(title, "\n".join(parts)))


def rows_from_evals(eval_paths, priors, sampler: str = "snis") -> list[dict]:
    """Rows from ``evaluate`` JSON files (sequence, metrics, metadata "temperature (K)") and their prior modes."""
    if len(eval_paths) != len(priors):
        raise ValueError(f"{len(eval_paths)} evaluation files but {len(priors)} priors")
    rows = []
    for path, prior in zip(eval_paths, priors, strict=True):
        prior_std_for(1.0, 1.0, prior)  # validates the mode
        d = json.loads(Path(path).read_text())
        m = d["metrics"].get(sampler)
        if m is None:
            raise ValueError(f"{path}: no sampler {sampler!r} (has {', '.join(d['metrics'])})")
        rows.append({"sequence": d["sequence"], "temperature_K": float(d["metadata"]["temperature (K)"]),
                     "prior": prior, **{k: m.get(k, float("nan")) for k in PLOT_METRICS}})
    return rows
