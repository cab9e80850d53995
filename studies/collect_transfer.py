"""Collect a transfer study's figures into the repository (issue 21: ``studies/2aa/all/``).

From the study's working directory (outside git): the MD manifest (every batch's systems and protocol, each
trajectory's frames, mean energy and wall time, the reference and validation MD the same way), the training curve
(``train_log.csv``, ``loss_curve.png``, ``settings.json`` of the model), ``table2.csv`` (this run beside the
paper's rows), every evaluated system's metrics (``eval_metrics.json``) and a per-system table in Markdown
(``per_system.md``: what ``studies/README.md`` quotes).

    .venv/bin/python studies/collect_transfer.py --workdir /work/study_2aa_all --model prose --out studies/2aa/all
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from proseflow.physics import trajectory_io
from proseflow.physics.system import kT_kJ_per_mol


def trajectory_facts(path: Path, root: Path) -> dict:
    data = trajectory_io.read(path)
    p = trajectory_io.protocol(path)
    e = data["energy_kJ_per_mol"].astype(np.float64) / kT_kJ_per_mol(float(p["temperature_K"]))
    return {"file": str(path.relative_to(root)), "frames": int(len(e)), "replicas": trajectory_io.segments(path),
            "mean_energy_kT": round(float(e.mean()), 2), "sd_energy_kT": round(float(e.std()), 2)}


def md_manifest(workdir: Path) -> dict:
    md = workdir / "results" / "md"
    out = {"batches": [], "reference": []}
    for split in ("train", "val"):
        for batch in sorted((md / split).glob("batch*")):
            m = json.loads((batch / "manifest.json").read_text())
            m["split"], m["batch"] = split, batch.name
            m["systems"] = [trajectory_facts(batch / f"{s}.h5", workdir) for s in m["sequences"]]
            out["batches"].append(m)
    for ref in sorted(md.glob("*.h5")):
        out["reference"].append({**trajectory_facts(ref, workdir), "protocol": trajectory_io.protocol(ref)})
    n = sum(len(b["sequences"]) for b in out["batches"] if b["split"] == "train")
    frames = sum(s["frames"] for b in out["batches"] if b["split"] == "train" for s in b["systems"])
    out["summary"] = {"train_systems": n, "train_frames": frames,
                      "val_systems": sum(len(b["sequences"]) for b in out["batches"] if b["split"] == "val"),
                      "reference_systems": len(out["reference"])}
    return out


def fmt(v, spec=".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def per_system_table(evals: dict) -> str:
    samplers = sorted({k for ev in evals.values() for k in ev["metrics"]} - {"proposal"})
    head = ["system", "in training set", "SNIS ESS", "SNIS distinct", "T-W2 proposal (rad)"]
    for s in samplers:
        head += [f"E-W2 {s} (kT)", f"T-W2 {s} (rad)", f"TICA-W2 {s}"]
    head += ["noise floor E / T / TICA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for seq, ev in sorted(evals.items()):
        m = ev["metrics"]
        row = [seq, "yes" if ev["metadata"]["in_training_set"] else "no", fmt(m["snis"]["ess"], ".2e"),
               fmt(m["snis"].get("n_distinct"), "d"), fmt(m["proposal"]["torus_w2"], ".2f")]
        for s in samplers:
            row += [fmt(m[s]["energy_w2"]), fmt(m[s]["torus_w2"], ".2f"), fmt(m[s]["tica_w2"], ".2f")]
        nf = ev.get("noise_floor") or {}
        row.append(f"{fmt(nf.get('energy_w2'), '.2f')} / {fmt(nf.get('torus_w2'), '.2f')} / "
                   f"{fmt(nf.get('tica_w2'), '.2f')}")
        rows.append(row)
        lines.append("| " + " | ".join(row) + " |")
    mean = ["**mean**", "", fmt(np.mean([evals[s]["metrics"]["snis"]["ess"] for s in evals]), ".2e"),
            fmt(float(np.mean([evals[s]["metrics"]["snis"].get("n_distinct", 0) for s in evals])), ".0f"),
            fmt(float(np.mean([evals[s]["metrics"]["proposal"]["torus_w2"] for s in evals])), ".2f")]
    for s in samplers:
        for k, spec in (("energy_w2", ".3g"), ("torus_w2", ".2f"), ("tica_w2", ".2f")):
            mean.append(fmt(float(np.mean([evals[q]["metrics"][s][k] for q in evals])), spec))
    mean.append("")
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", default="prose")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    w, out = args.workdir, args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "md_manifest.json").write_text(json.dumps(md_manifest(w), indent=1) + "\n")
    model = w / "results" / "models" / args.model
    for name in ("train_log.csv", "loss_curve.png", "settings.json"):
        if (model / name).is_file():
            shutil.copyfile(model / name, out / name)
    table = w / "results" / "tables" / "table2.csv"
    if table.is_file():
        shutil.copyfile(table, out / "table2.csv")
    evals = {}
    for page in sorted((w / "results" / "eval").glob("*.json")):
        ev = json.loads(page.read_text())
        if "metrics" in ev and "sequence" in ev:
            evals[ev["sequence"]] = {k: ev[k] for k in ("metrics", "metadata", "diagnostics", "noise_floor")
                                     if k in ev}
    (out / "eval_metrics.json").write_text(json.dumps(evals, indent=1, default=float) + "\n")
    if evals:
        (out / "per_system.md").write_text(per_system_table(evals))
        print((out / "per_system.md").read_text())
    print(f"-> {out}: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
