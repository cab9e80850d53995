"""The HTML kit every report page is made of: one self-contained page (inline CSS, PNG figures as base64,
no external resources), tables, number formatting, and the weighted free-energy maps the pages share.

Energies are in kT, angles in radians; weights are unnormalised and may hold NaN/inf (treated as 0).
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.evaluation.registry import is_integer, label

DPI = 90


FREE_ENERGY_MAX_KT = 8.0  # colour-scale cap of the -log density maps


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}.scroll{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right;white-space:nowrap}
th{background:#f0f0f0}th[colspan]{text-align:center}td.l,th.l{text-align:left}tr.paper td{color:#666;font-style:italic}
td.best{font-weight:bold;background:#e8f4e8}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:900px}nav a{margin-right:1em}.small{font-size:.85em;color:#555}
"""


def format_value(value, metric: str | None = None, digits: int = 4) -> str:
    """Table text of one value: "–" if missing/NaN, thousands separators for counts, else ``digits`` significant."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    v = float(value)
    if not math.isfinite(v):
        return "–"
    if is_integer(metric) or (isinstance(value, (int, np.integer))):
        return f"{int(round(v)):,}"
    return f"{v:.{digits}g}"


def esc(x) -> str:
    return html.escape(str(x))


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def png_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(img_id: str, fig: Figure, alt: str, caption: str) -> str:
    return (f'<figure id="fig-{img_id}"><img id="{img_id}" alt="{esc(alt)}" src="{png_data_uri(fig)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def html_table(df: pd.DataFrame, left_cols=(), best: dict | None = None, raw_cols=()) -> str:
    """HTML table of ``df`` (index not shown; headers via LABELS); ``best``: column -> row to highlight."""
    best = best or {}
    head = "".join(f'<th class="{"l" if c in left_cols else ""}">{esc(label(c))}</th>'
                   for c in df.columns)
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        cells = []
        for c in df.columns:
            cls = "l" if c in left_cols else ("best" if best.get(c) == i else "")
            text = str(r[c]) if c in raw_cols else esc(format_value(r[c], c))
            cells.append(f'<td class="{cls}">{text}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ---------------------------------------------------------------- weights and maps
def norm_weights(w, n: int) -> np.ndarray:
    """Non-negative weights summing to 1 (uniform for None or all-zero weights)."""
    if w is not None:
        w = np.asarray(w, dtype=float)
        if np.isposinf(w).any():  # overflowed exp(log w): the infinite ones share the mass
            w = np.isposinf(w).astype(float)
        w = np.nan_to_num(w, nan=0.0, neginf=0.0).clip(min=0)
        if w.sum() > 0:
            return w / w.sum()
    return np.full(n, 1.0 / max(n, 1))


def sampler_weights(s: dict):
    """A sampler's weights: ``weights``, else softmax of ``log_weights``, else None (uniform)."""
    if s.get("weights") is not None or s.get("log_weights") is None:
        return s.get("weights")
    lw = np.asarray(s["log_weights"], dtype=float)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    return np.exp(lw - lw.max()) if np.isfinite(lw).any() else None


def finite(x, w):
    """Rows of x (1-D or 2-D) that are all finite, with renormalised weights."""
    x = np.asarray(x, dtype=float)
    w = norm_weights(w, len(x))
    ok = np.isfinite(x).all(axis=1) if x.ndim == 2 else np.isfinite(x)
    return x[ok], norm_weights(w[ok], int(ok.sum()))


def free_energy(xy, w, extent, bins=60):
    """-log density (kT) of weighted 2-D samples on ``extent`` = (x0, x1, y0, y1), min shifted to 0."""
    xy, w = finite(xy, w)
    h, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=[extent[:2], extent[2:]], weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(h.T)
    if np.isfinite(f).any():
        f -= f[np.isfinite(f)].min()
    return np.ma.masked_invalid(f)


def map_grid(panels, extent, ncols, size, xlabel, ylabel, angles=False):
    """Grid of -log density maps; panels = [(title, xy, weights)]; one shared colour bar."""
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(size * ncols + 0.8, size * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    im = None
    for ax, (title, xy, w) in zip(axes, panels, strict=False):
        f = free_energy(xy, w, extent)
        im = ax.imshow(f, origin="lower", extent=extent, aspect="auto", cmap="viridis",
                       vmin=0, vmax=FREE_ENERGY_MAX_KT)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if angles:
            ticks = [-np.pi, 0, np.pi]
            ax.set_xticks(ticks, ["-π", "0", "π"])
            ax.set_yticks(ticks, ["-π", "0", "π"])
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes.tolist(), shrink=0.8 if nrows < 3 else 0.3, label="free energy (kT)")
    return fig


def tica_extent(ref):
    ref, _ = finite(ref, None)
    lo = np.quantile(ref, 0.001, axis=0)
    hi = np.quantile(ref, 0.999, axis=0)
    pad = np.maximum(hi - lo, 1e-6) * 0.15
    return (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
