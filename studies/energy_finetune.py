"""Fine-tune a trained single-system flow with the energy (reverse-KL) term mixed with likelihood.

    python studies/energy_finetune.py --workdir /work/study_aa --system AA --steps 1000 --kl-weight 1 \
        --nll-weight 1 --lr 1e-5 --out results/models/prose_kl/model.pt

Reads the trained model (``results/models/{model}/model.pt``) and the system's training frames (its
stores under ``results/dataset/train/``) from the study's working directory; writes the fine-tuned model
in the same format as ``model.pt`` (so every sampler and ``studies/checkpoint_curve.py --snapshot`` use it),
its settings and its log beside it. See :mod:`proseflow.samplers.energy_kl`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    from proseflow.samplers.energy_kl import EnergyKLConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--system", default="AA")
    ap.add_argument("--model", default="results/models/prose/model.pt")
    ap.add_argument("--out", required=True, help="output model path, relative to the workdir")
    ap.add_argument("--temperature-K", type=float, default=310.0)
    ap.add_argument("--threads", type=int, default=2)
    for f in dataclasses.fields(EnergyKLConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from proseflow.data.dataset import iterate_system_frames, store_index
    from proseflow.flow.checkpoint import load_model, save_model
    from proseflow.physics.energy_torch import TorchEnergy
    from proseflow.physics.structures import load_pdb
    from proseflow.physics.system import create_system
    from proseflow.samplers.energy_kl import finetune_energy

    torch.set_num_threads(args.threads)
    wd = args.workdir
    config = EnergyKLConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EnergyKLConfig)})
    model = load_model(wd / args.model, "cpu")
    meta = copy.deepcopy(model.meta)
    topology, _ = load_pdb(wd / "results" / "structures" / f"{args.system}.pdb")
    stores = [s for s in sorted((wd / "results" / "dataset" / "train").glob("batch*.zarr"))
              if any(r["sequence"] == args.system for r in store_index(s))]
    if not stores:
        raise SystemExit(f"no training store of {args.system} under {wd / 'results/dataset/train'}")
    # the frames exactly as the model was trained on them (same hydrogen labelling)
    frames = np.concatenate([f for s in stores for f in iterate_system_frames(s, args.system)])
    energy = TorchEnergy(create_system(topology), args.temperature_K, dtype=torch.float64)
    t0 = time.time()
    model.requires_grad_(True)
    rows = finetune_energy(model, topology, energy, frames, config, scale_nm=float(meta["scale_nm"]))
    out = wd / args.out
    meta.update(energy_kl=dataclasses.asdict(config), energy_kl_from=str(args.model),
                energy_kl_wall_s=round(time.time() - t0, 1))
    save_model(model.requires_grad_(False), out, meta)
    (out.parent / "energy_kl_log.json").write_text(json.dumps({"settings": dataclasses.asdict(config), "log": rows,
                                                               "from": str(args.model)}, indent=1))
    logging.info("fine-tuned model -> %s (%.0f s)", out, time.time() - t0)


if __name__ == "__main__":
    main()
