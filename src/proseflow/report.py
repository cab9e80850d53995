"""Self-contained HTML reports and summary tables (what a user looks at).

- ``write_system_report``: one offline HTML page per test system (PNG figures embedded as base64,
  inline CSS, no external resources): energy histograms, Ramachandran plots, TICA free-energy maps,
  metrics and run-metadata tables.
- ``write_tables`` / ``write_summary``: per-system CSV, Table 2/3/4-style means per length group next
  to the paper's numbers (``PAPER_TABLE2``, ``PAPER_TABLE4``, PAPER.md section 6), and a summary page
  linking to the per-system pages ``{sequence}.html``.

Inputs are plain arrays and dicts; energies are in kT, dihedrals in radians. Dihedral layout
(``phi_psi`` [n, 2(L-1)]): phi of residues 2..L, then psi of residues 1..L-1.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.artefacts import save_text

DPI = 90
FREE_ENERGY_MAX_KT = 8.0  # colour-scale cap of the -log density maps
METRICS = ["ess", "n_distinct", "energy_w2", "torus_w2", "tica_w2", "tica_jsd", "torus_jsd", "mean_energy_kT",
           "n_samples", "n_energy_evals", "chirality_fixed_rate", "chirality_unfixable_rate"]
LABELS = {"ess": "ESS", "n_distinct": "distinct samples", "energy_w2": "E-W2", "torus_w2": "T-W2", "tica_w2": "TICA-W2",
          "tica_jsd": "TICA-JSD", "torus_jsd": "Torus-JSD", "mean_energy_kT": "mean E (kT)",
          "n_samples": "samples", "n_energy_evals": "energy evals",
          "chirality_fixed_rate": "chirality fixed", "chirality_unfixable_rate": "chirality unfixable"}
HIGHER_IS_BETTER = {"ess"}
LOWER_IS_BETTER = {"energy_w2", "torus_w2", "tica_w2", "tica_jsd", "torus_jsd"}
INTEGER_METRICS = {"n_samples", "n_energy_evals", "n_distinct"}
TABLE2_METRICS = ["ess", "energy_w2", "torus_w2", "tica_w2"]
TABLE4_METRICS = ["energy_w2", "torus_w2", "tica_w2"]
DEFAULT_MODEL = "prose"  # rows without a model key belong to it; Table 4 uses its rows
UNWEIGHTED = {"proposal"}  # samplers that are not reweighted (plus names starting with "md")

NA = None  # "-" in the paper
# PAPER.md section 6, Table 2 (SNIS, 1e4 energy evaluations): model -> group -> (ESS, E-W2, T-W2, TICA-W2)
PAPER_TABLE2 = {
    "Prose": {"2AA": (0.191, 0.371, 0.210, NA), "4AA": (0.071, 0.932, 0.752, 0.367),
              "8AA": (0.011, 10.038, 2.456, 0.988)},
    "TarFlow": {"2AA": (0.134, 0.452, 0.193, NA), "4AA": (0.045, 1.260, 0.924, 0.492),
                "8AA": (0.008, 11.298, 2.733, 1.087)},
    "ECNF++ (TBG)": {"2AA": (0.024, 3.470, 0.302, NA), "4AA": (0.008, 10.032, 1.121, 0.572),
                     "8AA": (NA, NA, NA, NA)},
    "BioEmu": {"2AA": (NA, 45.3, 1.208, NA), "4AA": (NA, 90.1, 2.037, 1.479), "8AA": (NA, 193.9, 4.638, 1.601)},
}
# PAPER.md section 6, Table 4 (1e6 evaluations, Prose proposal): sampler -> group -> (E-W2, T-W2, TICA-W2)
PAPER_TABLE4 = {
    "SNIS": {"2AA": (0.271, 0.165, NA), "4AA": (0.665, 0.613, 0.349), "8AA": (9.386, 2.012, 0.964)},
    "SMC continuous": {"2AA": (0.318, 0.177, NA), "4AA": (0.764, 0.688, 0.338), "8AA": (10.563, 2.642, 1.049)},
    "SMC discrete": {"2AA": (0.249, 0.147, NA), "4AA": (0.653, 0.721, 0.400), "8AA": (7.672, 2.524, 1.086)},
    "Self-improve + SNIS": {"2AA": (0.265, 0.171, NA), "4AA": (0.568, 0.611, 0.345),
                            "8AA": (8.886, 2.071, 0.966)},
}
# paper row name -> this pipeline's model / sampler name
PAPER_MODEL_NAMES = {"Prose": "prose", "TarFlow": "tarflow", "ECNF++ (TBG)": "ecnf", "BioEmu": "bioemu"}
PAPER_SAMPLER_NAMES = {"SNIS": "snis", "SMC continuous": "smc_ula", "SMC discrete": "smc_mala",
                       "Self-improve + SNIS": "self_improve"}

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


# ---------------------------------------------------------------- formatting helpers
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
    if metric in INTEGER_METRICS or (isinstance(value, (int, np.integer))):
        return f"{int(round(v)):,}"
    return f"{v:.{digits}g}"


def length_group(length: int) -> str:
    """Test-set group of a peptide length: 2 -> "2AA"."""
    return f"{int(length)}AA"


def _esc(x) -> str:
    return html.escape(str(x))


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _png_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(img_id: str, fig: Figure, alt: str, caption: str) -> str:
    return (f'<figure id="fig-{img_id}"><img id="{img_id}" alt="{_esc(alt)}" src="{_png_data_uri(fig)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _html_table(df: pd.DataFrame, left_cols=(), best: dict | None = None, raw_cols=()) -> str:
    """HTML table of ``df`` (index not shown; headers via LABELS); ``best``: column -> row to highlight."""
    best = best or {}
    head = "".join(f'<th class="{"l" if c in left_cols else ""}">{_esc(LABELS.get(c, c))}</th>'
                   for c in df.columns)
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        cells = []
        for c in df.columns:
            cls = "l" if c in left_cols else ("best" if best.get(c) == i else "")
            text = str(r[c]) if c in raw_cols else _esc(format_value(r[c], c))
            cells.append(f'<td class="{cls}">{text}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ---------------------------------------------------------------- data helpers
def _norm_weights(w, n: int) -> np.ndarray:
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


def _finite(x, w):
    """Rows of x (1-D or 2-D) that are all finite, with renormalised weights."""
    x = np.asarray(x, dtype=float)
    w = _norm_weights(w, len(x))
    ok = np.isfinite(x).all(axis=1) if x.ndim == 2 else np.isfinite(x)
    return x[ok], _norm_weights(w[ok], int(ok.sum()))


def is_reweighted(name: str) -> bool:
    """Samplers shown as "reweighted": everything except the raw proposal and MD baselines."""
    return name not in UNWEIGHTED and not name.startswith("md")


def best_sampler(system: dict) -> str | None:
    """Reweighted sampler with the lowest T-W2 (then highest ESS); None if there is none."""
    names = [n for n in system.get("samplers", {}) if is_reweighted(n)]
    if not names:
        return None
    metrics = system.get("metrics", {})

    def key(n):
        m = metrics.get(n, {})
        tw2, ess = m.get("torus_w2", np.nan), m.get("ess", np.nan)
        return (tw2 if tw2 is not None and np.isfinite(tw2) else np.inf,
                -ess if ess is not None and np.isfinite(ess) else np.inf)

    return min(names, key=key)


def ramachandran_pairs(n_residues: int) -> list[tuple[str, int, int]]:
    """(label, phi column, psi column) for each Ramachandran panel of an L-residue peptide.

    phi_i and psi_i of the same residue i for the inner residues 2..L-1; for a dipeptide (no inner
    residue) the backbone pair (phi of residue 2, psi of residue 1)."""
    L = n_residues
    if L < 2:
        return []
    if L == 2:
        return [("phi 2 / psi 1", 0, 1)]
    return [(f"residue {i}", i - 2, (L - 1) + (i - 1)) for i in range(2, L)]


# ---------------------------------------------------------------- figures
def _energy_figure(ref_e, samplers: dict, log_density: bool):
    ref_e, ref_w = _finite(ref_e, None)
    lo, hi = np.quantile(ref_e, [0.005, 0.995]) if len(ref_e) else (0.0, 1.0)
    pad = max(hi - lo, 1.0) * 0.5
    lo, hi = lo - pad, hi + pad
    bins = np.linspace(lo, hi, 81)
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot()
    ax.hist(ref_e, bins=bins, weights=ref_w, density=True, color="0.75", label="MD reference")
    outside = {}
    for name, s in samplers.items():
        if s.get("energy_kT") is None:
            continue
        e, w = _finite(s["energy_kT"], sampler_weights(s))
        if not len(e):
            outside[name] = float("nan")  # no finite energy
            continue
        outside[name] = float(w[(e < lo) | (e > hi)].sum())
        ls = "--" if name == "proposal" else "-"
        ax.hist(e, bins=bins, weights=w, density=True, histtype="step", lw=1.5, ls=ls, label=name)
    ax.set(xlabel="energy (kT)", ylabel="density", xlim=(lo, hi))
    if log_density:
        ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper right")
    return fig, outside


def _free_energy(xy, w, extent, bins=60):
    """-log density (kT) of weighted 2-D samples on ``extent`` = (x0, x1, y0, y1), min shifted to 0."""
    xy, w = _finite(xy, w)
    h, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=[extent[:2], extent[2:]], weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(h.T)
    if np.isfinite(f).any():
        f -= f[np.isfinite(f)].min()
    return np.ma.masked_invalid(f)


def _map_grid(panels, extent, ncols, size, xlabel, ylabel, angles=False):
    """Grid of -log density maps; panels = [(title, xy, weights)]; one shared colour bar."""
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(size * ncols + 0.8, size * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    im = None
    for ax, (title, xy, w) in zip(axes, panels, strict=False):
        f = _free_energy(xy, w, extent)
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


def _tica_extent(ref):
    ref, _ = _finite(ref, None)
    lo = np.quantile(ref, 0.001, axis=0)
    hi = np.quantile(ref, 0.999, axis=0)
    pad = np.maximum(hi - lo, 1e-6) * 0.15
    return (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])


# ---------------------------------------------------------------- per-system page
def _metrics_frame(metrics: dict) -> tuple[pd.DataFrame, dict]:
    """Samplers x metrics (known metrics first), and column -> row index of the best value."""
    cols = [m for m in METRICS if any(m in d for d in metrics.values())]
    cols += sorted({k for d in metrics.values() for k in d} - set(cols))
    df = pd.DataFrame([{"sampler": n, **d} for n, d in metrics.items()], columns=["sampler"] + cols)
    best = {}
    for c in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        vals = pd.to_numeric(df[c], errors="coerce") if c in df else pd.Series(dtype=float)
        if vals.notna().sum() > 1:
            best[c] = int(vals.idxmax() if c in HIGHER_IS_BETTER else vals.idxmin())
    return df, best


def write_system_report(path_html, system: dict, *, log_energy_density: bool = False,
                        summary_href: str | None = None) -> Path:
    """Write the self-contained HTML page of one test system (see module docstring); returns its path."""
    path = Path(path_html)
    seq = system["sequence"]
    ref = system["reference"]
    samplers = system.get("samplers", {})
    metrics = system.get("metrics", {})
    meta = system.get("metadata", {})
    n_res = np.asarray(ref["phi_psi"]).shape[1] // 2 + 1
    parts = [f"<h1>{_esc(seq)} <span class='small'>({n_res} residues)</span></h1>"]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in
                  [("metrics", "Metrics"), ("fig-energy", "Energies"), ("fig-ramachandran", "Ramachandran"),
                   ("fig-tica", "TICA"), *([("diagnostics", "Diagnostics")] if system.get("diagnostics") else []),
                   ("metadata", "Run")])
    if summary_href:
        nav = f'<a href="{_esc(summary_href)}">&larr; summary</a>' + nav
    parts.append(f"<nav>{nav}</nav>")
    in_train = [v for k, v in meta.items() if k.replace(" ", "_").lower() == "in_training_set"]
    if in_train:
        parts.append(f"<p class='small'>In training set: <b>{format_value(bool(in_train[0]))}</b></p>")

    # metrics
    parts.append('<h2 id="metrics">Metrics</h2>')
    if metrics:
        df, best = _metrics_frame(metrics)
        parts.append(_html_table(df, left_cols=("sampler",), best=best)
                     + "<p class='small'>Best value per column in bold (highest ESS, lowest W2/JSD). "
                     "W2 and JSD against the MD reference; energies in kT, dihedrals in radians.</p>")
    else:
        parts.append("<p>No metrics.</p>")

    # energies
    fig, outside = _energy_figure(ref["energy_kT"], samplers, log_energy_density)
    out_txt = ", ".join(f"{_esc(n)} " + (f"{100 * f:.1f}%" if np.isfinite(f) else "(no finite energy)")
                        for n, f in outside.items())
    parts.append('<h2>Energies</h2>' + _figure(
        "energy", fig, f"Energy histograms of {seq}",
        "Energy distributions (kT) of the MD reference (grey) and of each sampler (weighted histograms; "
        "the proposal dashed, unweighted). The x-range is the reference's 0.5-99.5% quantile range widened "
        f"by half its width on each side. Probability mass outside the range: {out_txt or 'none'}."))

    # Ramachandran
    pairs = ramachandran_pairs(n_res)
    best = best_sampler(system)
    sources = [("MD", ref["phi_psi"], None)]
    for name in dict.fromkeys(n for n in ("proposal", best) if n in samplers):
        if samplers[name].get("phi_psi") is not None:
            sources.append((name, samplers[name]["phi_psi"], sampler_weights(samplers[name])))
    if pairs:
        panels = []
        for label, ci, cj in pairs:
            for name, pp, w in sources:
                pp = np.asarray(pp, dtype=float)
                panels.append((f"{name}: {label}", pp[:, [ci, cj]], w))
        fig = _map_grid(panels, (-np.pi, np.pi, -np.pi, np.pi), len(sources), 2.4, "phi", "psi", angles=True)
        pairing = ("the backbone pair phi of residue 2 (x) and psi of residue 1 (y)" if n_res == 2 else
                   "phi (x) and psi (y) of the same residue, for each inner residue 2..L-1")
        parts.append('<h2>Ramachandran plots</h2>' + _figure(
            "ramachandran", fig, f"Ramachandran plots of {seq}",
            f"Free energy -log p (kT, minimum 0, capped at {FREE_ENERGY_MAX_KT:g}) of {pairing}, radians. "
            f"Columns: MD reference, proposal (unweighted) and the best reweighted sampler "
            f"(<b>{_esc(best or 'none')}</b>, lowest T-W2). White: no samples."))

    # TICA
    panels = [("MD reference", ref["tica"], None)]
    panels += [(n, s["tica"], sampler_weights(s)) for n, s in samplers.items() if s.get("tica") is not None]
    fig = _map_grid(panels, _tica_extent(ref["tica"]), min(4, len(panels)), 2.8, "TIC 1", "TIC 2")
    parts.append('<h2>TICA free energy</h2>' + _figure(
        "tica", fig, f"TICA free-energy maps of {seq}",
        "Free energy -log p (kT, minimum 0 per panel, capped at "
        f"{FREE_ENERGY_MAX_KT:g}) on the first two TICA components (fitted on the MD reference), for MD and "
        "each sampler (weighted; proposal unweighted), all on the same axes (reference 0.1-99.9% range + 15%)."))

    if system.get("diagnostics"):
        parts.append(diagnostics_html(system["diagnostics"]))

    # metadata
    parts.append('<h2 id="metadata">Run</h2>')
    md_df = pd.DataFrame({"key": list(meta), "value": [format_value(v) if not isinstance(v, str) else v
                                                       for v in meta.values()]})
    parts.append(_html_table(md_df, left_cols=("key", "value")) if meta else "<p>No metadata.</p>")

    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, _page(f"{seq} - proseflow report", "\n".join(parts)))
    return path


def diagnostics_html(diag: dict) -> str:
    """The "why do the weights look like this" section (proseflow.evaluation.diagnostics): three small tables."""
    parts = ['<h2 id="diagnostics">Diagnostics: why the weights look like this</h2>']
    terms = diag.get("energy_terms") or {}
    if terms:
        df = pd.DataFrame([{"term": k, "MD mean (kT)": v["md_mean_kT"], "proposal median (kT)": v["proposal_median_kT"],
                            "SNIS-weighted mean (kT)": v["snis_mean_kT"]} for k, v in terms.items()])
        parts.append("<h3>Energy by force term</h3>" + _html_table(df, left_cols=("term",)) +
                     "<p class='small'>Potential energy by force-field term in kT (nonbonded = Lennard-Jones + "
                     "Coulomb; implicit_solvent = GB-OBC1). A proposal median far above the MD mean in one term "
                     "points at what the flow has not learnt (bonds: bond lengths too loose).</p>")
    bonds = diag.get("bond_deviation") or {}
    if bonds:
        df = pd.DataFrame([{"element pair": k, "bonds": v["n_bonds"], "MD RMS dev (nm)": v["md_rms_nm"],
                            "proposal RMS dev (nm)": v["proposal_rms_nm"], "ratio": v["ratio"]}
                           for k, v in bonds.items()])
        parts.append("<h3>Bond lengths</h3>" + _html_table(df, left_cols=("element pair",)) +
                     "<p class='small'>RMS deviation of bond lengths from the force field's equilibrium length, "
                     "per bonded element pair; ratio = proposal / MD (1 = MD-like bond geometry).</p>")
    w = diag.get("weights") or {}
    if w:
        rows = [("samples (finite log w)", f"{w['n_samples']} ({w['n_finite']})"),
                ("variance of log w", format_value(w.get("log_weight_var"))),
                ("weight share of the top 1%", format_value(w.get("top1pct_weight_share"))),
                ("ESS without the top-weight drop", format_value(w.get("ess_no_drop")))]
        rows += [(f"ESS, {k} centre-of-mass correction", format_value(v)) for k, v in (w.get("ess") or {}).items()]
        df = pd.DataFrame({"key": [r[0] for r in rows], "value": [r[1] for r in rows]})
        parts.append("<h3>Importance weights</h3>" + _html_table(df, left_cols=("key", "value")) +
                     "<p class='small'>log w = -E/kT - log q over the proposals. A perfect proposal has variance 0 "
                     "and the top 1% hold 1% of the weight; one sample holding it all means the set has collapsed. "
                     "chi is the paper's centre-of-mass correction, gaussian the exact one (about 1.7x the ESS of "
                     "a perfect flow).</p>")
    return "\n".join(parts)


# ---------------------------------------------------------------- tables
def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if "length" not in df:
        df["length"] = df["sequence"].str.len()
    df["length"] = df["length"].fillna(df["sequence"].str.len()).astype(int)
    df["group"] = df["length"].map(length_group)
    return df


def _wide_means(df: pd.DataFrame, keys: list[str], metrics: list[str], groups: list[str]) -> pd.DataFrame:
    """Means over systems per (keys, length group), wide: one row per key,
    columns "<group> <metric>" and "<group> n" (number of systems)."""
    df = df.copy()
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce") if m in df else np.nan
    g = df.groupby(keys + ["group"], sort=False, dropna=False)
    means = g[metrics].mean()
    means["n"] = g["sequence"].nunique().astype(float)
    wide = means.unstack("group")
    out = pd.DataFrame(index=wide.index)
    for grp in groups:
        for m in metrics + ["n"]:
            out[f"{grp} {LABELS.get(m, m)}"] = wide[(m, grp)] if (m, grp) in wide else np.nan
        out[f"{grp} n"] = out[f"{grp} n"].fillna(0).astype("Int64")
    return out.reset_index()


def _paper_frame(table: dict, metrics: list[str], groups: list[str], key: str, names: dict) -> pd.DataFrame:
    recs = []
    for label, per_group in table.items():
        rec = {"source": "paper", key: names.get(label, label), "paper_label": label}
        for grp in groups:
            vals = per_group.get(grp)
            for m, v in zip(metrics, vals or [None] * len(metrics), strict=True):
                rec[f"{grp} {LABELS[m]}"] = np.nan if v is None else v
            rec[f"{grp} n"] = 30 if vals and any(v is not None for v in vals) else pd.NA
        recs.append(rec)
    out = pd.DataFrame(recs)
    return out.astype({c: "Int64" for c in out.columns if c.endswith(" n")})


def _groups(df: pd.DataFrame) -> list[str]:
    return [length_group(n) for n in sorted(df["length"].unique())]


def _with_paper(run: pd.DataFrame, paper: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    run = run.assign(source="this run", paper_label="")
    out = pd.concat([run, paper], ignore_index=True)
    cols = ["source"] + key_cols + ["paper_label"]
    return out[cols + [c for c in out.columns if c not in cols]]


def _is_default_model(df: pd.DataFrame) -> pd.Series:
    if "model" not in df:
        return pd.Series(True, index=df.index)
    return df["model"].isna() | df["model"].isin(["", DEFAULT_MODEL])


def table2(rows: list[dict]) -> pd.DataFrame:
    """Table 2 layout: rows = (model, sampler) of this run then the paper's models; means per length group."""
    df = _rows_frame(rows)
    df["model"] = df["model"].fillna(DEFAULT_MODEL) if "model" in df else DEFAULT_MODEL
    groups = _groups(df)
    # distinct samples beside the ESS (this run only): a set collapsed onto a few configurations shows as such
    run = _wide_means(df, ["model", "sampler"], TABLE2_METRICS + ["n_distinct"], groups)
    paper = _paper_frame(PAPER_TABLE2, TABLE2_METRICS, groups, "model", PAPER_MODEL_NAMES).assign(sampler="snis")
    return _with_paper(run, paper, ["model", "sampler"])


def table4(rows: list[dict]) -> pd.DataFrame | None:
    """Table 4 layout: rows = samplers of the default (prose) model, then the paper's; None if no such rows."""
    df = _rows_frame(rows)
    df = df[_is_default_model(df)]
    if df.empty:
        return None
    groups = _groups(df)
    run = _wide_means(df, ["sampler"], ["n_distinct", *TABLE4_METRICS], groups)  # an SMC collapse shows
    paper = _paper_frame(PAPER_TABLE4, TABLE4_METRICS, groups, "sampler", PAPER_SAMPLER_NAMES)
    return _with_paper(run, paper, ["sampler"])


def table3(rows: list[dict]) -> pd.DataFrame | None:
    """Model-variant table (prose, ablations, tarflow): rows carrying a ``model`` key, written only when some
    row names a model other than DEFAULT_MODEL; else None."""
    df = _rows_frame(rows)
    if _is_default_model(df).all():
        return None
    df = df[df["model"].notna()]
    return _wide_means(df, ["model", "sampler"], TABLE2_METRICS, _groups(df))


def _tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    df = _rows_frame(rows).drop(columns="group")
    sort = [c for c in ("length", "sequence", "model", "sampler") if c in df]
    front = [c for c in ("sequence", "length", "model", "sampler") if c in df]
    out = {"per_system": df.sort_values(sort, kind="stable")[front + [c for c in df.columns if c not in front]]}
    for name, fn in (("table2", table2), ("table3", table3), ("table4", table4)):
        if (t := fn(rows)) is not None:
            out[name] = t
    return out


def write_tables(tables_dir, rows: list[dict]) -> dict[str, Path]:
    """Write per_system.csv, table2.csv and (when such rows exist) table3.csv, table4.csv; returns the paths."""
    return _write_csvs(tables_dir, _tables(rows))


def _write_csvs(tables_dir, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    d = Path(tables_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, t in tables.items():
        paths[name] = d / f"{name}.csv"
        t.to_csv(paths[name], index=False)
    return paths


def _grouped_table(t: pd.DataFrame, key_cols: list[str], paper_key: str | None = None) -> str:
    """Paper-style table: key columns, then per length group a header spanning its metric columns.
    Paper rows (source == "paper") show their paper label in ``paper_key`` and are set in grey italics."""
    cols = [c for c in t.columns if c.split(" ", 1)[0].endswith("AA") and " " in c]
    groups = list(dict.fromkeys(c.split(" ", 1)[0] for c in cols))
    head1 = "".join(f'<th class="l" rowspan="2">{_esc(k)}</th>' for k in key_cols)
    head1 += "".join(f'<th colspan="{sum(c.startswith(g + " ") for c in cols)}">{g}</th>' for g in groups)
    head2 = "".join(f"<th>{_esc(c.split(' ', 1)[1])}</th>" for c in cols)
    body = []
    for _, r in t.iterrows():
        paper = r.get("source") == "paper"
        keys = [f"{r['paper_label']} (paper)" if paper and k == paper_key else r[k] for k in key_cols]
        cells = "".join(f'<td class="l">{_esc(format_value(k))}</td>' for k in keys)
        cells += "".join(f"<td>{_esc(format_value(r[c], digits=5))}</td>" for c in cols)
        body.append(f'<tr{" class=paper" if paper else ""}>{cells}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def write_summary(path_html, tables_dir, rows: list[dict], *, title: str = "proseflow summary",
                  links: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the CSV tables (``write_tables``) and a self-contained summary page linking to ``{sequence}.html``
    (and to the pages in ``links``: label -> relative href); returns the paths (keys per_system, table2,
    table3/table4 when written, html)."""
    tables = _tables(rows)
    paths = _write_csvs(tables_dir, tables)
    df = _rows_frame(rows)
    counts = ", ".join(f"{g}: {n}" for g, n in df.groupby("group", sort=False)["sequence"].nunique().items())
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>{df['sequence'].nunique()} test systems ({counts}). Means over the systems of each length "
             "group (n: systems averaged); paper rows (PAPER.md section 6, 30 systems each) in grey italics; "
             "'–': not available.</p>"]
    if links:
        parts.append("<p>Experiments: " + " · ".join(f'<a href="{_esc(href)}">{_esc(label)}</a>'
                                                    for label, href in links.items()) + "</p>")
    specs = (("table2", "Models: ESS / E-W2 / T-W2 / TICA-W2 (paper Table 2: SNIS, 1e4 energy evaluations)",
              ["model", "sampler"], "model"),
             ("table4", "Samplers with the Prose proposal (paper Table 4: 1e6 energy evaluations)",
              ["sampler"], "sampler"),
             ("table3", "Model variants (prose, ablations, TarFlow)", ["model", "sampler"], None))
    for name, caption, keys, paper_key in specs:
        if name in tables:
            parts.append(f"<h2>{_esc(caption)}</h2>" + _grouped_table(tables[name], keys, paper_key)
                         + f"<p class='small'>CSV: {_esc(paths[name].name)}</p>")
    per = tables["per_system"]
    keep = [c for c in ("sequence", "length", "model", "sampler", *TABLE2_METRICS, "tica_jsd", "torus_jsd")
            if c in per]
    per = per[keep].assign(sequence=[f'<a href="{_esc(s)}.html">{_esc(s)}</a>' for s in per["sequence"]])
    parts.append("<h2>Per-system results</h2><p>Each sequence links to its report page.</p>"
                 + _html_table(per, left_cols=("sequence", "model", "sampler"), raw_cols=("sequence",)))
    path = Path(path_html)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, _page(title, "\n".join(parts)))
    paths["html"] = path
    return paths
