"""The summary page and the paper's tables: per-system CSV, Table 2/3/4-style means per length group next to
the paper's numbers (:mod:`proseflow.report.paper`), and a page linking to the per-system pages
``{sequence}.html`` (``write_tables``, ``write_summary``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from proseflow.artefacts import save_text
from proseflow.evaluation.registry import TABLE2, TABLE4, label
from proseflow.report.kit import esc, format_value, html_table, page
from proseflow.report.paper import PAPER_MODEL_NAMES, PAPER_SAMPLER_NAMES, PAPER_TABLE2, PAPER_TABLE4

DEFAULT_MODEL = "prose"  # rows without a model key belong to it; Table 4 uses its rows


def length_group(length: int) -> str:
    """Test-set group of a peptide length: 2 -> "2AA"."""
    return f"{int(length)}AA"


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
    df, metrics = df.copy(), list(metrics)
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce") if m in df else np.nan
    g = df.groupby(keys + ["group"], sort=False, dropna=False)
    means = g[metrics].mean()
    means["n"] = g["sequence"].nunique().astype(float)
    wide = means.unstack("group")
    out = pd.DataFrame(index=wide.index)
    for grp in groups:
        for m in metrics + ["n"]:
            out[f"{grp} {label(m)}"] = wide[(m, grp)] if (m, grp) in wide else np.nan
        out[f"{grp} n"] = out[f"{grp} n"].fillna(0).astype("Int64")
    return out.reset_index()


def _paper_frame(table: dict, metrics: list[str], groups: list[str], key: str, names: dict) -> pd.DataFrame:
    recs = []
    for paper_label, per_group in table.items():
        rec = {"source": "paper", key: names.get(paper_label, paper_label), "paper_label": paper_label}
        for grp in groups:
            vals = per_group.get(grp)
            for m, v in zip(metrics, vals or [None] * len(metrics), strict=True):
                rec[f"{grp} {label(m)}"] = np.nan if v is None else v
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
    run = _wide_means(df, ["model", "sampler"], [*TABLE2, "n_distinct"], groups)
    paper = _paper_frame(PAPER_TABLE2, TABLE2, groups, "model", PAPER_MODEL_NAMES).assign(sampler="snis")
    return _with_paper(run, paper, ["model", "sampler"])


def table4(rows: list[dict]) -> pd.DataFrame | None:
    """Table 4 layout: rows = samplers of the default (prose) model, then the paper's; None if no such rows."""
    df = _rows_frame(rows)
    df = df[_is_default_model(df)]
    if df.empty:
        return None
    groups = _groups(df)
    run = _wide_means(df, ["sampler"], ["n_distinct", *TABLE4], groups)  # an SMC collapse shows
    paper = _paper_frame(PAPER_TABLE4, TABLE4, groups, "sampler", PAPER_SAMPLER_NAMES)
    return _with_paper(run, paper, ["sampler"])


def table3(rows: list[dict]) -> pd.DataFrame | None:
    """Model-variant table (prose, ablations, tarflow): rows carrying a ``model`` key, written only when some
    row names a model other than DEFAULT_MODEL; else None."""
    df = _rows_frame(rows)
    if _is_default_model(df).all():
        return None
    df = df[df["model"].notna()]
    return _wide_means(df, ["model", "sampler"], TABLE2, _groups(df))


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
    head1 = "".join(f'<th class="l" rowspan="2">{esc(k)}</th>' for k in key_cols)
    head1 += "".join(f'<th colspan="{sum(c.startswith(g + " ") for c in cols)}">{g}</th>' for g in groups)
    head2 = "".join(f"<th>{esc(c.split(' ', 1)[1])}</th>" for c in cols)
    body = []
    for _, r in t.iterrows():
        paper = r.get("source") == "paper"
        keys = [f"{r['paper_label']} (paper)" if paper and k == paper_key else r[k] for k in key_cols]
        cells = "".join(f'<td class="l">{esc(format_value(k))}</td>' for k in keys)
        cells += "".join(f"<td>{esc(format_value(r[c], digits=5))}</td>" for c in cols)
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
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p>{df['sequence'].nunique()} test systems ({counts}). Means over the systems of each length "
             "group (n: systems averaged); paper rows (PAPER.md section 6, 30 systems each) in grey italics; "
             "'–': not available.</p>"]
    if links:
        parts.append("<p>Experiments: " + " · ".join(f'<a href="{esc(href)}">{esc(label)}</a>'
                                                    for label, href in links.items()) + "</p>")
    specs = (("table2", "Models: ESS / E-W2 / T-W2 / TICA-W2 (paper Table 2: SNIS, 1e4 energy evaluations)",
              ["model", "sampler"], "model"),
             ("table4", "Samplers with the Prose proposal (paper Table 4: 1e6 energy evaluations)",
              ["sampler"], "sampler"),
             ("table3", "Model variants (prose, ablations, TarFlow)", ["model", "sampler"], None))
    for name, caption, keys, paper_key in specs:
        if name in tables:
            parts.append(f"<h2>{esc(caption)}</h2>" + _grouped_table(tables[name], keys, paper_key)
                         + f"<p class='small'>CSV: {esc(paths[name].name)}</p>")
    per = tables["per_system"]
    keep = [c for c in ("sequence", "length", "model", "sampler", *TABLE2, "tica_jsd", "torus_jsd")
            if c in per]
    per = per[keep].assign(sequence=[f'<a href="{esc(s)}.html">{esc(s)}</a>' for s in per["sequence"]])
    parts.append("<h2>Per-system results</h2><p>Each sequence links to its report page.</p>"
                 + html_table(per, left_cols=("sequence", "model", "sampler"), raw_cols=("sequence",)))
    path = Path(path_html)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_text(path, page(title, "\n".join(parts)))
    paths["html"] = path
    return paths
