"""The model file, ``model.pt``: what training, self-improvement and energy fine-tuning write, and what every
sampler loads.

A model file is a ``torch.save`` dict: ``model`` (the state dict of :class:`ProseFlow`), ``flow_config``
(:class:`FlowConfig` fields), ``features`` (the feature vocabulary the conditioning was built with),
``scale_nm`` (coordinate scale), plus what the writer adds (``train_config`` and ``step`` from training,
``self_improve`` from a self-improvement round). :func:`load_model` puts everything but the weights in
``model.meta``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from proseflow.artefacts import atomic_write
from proseflow.data import features
from proseflow.flow.model import FlowConfig, ProseFlow, set_fp32_numerics
from proseflow.physics.sequences import AMINO_ACIDS


def feature_vocabulary() -> dict:
    """What a sampler needs to build conditioning the way the training data was built."""
    return {
        "atom_names": list(features.ATOM_NAMES), "n_atom_types": features.N_ATOM_TYPES,
        "amino_acids": AMINO_ACIDS, "n_residue_types": features.N_RESIDUE_TYPES,
        "permutation_names": list(features.PERMUTATION_NAMES),
    }  # fmt: skip


def model_file(model: ProseFlow, scale_nm: float, **meta) -> dict:
    """The dict :func:`save_model` writes: the weights of ``model``, its config, the feature vocabulary,
    ``scale_nm`` and ``meta`` (a ``meta`` key overrides the defaults, except the weights)."""
    return {"flow_config": model.config.to_dict(), "features": feature_vocabulary(), "scale_nm": float(scale_nm),
            **meta, "model": model.state_dict()}


def save_model(model: ProseFlow, path: str | os.PathLike, meta: dict) -> None:
    """Write ``model.pt`` atomically: ``meta`` (flow_config, features, scale_nm default from the model) + weights."""
    meta = dict(meta)
    scale_nm = meta.pop("scale_nm", None)
    if scale_nm is None:
        scale_nm = getattr(model, "meta", {}).get("scale_nm")
    if scale_nm is None:
        raise ValueError(f"{path}: no scale_nm given and the model carries none")
    obj = model_file(model, scale_nm, **meta)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ProseFlow:
    """The model of ``model.pt`` in eval mode on ``device``, with full float32 numerics (exact inverses need
    them on GPUs with TF32). ``model.meta`` holds everything in the file but the weights."""
    set_fp32_numerics()
    state = torch.load(path, map_location=device, weights_only=True)
    model = ProseFlow(FlowConfig(**state["flow_config"])).to(device)
    model.load_state_dict(state["model"])
    model.meta = {k: v for k, v in state.items() if k != "model"}
    if not isinstance(model.meta.get("scale_nm"), int | float) or not model.meta["scale_nm"] > 0:
        raise ValueError(f"{path}: the model file has no valid coordinate scale (scale_nm: {model.meta.get('scale_nm')!r})")
    return model.eval().requires_grad_(False)


def model_scale_nm(model: ProseFlow) -> float:
    """The coordinate scale (nm per flow unit) the model was trained with: the model file's ``scale_nm``, the one
    source every consumer reads (it is 0.35 for the paper's recipe, the data's own with ``train.scale_nm: data``)."""
    meta = getattr(model, "meta", None) or {}
    if "scale_nm" not in meta:
        raise ValueError("this model carries no scale_nm: load it with proseflow.flow.checkpoint.load_model")
    return float(meta["scale_nm"])


def adopt_model(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A proseflow model file used as is (``models.<name>.file``, e.g. the AA model shipped in ``models/aa``):
    loaded once to check it is one (architecture, weights, coordinate scale), then copied byte for byte to
    ``out`` with ``provenance.json`` beside it (the file, its sha256, and ``PROVENANCE.json`` next to the source
    when there is one: how and where it was trained). Returns ``out``."""
    import hashlib
    import json
    import shutil

    from proseflow.artefacts import save_json

    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"model file {str(src)!r} does not exist")
    try:
        model = load_model(src)
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, OSError) as e:
        raise ValueError(f"{src} is not a proseflow model file: {e}") from None
    record = {"source": "shipped", "file": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
              "arch": model.config.arch, "scale_nm": model_scale_nm(model)}
    notes = src.with_name("PROVENANCE.json")
    if notes.is_file():
        record["trained"] = json.loads(notes.read_text())
    save_json(Path(out).with_name("provenance.json"), record)
    atomic_write(out, lambda tmp: shutil.copyfile(src, tmp))  # last: its presence means the copy finished
    return Path(out)
