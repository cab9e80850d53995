"""Study: train a small Prose on one dipeptide's MD and compare its phi/psi distribution with the MD's.

Not part of CI (about 30-45 min on 2 CPU cores). Uses the library directly:
    python studies/one_dipeptide.py [--sequence AA] [--out results/studies/one_dipeptide]
Writes: md/ (replica trajectories), data.zarr, model/ (training outputs, validation NLL per dimension),
phi_psi.png (MD vs flow samples, and SNIS-reweighted samples), summary.json.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from proseflow import trajectory_io  # noqa: E402
from proseflow.dataset import write_store  # noqa: E402
from proseflow.energy import make_energy  # noqa: E402
from proseflow.md import MDProtocol, MDSystem, simulate  # noqa: E402
from proseflow.metrics import as_trajectory, backbone_dihedrals, torus_w2  # noqa: E402
from proseflow.reweight import snis  # noqa: E402
from proseflow.sampling import draw_proposals  # noqa: E402
from proseflow.structures import build_peptide  # noqa: E402
from proseflow.train import TrainConfig, load_model, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequence", default="AA")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--length-ps", type=float, default=250.0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--out", default="results/studies/one_dipeptide")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seq = args.sequence
    top, pos = build_peptide(seq)

    # 1. MD: replicas as non-interacting copies in one context (save every 1 ps, 10 ps burn-in)
    md_dir = out / "md"
    paths = [md_dir / f"{seq}_r{i}.h5" for i in range(args.replicas)]
    if not all(p.exists() for p in paths):
        protocol = MDProtocol(burn_in_ps=10.0, length_ps=args.length_ps, save_interval_ps=1.0, seed=11,
                              checkpoint_interval_s=120)
        simulate([MDSystem(p.stem, top, pos, p) for p in paths], protocol, out / ".md_work")
    frames = [trajectory_io.read(p)["positions_nm"] for p in paths]
    t_md = time.time() - t0

    # 2. Training set: replicas 1.. for training, replica 0 held out for validation
    train_store, val_store = out / "train.zarr", out / "val.zarr"
    if not train_store.exists():
        write_store(train_store, [(seq, np.concatenate(frames[1:]))], 1, topologies={seq: top})
        write_store(val_store, [(seq, frames[0])], 1, topologies={seq: top})

    # 3. Train
    config = TrainConfig(model_preset=args.preset, model={"channels": args.channels}, batch_size=32, max_steps=args.steps, lr=5e-4, val_every=500,
                         val_frames=250, checkpoint_every=250, log_every=50, seed=0, num_threads=2)
    summary = train(config, [train_store], [val_store], out / "model")
    t_train = time.time() - t0 - t_md

    # 4. Sample and reweight
    torch.set_num_threads(2)
    model = load_model(out / "model" / "model.pt")
    prop = draw_proposals(model, top, args.samples, batch_size=1000, scale_nm=config.scale_nm)
    energy = make_energy(top, 310.0, backend="torch")
    e_kT = energy.energy_kT(prop.positions_nm)
    r = snis(-e_kT, prop.log_q, rng=0)

    md_pp = backbone_dihedrals(as_trajectory(np.concatenate(frames), top))
    flow_pp = backbone_dihedrals(as_trajectory(prop.positions_nm, top))
    snis_pp = flow_pp[r.indices]
    n = min(3000, len(md_pp), len(flow_pp))
    rng = np.random.default_rng(0)
    pick = lambda a: a[rng.choice(len(a), n, replace=False)]  # noqa: E731
    tw2_flow = torus_w2(pick(md_pp), pick(flow_pp))
    tw2_snis = torus_w2(pick(md_pp), pick(snis_pp))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, pp, title in zip(axes, (md_pp, flow_pp, snis_pp), ("MD", "Prose proposal", "Prose + SNIS"), strict=True):
        ax.hist2d(pp[:, 0], pp[:, 1], bins=60, range=[[-np.pi, np.pi], [-np.pi, np.pi]], cmap="viridis",
                  density=True)
        ax.set_title(f"{seq}: {title} (n={len(pp)})")
        ax.set_xlabel("phi (residue 2) [rad]")
    axes[0].set_ylabel("psi (residue 1) [rad]")
    fig.tight_layout()
    fig.savefig(out / "phi_psi.png", dpi=90)

    result = {"sequence": seq, "md_frames": int(sum(len(f) for f in frames)), "md_wall_s": round(t_md, 1),
              "train_steps": summary["step"], "val_nll_per_dim": summary["val_nll"], "train_wall_s": round(t_train, 1),
              "preset": args.preset, "n_samples": args.samples, "ess": r.ess,
              "torus_w2_proposal": tw2_flow, "torus_w2_snis": tw2_snis,
              "chirality_fixed": prop.n_chirality_fixed, "chirality_unfixable": prop.n_chirality_unfixable,
              "wall_s": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
