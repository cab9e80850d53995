"""Ship a study's trained model in the repository (``models/<name>/``), with its provenance.

Copies ``model.pt`` and ``settings.json`` from the study's working directory, optionally its reference MD
(re-packed with gzip, so it fits the repository's 10 MB per file), and writes ``PROVENANCE.json``: the configs,
the commit of the tree that trained it, its steps, the systems it was trained on, and the figures it reached
(the last rows of ``checkpoint_curve.py``'s ``curve.csv`` for the final model, the angle/bond ratios). The
pipeline reads ``PROVENANCE.json`` when it uses the file (``models.<name>.file``): the pages say how the model
was made and whether the system was in its training set.

    python studies/ship_model.py --workdir /work/study_aa --model aa_long --out models/aa \\
        --configs configs/study_aa.yaml configs/study_aa_long.yaml --commit $(cat /work/long_tree/COMMIT) \\
        --curve studies/aa/long/curve.csv --angles studies/aa/long/angles.json --reference results/md/AA.h5
    python studies/ship_model.py --workdir /work/study_2aa_all --model prose --out models/2aa \
        --configs configs/study_2aa_all.yaml --commit $(cat /work/tree_2aa/COMMIT) \
        --evals /work/study_2aa_all/results/eval/??.json --reference results/md/WA.h5
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024


def repack_h5(src: Path, out: Path) -> None:
    """The same HDF5 file with gzip-9 + shuffle on its large datasets and Fletcher-32 on all (h5py reads it as is)."""
    import h5py

    with h5py.File(src) as f, h5py.File(out, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            d = f[name]
            kw = {"compression": "gzip", "compression_opts": 9, "shuffle": True} if d.ndim and d.shape[0] > 10 else {}
            kw["fletcher32"] = True  # checksummed like every MD file (proseflow verify)
            g.create_dataset(name, data=d[...], **kw)
            for k, v in d.attrs.items():
                g[name].attrs[k] = v


def final_rows(curve: Path, model_path: str) -> list[dict]:
    """The curve's rows scoring the final model file (one per prior std)."""
    with open(curve, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["snapshot"].endswith(model_path)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--curve", type=Path, help="checkpoint_curve.py's curve.csv of this model (single-system study)")
    ap.add_argument("--evals", type=Path, nargs="+", default=[],
                    help="the study's results/eval/<SEQ>.json pages of this model (a transfer study): their Table 2 "
                         "metrics go into PROVENANCE.json per system")
    ap.add_argument("--angles", type=Path, help="geometry_ratios.py's angles.json")
    ap.add_argument("--reference", help="the study's reference MD (relative to --workdir) to ship beside it")
    ap.add_argument("--noise-floor", type=Path, help="checkpoint_curve.py's noise_floor.json of that reference")
    args = ap.parse_args()

    src = args.workdir / "results" / "models" / args.model
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.pt", args.out / "model.pt")
    settings = json.loads((src / "settings.json").read_text())
    (args.out / "settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
    import zarr

    trained_on = sorted({str(s) for store in settings["train_stores"]
                         for s in zarr.open_group(str(args.workdir / store), mode="r").attrs["index"]["sequence"]})
    if not args.curve and not args.evals:
        raise SystemExit("give --curve (a single-system study) or --evals (a transfer study): the figures it reached")
    rows = final_rows(args.curve, f"results/models/{args.model}/model.pt") if args.curve else []
    figures = {f"prior_std_{r['prior_std']}": {k: r[k] for k in (
        "heldout_nll_nm", "ess", "n_distinct_resampled", "snis_energy_w2", "snis_torus_w2", "snis_tica_w2",
        "proposal_torus_w2", "proposal_median_energy_kT", "bond_rms_ratio_median", "states_visited_snis")}
        for r in rows}
    for page in args.evals:  # zero-shot figures per unseen system: every sampler's Table 2 metrics
        ev = json.loads(page.read_text())
        figures.setdefault("systems", {})[ev["sequence"]] = {
            "in_training_set": ev["metadata"]["in_training_set"],
            **{name: {k: m.get(k) for k in ("ess", "n_distinct", "energy_w2", "torus_w2", "tica_w2")}
               for name, m in ev["metrics"].items()}}
    if args.angles:
        figures["geometry"] = json.loads(args.angles.read_text())[args.model]
    provenance = {"model": args.model, "config": " + ".join(args.configs), "commit": args.commit,
                  "steps": settings["steps"], "systems": trained_on, "scale_nm": settings["scale_nm"],
                  "n_parameters": settings["n_parameters"], "finished": settings.get("finished"),
                  "hardware": settings.get("hardware", {}).get("hostname"),
                  "figures_1e4_proposals": figures}
    if args.reference:
        repack_h5(args.workdir / args.reference, args.out / "reference_md.h5")
        provenance["reference_md"] = {"file": "reference_md.h5", "from": args.reference}
        if args.noise_floor:
            provenance["reference_md"]["noise_floor"] = json.loads(args.noise_floor.read_text())
    (args.out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    for f in args.out.iterdir():
        if f.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{f} is {f.stat().st_size / 1e6:.1f} MB: over the repository's 10 MB per file")
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
