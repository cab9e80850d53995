"""The A/B table of studies whose variants were scored by ``checkpoint_curve.py`` into ``<dir>/<variant>/curve.csv``
(with ``train_log.csv`` beside it): one markdown row per variant and prior std, for the final model.

    python studies/ab_table.py studies/aa/ab ab_diagonal ab_triangular ab_triangular_data
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

COLUMNS = [
    ("steps", "step", "{:,.0f}"), ("prior std", "prior_std", "{:.1f}"), ("steps/s", None, "{:.1f}"),
    ("held-out NLL/dim (nm)", "heldout_nll_nm", "{:.3f}"), ("bond RMS ratio", "bond_rms_ratio_median", "{:.2f}"),
    ("angle RMS ratio", "angle_rms_ratio", "{:.2f}"), ("proposal median E (kT)", "proposal_median_energy_kT", "{:.3g}"),
    ("SNIS ESS", "ess", "{:.2e}"), ("distinct of 1e4", "n_distinct_resampled", "{:.0f}"),
    ("E-W2 SNIS (kT)", "snis_energy_w2", "{:.3g}"), ("T-W2 proposal / SNIS (rad)", ("proposal_torus_w2", "snis_torus_w2"), "{:.2f}"),
    ("MD states: proposal / SNIS", ("states_visited_proposal", "states_visited_snis"), "{:.0%}"),
]


def rows_of(variant_dir: Path) -> list[dict]:
    with open(variant_dir / "curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    final = max(int(r["step"]) for r in rows)
    return [r for r in rows if int(r["step"]) == final and r["snapshot"].endswith("model.pt")] or \
        [r for r in rows if int(r["step"]) == final]


def steps_per_s(variant_dir: Path) -> float | None:
    log = variant_dir / "train_log.csv"
    if not log.exists():
        return None
    with open(log) as fh:
        rates = [float(r["steps_per_s"]) for r in csv.DictReader(fh) if r.get("steps_per_s")]
    return statistics.median(rates[len(rates) // 2:]) if rates else None


def cell(row: dict, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    vals = []
    for k in keys:
        v = row.get(k)
        vals.append("n/a" if v in (None, "", "None") else fmt.format(float(v)))
    return " / ".join(vals)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args(argv)
    print("| variant | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for v in args.variants:
        d = args.root / v
        if not (d / "curve.csv").exists():
            print(f"| {v} | " + " | ".join("(not run)" for _ in COLUMNS) + " |")
            continue
        rate = steps_per_s(d)
        for row in rows_of(d):
            cells = [("n/a" if rate is None else f"{rate:.1f}") if key is None else cell(row, key, fmt)
                     for _, key, fmt in COLUMNS]
            print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
