"""Backbone-state populations of a reference MD, replica by replica (what its T-W2 noise floor is made of), and
of a SNIS sample set before and after its weights (where the weight goes, and why).

The noise floor on every page is the W2 between two halves of the reference (replicas 0..R/2-1 against
R/2..R-1). When a rare basin is visited by one replica only, the halves disagree on its population and the floor
is that disagreement; this script shows it. States of the first (phi, psi) pair, Ramachandran regions in radians:
``phi > 0`` (alpha_L and C7ax), ``beta/PII`` (phi < 0, psi > 2 or psi < -2.5), ``alpha_R`` (phi < 0, -2.5 < psi < 1).

With ``--snis`` (a ``snis.npz`` of the same system) each region also gets the proposal's share, the weighted
share, the median energy and log weight of its proposals and the Kish ESS within it: a flow whose torsions are
right but whose local geometry is worse in the minor basins loses those basins to the weights.

    python studies/reference_states.py models/aa/reference_md.h5 --snis results/samples/aa/AA/snis.npz \
        --structure results/structures/AA.pdb --out studies/aa/reference_states.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REGIONS = ("phi>0", "beta/PII", "alpha_R")


def regions(phi: np.ndarray, psi: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the three backbone regions (the rest: phi < 0 with 1 < psi < 2, a bridge region)."""
    neg = phi < 0
    return {"phi>0": ~neg, "beta/PII": neg & ((psi > 2) | (psi < -2.5)), "alpha_R": neg & (psi > -2.5) & (psi < 1)}


def phi_psi(traj) -> tuple[np.ndarray, np.ndarray]:
    import mdtraj as md

    return md.compute_phi(traj)[1][:, 0], md.compute_psi(traj)[1][:, 0]


def populations(path: Path) -> dict:
    import mdtraj as md

    from proseflow.physics import trajectory_io
    from proseflow.physics.system import kT_kJ_per_mol

    phi, psi = phi_psi(md.load(str(path)))
    n_rep = trajectory_io.segments(path)
    per = len(phi) // n_rep
    rows = []
    for r in range(n_rep):
        sl = slice(r * per, (r + 1) * per)
        masks = regions(phi[sl], psi[sl])
        rows.append({"replica": r, **{k: float(m.mean()) for k, m in masks.items()}})
    halves = [rows[: n_rep // 2], rows[n_rep // 2:]]
    e_kT = trajectory_io.read(path)["energy_kJ_per_mol"] / kT_kJ_per_mol(trajectory_io.protocol(path)["temperature_K"])
    finite = np.isfinite(e_kT)
    median_e = {k: float(np.median(e_kT[m & finite])) if (m & finite).any() else None
                for k, m in regions(phi, psi).items()}
    return {"file": str(path), "frames": int(len(phi)), "replicas": int(n_rep), "per_replica": rows,
            "all": {k: float(np.mean([r[k] for r in rows])) for k in REGIONS},
            "halves": [{k: float(np.mean([r[k] for r in h])) for k in REGIONS} for h in halves],
            "median_energy_kT": median_e,
            "replicas_visiting_phi>0": int(sum(r["phi>0"] > 0.01 for r in rows))}


def weighted_regions(snis_path: Path, structure: Path) -> dict:
    """Per region of a SNIS set: proposals, their share, the weighted share, median energy (kT), median log
    weight relative to the largest, and the Kish ESS of the weights within the region."""
    import mdtraj as md

    d = np.load(snis_path)
    phi, psi = phi_psi(md.Trajectory(d["positions_nm"], md.load(str(structure)).topology))
    lw, e = d["log_weights"], d["energy_kT"]
    live = np.isfinite(lw)
    w = np.where(live, np.exp(np.where(live, lw, 0.0) - lw[live].max()), 0.0)
    out = {}
    finite = np.isfinite(e)
    for k, m in regions(phi, psi).items():
        wm = w[m & live]
        out[k] = {"n": int(m.sum()), "proposal_share": float(m.mean()), "weighted_share": float(wm.sum() / w.sum()),
                  "median_energy_kT": float(np.median(e[m & finite])) if (m & finite).any() else None,
                  "median_log_weight_below_top": float(np.median(lw[m & live]) - lw[live].max()) if wm.size else None,
                  "ess_within": float(wm.sum() ** 2 / (wm**2).sum()) if wm.sum() > 0 else 0.0}
    return {"file": str(snis_path), "n": int(len(lw)), "regions": out}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("md", type=Path)
    ap.add_argument("--snis", type=Path, help="a snis.npz of the same system")
    ap.add_argument("--structure", type=Path, help="its results/structures/<seq>.pdb (with --snis)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = populations(args.md)
    for r in result["per_replica"]:
        print(f"replica {r['replica']:3d}: " + "  ".join(f"{k} {r[k]:.3f}" for k in REGIONS))
    for name, h in zip(("first half", "second half"), result["halves"], strict=True):
        print(f"{name}: " + "  ".join(f"{k} {h[k]:.3f}" for k in REGIONS))
    print("MD median energy (kT): " + "  ".join(f"{k} {_f(v)}" for k, v in result["median_energy_kT"].items()))
    print(f"replicas with phi > 0 for more than 1% of their frames: {result['replicas_visiting_phi>0']} "
          f"of {result['replicas']}")
    if args.snis:
        result["snis"] = weighted_regions(args.snis, args.structure)
        for k, r in result["snis"]["regions"].items():
            print(f"SNIS {k:9s}: {r['n']:6d} proposals ({r['proposal_share']:.3f}), weighted {r['weighted_share']:.4f}, "
                  f"median E {_f(r['median_energy_kT'])} kT, median log w {_f(r['median_log_weight_below_top'])} "
                  f"below the top, ESS within {r['ess_within']:.1f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
