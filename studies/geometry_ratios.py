"""Bond and angle RMS deviation ratios (proposal vs reference MD) of trained models' final files, written to JSON
(what ``checkpoint_curve.py``'s ``angle_rms_ratio`` column records for new runs).

    python studies/geometry_ratios.py --workdir /work/study_aa --out studies/aa/ab/angles.json ab_diagonal ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--system", default="AA")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)

    import torch

    from proseflow.evaluation.diagnostics import angle_deviation, bond_deviation
    from proseflow.evaluation.evaluate import reference_indices
    from proseflow.flow.checkpoint import load_model, model_scale_nm
    from proseflow.physics import trajectory_io
    from proseflow.physics.structures import load_pdb
    from proseflow.samplers.proposals import draw_proposals

    torch.set_num_threads(1)
    wd = args.workdir
    top, _ = load_pdb(wd / "results" / "structures" / f"{args.system}.pdb")
    md = wd / "results" / "md" / f"{args.system}.h5"
    md_pos = trajectory_io.read(md)["positions_nm"][reference_indices(md, args.n)]
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    for m in args.models:
        model = load_model(wd / "results" / "models" / m / "model.pt")
        p = draw_proposals(model, top, args.n, batch_size=1000, scale_nm=model_scale_nm(model), seed=0, progress=False)
        a = angle_deviation(top, md_pos, p.positions_nm)
        b = bond_deviation(top, md_pos, p.positions_nm)
        out[m] = {"angle_rms_ratio": a["ratio"], "md_angle_rms_rad": a["md_rms_rad"],
                  "bond_rms_ratio_median": float(np.median([v["ratio"] for v in b.values()])), "n": args.n}
        print(m, json.dumps(out[m]))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
