"""The per-system page: metrics, energy histograms, Ramachandran and TICA free-energy maps, the 3D viewer of the
TICA states (``system["viewer"]``, a :mod:`proseflow.report.viewer` section), the weight diagnostics and the
run's metadata of one test system (``write_system_report``).

Dihedral layout (``phi_psi`` [n, 2(L-1)]): phi of residues 2..L, then psi of residues 1..L-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proseflow.artefacts import save_text
from proseflow.evaluation.registry import PAGE, better
from proseflow.report.kit import (
    FREE_ENERGY_MAX_KT,
    esc,
    figure,
    finite,
    format_value,
    html_table,
    map_grid,
    page,
    sampler_weights,
    tica_extent,
)

UNWEIGHTED = {"proposal"}  # samplers that are not reweighted (plus names starting with "md")


# display labels of the per-system JSON's metadata keys (identifiers); other keys show with spaces for "_"
METADATA_LABELS = {"temperature_K": "temperature (K)", "reference_md": "reference MD",
                   "tica_koopman_weighted": "TICA Koopman-weighted", "tica_lag_frames": "TICA lag (frames)"}


def metadata_label(key: str) -> str:
    """Display label of a metadata key: ``snis_wall_time_s`` -> "snis wall time (s)"."""
    if key in METADATA_LABELS:
        return METADATA_LABELS[key]
    if key.endswith("_wall_time_s"):
        return f"{key[:-len('_wall_time_s')]} wall time (s)"
    return key.replace("_", " ")


def is_reweighted(name: str) -> bool:
    """Samplers shown as "reweighted": everything except the raw proposal and MD baselines."""
    return name not in UNWEIGHTED and not name.startswith("md")


def best_sampler(system: dict) -> str | None:
    """Reweighted sampler with the lowest T-W2 (then highest ESS); None if there is none."""
    metrics = system.get("metrics", {})
    names = [n for n in system.get("samplers", {}) if is_reweighted(n)]
    names = [n for n in names if not collapsed(metrics.get(n, {}))] or names
    if not names:
        return None

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


def _energy_figure(ref_e, samplers: dict, log_density: bool):
    ref_e, ref_w = finite(ref_e, None)
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
        e, w = finite(s["energy_kT"], sampler_weights(s))
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


def collapsed(row: dict) -> bool:
    """A sample set that rests on a handful of configurations: fewer distinct samples than 1% of its size
    (and fewer than 10). Its figures describe those few samples, so no column marks it best."""
    n, n_distinct = row.get("n_samples"), row.get("n_distinct")
    if n is None or n_distinct is None:
        return False
    return n_distinct < max(2, min(10, 0.01 * n))


def _metrics_frame(metrics: dict) -> tuple[pd.DataFrame, dict]:
    """Samplers x metrics (known metrics first), and column -> row index of the best value (never a collapsed
    set's, :func:`collapsed`)."""
    cols = [m for m in PAGE if any(m in d for d in metrics.values())]
    cols += sorted({k for d in metrics.values() for k in d} - set(cols) - {"sampler"})
    df = pd.DataFrame([{"sampler": n + (" (collapsed)" if collapsed(d) else ""), **d} for n, d in metrics.items()],
                      columns=["sampler"] + cols)
    eligible = [not collapsed(d) for d in metrics.values()]
    best = {}
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce").where(eligible)
        if better(c) and vals.notna().sum() > 1:
            best[c] = int(vals.idxmax() if better(c) == "higher" else vals.idxmin())
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
    parts = [f"<h1>{esc(seq)} <span class='small'>({n_res} residues)</span></h1>"]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in
                  [("metrics", "Metrics"), ("fig-energy", "Energies"), ("fig-ramachandran", "Ramachandran"),
                   ("fig-tica", "TICA"), *([("viewer", "3D structures")] if system.get("viewer") else []),
                   *([("diagnostics", "Diagnostics")] if system.get("diagnostics") else []),
                   ("metadata", "Run")])
    if summary_href:
        nav = f'<a href="{esc(summary_href)}">&larr; summary</a>' + nav
    parts.append(f"<nav>{nav}</nav>")
    if "in_training_set" in meta:
        n = meta.get("n_training_systems")
        of = f" (trained on {int(n):,} other system{'s' if int(n) != 1 else ''})" if n else ""
        if meta["in_training_set"]:
            parts.append("<p class='small'>In training set: <b>yes</b> (the model was trained on this system)</p>")
        else:
            parts.append(f"<p class='small'>In training set: <b>no</b>: zero-shot, this system is not in the "
                         f"model's training set{esc(of)}</p>")
    source = str(meta.get("model_source", ""))
    if source.startswith("imported"):
        parts.append(f"<p class='small'>Model <b>{esc(str(meta.get('model', '')))}</b>: {esc(source)}"
                     " (the authors' released Prose form, proseflow.flow.released)</p>")
    elif source.startswith("shipped"):
        parts.append(f"<p class='small'>Model <b>{esc(str(meta.get('model', '')))}</b>: {esc(source)}"
                     " (a proseflow model file used as is; its provenance.json says how it was trained)</p>")

    # metrics
    parts.append('<h2 id="metrics">Metrics</h2>')
    if metrics:
        df, best = _metrics_frame(metrics)
        parts.append(html_table(df, left_cols=("sampler",), best=best)
                     + "<p class='small'>Best value per column in bold (highest ESS, lowest W2/JSD), never for a "
                     "collapsed set (fewer distinct samples than 1% of its size, and fewer than 10). "
                     "W2 and JSD against the MD reference; energies in kT, dihedrals in radians.</p>")
    else:
        parts.append("<p>No metrics.</p>")
    floor = system.get("noise_floor")
    if floor:
        parts.append(
            "<p class='small'><b>Noise floor of the reference</b> (its two halves against each other, "
            f"{int(floor['n_per_half'])} frames each, {int(floor['replicas'])} replica(s)): "
            f"E-W2 {floor['energy_w2']:.3g} kT, T-W2 {floor['torus_w2']:.3g} rad, "
            f"TICA-W2 {floor['tica_w2']:.3g}. A W2 at or below these cannot be told from the reference's own "
            "sampling noise: a longer reference MD would resolve it.</p>")

    # energies
    fig, outside = _energy_figure(ref["energy_kT"], samplers, log_energy_density)
    out_txt = ", ".join(f"{esc(n)} " + (f"{100 * f:.1f}%" if np.isfinite(f) else "(no finite energy)")
                        for n, f in outside.items())
    parts.append('<h2>Energies</h2>' + figure(
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
        fig = map_grid(panels, (-np.pi, np.pi, -np.pi, np.pi), len(sources), 2.4, "phi", "psi", angles=True)
        pairing = ("the backbone pair phi of residue 2 (x) and psi of residue 1 (y)" if n_res == 2 else
                   "phi (x) and psi (y) of the same residue, for each inner residue 2..L-1")
        parts.append('<h2>Ramachandran plots</h2>' + figure(
            "ramachandran", fig, f"Ramachandran plots of {seq}",
            f"Free energy -log p (kT, minimum 0, capped at {FREE_ENERGY_MAX_KT:g}) of {pairing}, radians. "
            f"Columns: MD reference, proposal (unweighted) and the best reweighted sampler "
            f"(<b>{esc(best or 'none')}</b>, lowest T-W2). White: no samples."))

    # TICA
    panels = [("MD reference", ref["tica"], None)]
    panels += [(n, s["tica"], sampler_weights(s)) for n, s in samplers.items() if s.get("tica") is not None]
    fig = map_grid(panels, tica_extent(ref["tica"]), min(4, len(panels)), 2.8, "TIC 1", "TIC 2")
    parts.append('<h2>TICA free energy</h2>' + figure(
        "tica", fig, f"TICA free-energy maps of {seq}",
        "Free energy -log p (kT, minimum 0 per panel, capped at "
        f"{FREE_ENERGY_MAX_KT:g}) on the first two TICA components (fitted on the MD reference), for MD and "
        "each sampler (weighted; proposal unweighted), all on the same axes (reference 0.1-99.9% range + 15%)."))

    if system.get("viewer"):  # proseflow.report.viewer's section: 3D structures of the TICA states
        parts.append(system["viewer"])

    if system.get("diagnostics"):
        parts.append(diagnostics_html(system["diagnostics"]))

    # metadata
    parts.append('<h2 id="metadata">Run</h2>')
    md_df = pd.DataFrame({"key": [metadata_label(k) for k in meta],
                          "value": [format_value(v) if not isinstance(v, str) else v for v in meta.values()]})
    parts.append(html_table(md_df, left_cols=("key", "value")) if meta else "<p>No metadata.</p>")

    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, page(f"{seq} - proseflow report", "\n".join(parts)))
    return path


def diagnostics_html(diag: dict) -> str:
    """The "why do the weights look like this" section (proseflow.evaluation.diagnostics): three small tables."""
    parts = ['<h2 id="diagnostics">Diagnostics: why the weights look like this</h2>']
    terms = diag.get("energy_terms") or {}
    if terms:
        df = pd.DataFrame([{"term": k, "MD mean (kT)": v["md_mean_kT"], "proposal median (kT)": v["proposal_median_kT"],
                            "SNIS-weighted mean (kT)": v["snis_mean_kT"]} for k, v in terms.items()])
        parts.append("<h3>Energy by force term</h3>" + html_table(df, left_cols=("term",)) +
                     "<p class='small'>Potential energy by force-field term in kT (nonbonded = Lennard-Jones + "
                     "Coulomb; implicit_solvent = GB-OBC1). A proposal median far above the MD mean in one term "
                     "points at what the flow has not learnt (bonds: bond lengths too loose).</p>")
    bonds = diag.get("bond_deviation") or {}
    if bonds:
        df = pd.DataFrame([{"element pair": k, "bonds": v["n_bonds"], "MD RMS dev (nm)": v["md_rms_nm"],
                            "proposal RMS dev (nm)": v["proposal_rms_nm"], "ratio": v["ratio"]}
                           for k, v in bonds.items()])
        parts.append("<h3>Bond lengths</h3>" + html_table(df, left_cols=("element pair",)) +
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
        parts.append("<h3>Importance weights</h3>" + html_table(df, left_cols=("key", "value")) +
                     "<p class='small'>log w = -E/kT - log q over the proposals. A perfect proposal has variance 0 "
                     "and the top 1% hold 1% of the weight; one sample holding it all means the set has collapsed. "
                     "chi is the paper's centre-of-mass correction, gaussian the exact one (about 1.7x the ESS of "
                     "a perfect flow).</p>")
    return "\n".join(parts)
