"""Import the authors' released Prose weights (``transferable/prose_up_to_8aa.pth``) into a proseflow model file.

Their checkpoint is a plain state dict ``{"net.<TarFlow key>": tensor}`` (a Lightning checkpoint holds the EMA
weights under ``state_dict``, also accepted). proseflow's ``arch="prose_released"`` computes the same function
(:class:`proseflow.flow.config.FlowConfig`); this module maps every key and shape onto it and refuses any
mismatch naming the key and both shapes:

- ``cond_embed.*`` -> ``embed_cond.*``; the residue-type rows reordered from their three-letter alphabetical
  vocabulary (ALA, ARG, ASN, ...) to proseflow's one-letter one (A, C, D, ...);
- per block: ``pos_embed_scale`` (one scalar times a fixed interleaved sinusoid over the channels, base 10000)
  -> the ``pos_embed`` table it equals; ``attn_mask`` buffers dropped; ``proj_out`` rows ``[log-scale, shift]``
  -> ``[shift, log-scale]``; the SwiGLU's ``[value, gate]`` halves -> ``[gate, value]``; the adaLN, attention,
  MLP and gate modules renamed (:func:`key_map`);
- their block b uses permutation key b, the same order as proseflow's ``prose`` schedule
  (:data:`PERMUTATION_KEYS`).

The head dimension is not in the weights (QK-LayerNorm spans all channels): 64 as released, or ``head_dim``.
The coordinate scale is their 0.35 nm. The model file records where it came from (``provenance``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from proseflow.flow.config import FlowConfig
from proseflow.flow.model import ProseFlow, sinusoidal

SCALE_NM = 0.35  # their precomputed_std
# their permutation keys -> proseflow's names (data.permutations), in their released block order
PERMUTATION_KEYS = {
    "n2c_backbone-first_standard": "bb_std", "n2c_residue-by-residue_standard_flip": "rbr_std_flip",
    "n2c_backbone-first_standard_flip": "bb_std_flip", "n2c_residue-by-residue_standard": "rbr_std",
    "n2c_backbone-first_variant": "bb_var", "n2c_residue-by-residue_variant_flip": "rbr_var_flip",
    "n2c_backbone-first_variant_flip": "bb_var_flip", "n2c_residue-by-residue_variant": "rbr_var",
}  # fmt: skip
# their residue-type index k (1..20) is the k-th amino acid in alphabetical order of the THREE-letter code
THREE_LETTER_ORDER = "ARNDCQEGHILKMFPSTWYV"


class WeightsMismatchError(ValueError):
    """A state dict that is not the released Prose layout (a missing, unexpected or mis-shaped key)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Their plain ``{"net.<key>": tensor}`` dict, or a Lightning checkpoint's EMA ``state_dict``, without the prefix."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"{path}: not a state dict ({type(obj).__name__})")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # Lightning: EMA weights under state_dict
        obj = obj["state_dict"]
    sd = {k.removeprefix("net."): v for k, v in obj.items() if torch.is_tensor(v)}
    if not sd or "cond_embed.atom_embed.weight" not in sd:
        raise WeightsMismatchError(f"{path}: no key 'net.cond_embed.atom_embed.weight': not a Prose checkpoint "
                           f"(first keys: {list(obj)[:5]})")
    return sd


def flow_config_from(sd: dict, head_dim: int = 64, max_atoms: int = 256) -> FlowConfig:
    """The FlowConfig of arch prose_released whose parameters have the shapes of ``sd``."""
    n_atom, c = sd["cond_embed.atom_embed.weight"].shape
    n_res = sd["cond_embed.residue_embed.weight"].shape[0]
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.0\.attn_blocks\.(\d+)\.", k))})
    if not blocks or not layers:
        raise WeightsMismatchError("no blocks.<b>.attn_blocks.<l> keys: not a Prose checkpoint")
    inner = sd["blocks.0.attn_blocks.0.mha.mha.mlp.main.0.weight"].shape[0]
    if c % head_dim:
        raise WeightsMismatchError(f"channels {c} are not a multiple of head_dim {head_dim}")
    return FlowConfig(
        arch="prose_released", channels=int(c), n_blocks=len(blocks), n_layers=len(layers), head_dim=head_dim,
        mlp_ratio=int(inner // c), n_atom_types=int(n_atom), n_residue_types=int(n_res), cond_dim=int(c),
        max_atoms=max_atoms, transition="blocks.0.attn_blocks.0.transition.adaln.to_beta.weight" in sd,
        lookahead=sd["blocks.0.proj_cond.0.weight"].shape[1] == 2 * c,
        qk_norm="blocks.0.attn_blocks.0.mha.mha.attention.q_layer_norm.weight" in sd, side_chains="released",
    )


def key_map(cfg: FlowConfig) -> dict[str, str]:
    """Their key -> proseflow's key, for every parameter whose values carry over unchanged (or re-laid by
    :func:`convert`)."""
    out = {f"cond_embed.{a}": f"embed_cond.{b}" for a, b in (
        ("atom_embed.weight", "atom.weight"), ("residue_embed.weight", "residue.weight"),
        ("mlp.0.weight", "mlp.0.weight"), ("mlp.0.bias", "mlp.0.bias"),
        ("mlp.2.weight", "mlp.2.weight"), ("mlp.2.bias", "mlp.2.bias"))}
    adaln = ("norm_cond.weight", "norm_cond.bias", "to_gamma.0.weight", "to_gamma.0.bias", "to_beta.weight")
    for b in range(cfg.n_blocks):
        t, o = f"blocks.{b}.", f"blocks.{b}."
        out[t + "pos_embed_scale"] = o + "pos_embed"
        for name in ("proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias"):
            out[t + name] = o + name
        for name in ("0.weight", "0.bias", "2.weight", "2.bias") if cfg.lookahead else ("weight", "bias"):
            out[t + "proj_cond." + name] = o + "proj_cond." + name
        for layer in range(cfg.n_layers):
            tl, ol = f"{t}attn_blocks.{layer}.", f"{o}layers.{layer}."
            for name in adaln:
                out[tl + "mha.adaln." + name] = ol + "adaln_attn." + name.replace("to_gamma.0", "to_gamma")
            att = tl + "mha.mha.attention."
            for a, b_ in (("norm", "pre_norm"), ("qkv", "qkv"), ("proj", "proj"),
                          *((("q_layer_norm", "q_norm"), ("k_layer_norm", "k_norm")) if cfg.qk_norm else ())):
                for p in ("weight", "bias"):
                    out[f"{att}{a}.{p}"] = f"{ol}attn.{b_}.{p}"
            for p in ("weight", "bias"):
                out[f"{tl}mha.mha.mlp.norm.{p}"] = f"{ol}norm_mlp.{p}"
                out[f"{tl}mha.mha.mlp.main.0.{p}"] = f"{ol}mlp.net.0.{p}"
                out[f"{tl}mha.mha.mlp.main.2.{p}"] = f"{ol}mlp.net.2.{p}"
                out[f"{tl}mha.scale_output.to_adaln_zero_gamma.0.{p}"] = f"{ol}gate_attn.{p}"
            if cfg.transition:
                for name in adaln:
                    out[tl + "transition.adaln." + name] = ol + "adaln_tr." + name.replace("to_gamma.0", "to_gamma")
                out[tl + "transition.transition.swish_linear.0.weight"] = ol + "transition.gate_up.weight"
                out[tl + "transition.transition.linear_out.weight"] = ol + "transition.down.weight"
                for p in ("weight", "bias"):
                    out[f"{tl}transition.scale_output.to_adaln_zero_gamma.0.{p}"] = f"{ol}gate_tr.{p}"
    return out


def _residue_rows(weight: torch.Tensor) -> torch.Tensor:
    """Their residue-embedding rows (three-letter order) in proseflow's one-letter order; row 0 (padding) and
    rows past 20 unchanged."""
    from proseflow.physics.sequences import AMINO_ACIDS

    out = weight.clone()
    for ours, aa in enumerate(AMINO_ACIDS, start=1):
        out[ours] = weight[THREE_LETTER_ORDER.index(aa) + 1]
    return out


def convert(sd: dict[str, torch.Tensor], cfg: FlowConfig) -> dict[str, torch.Tensor]:
    """proseflow's state dict for ``cfg`` from their (prefix-free) state dict; refuses any mismatch."""
    target = {k: v for k, v in ProseFlow(cfg).state_dict().items()}
    mapping = key_map(cfg)
    ignored = {k for k in sd if k.endswith(".attn_mask")}
    unknown = sorted(set(sd) - set(mapping) - ignored)
    if unknown:
        raise WeightsMismatchError(f"unexpected key(s) in the checkpoint, not part of the released Prose: {unknown[:5]}"
                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    missing = sorted(set(mapping) - set(sd))
    if missing:
        raise WeightsMismatchError(f"key(s) missing from the checkpoint (truncated or renamed?): {missing[:5]}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    out = {}
    for theirs, ours in mapping.items():
        v = sd[theirs]
        if theirs.endswith("pos_embed_scale"):
            if v.numel() != 1:
                raise WeightsMismatchError(f"{theirs}: shape {tuple(v.shape)}, expected (1,)")
            table = sinusoidal(torch.arange(cfg.max_atoms), cfg.channels, 1e4, interleaved=True, dtype=torch.float64)
            v = table * v.double()  # float64: load_state_dict rounds it to the model's dtype
        elif theirs.endswith("residue_embed.weight"):
            v = _residue_rows(v)
        elif theirs.endswith("proj_out.weight") or theirs.endswith("proj_out.bias") \
                or theirs.endswith("swish_linear.0.weight"):
            v = torch.cat(v.chunk(2, dim=0)[::-1], dim=0)  # [log-scale, shift] -> [shift, log-scale]; value/gate
        if tuple(v.shape) != tuple(target[ours].shape):
            raise WeightsMismatchError(f"{theirs}: shape {tuple(sd[theirs].shape)} does not fit {ours} "
                               f"{tuple(target[ours].shape)} (config: channels {cfg.channels}, head_dim "
                               f"{cfg.head_dim}, max_atoms {cfg.max_atoms})")
        out[ours] = v
    not_set = sorted(set(target) - set(out))
    if not_set:
        raise WeightsMismatchError(f"proseflow keys the checkpoint does not set: {not_set[:5]}")
    return out


def load_released(path: str | os.PathLike, head_dim: int = 64, max_atoms: int = 256,
                  dtype: torch.dtype = torch.float32) -> ProseFlow:
    """A ProseFlow computing the released Prose's function, from their checkpoint file, in ``dtype`` (float64: the
    position tables keep their float64 values, as their code computes them in float64)."""
    sd = read_state_dict(path)
    cfg = flow_config_from(sd, head_dim, max_atoms)
    model = ProseFlow(cfg).to(dtype)
    model.load_state_dict(convert(sd, cfg))
    model.meta = {"scale_nm": SCALE_NM, "provenance": provenance(path)}
    return model.eval()


def provenance(path: str | os.PathLike) -> dict:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"source": "imported", "file": str(path), "sha256": digest,
            "format": "transferable-samplers Prose state dict (arch prose_released)"}


def import_weights(path: str | os.PathLike, out: str | os.PathLike, head_dim: int = 64, max_atoms: int = 256) -> Path:
    """Write ``out`` (a proseflow model file) from their checkpoint ``path``; returns ``out``."""
    from proseflow.artefacts import save_json
    from proseflow.flow.checkpoint import feature_vocabulary, save_model

    model = load_released(path, head_dim, max_atoms)
    meta = {"flow_config": model.config.to_dict(), "features": feature_vocabulary(), "scale_nm": SCALE_NM,
            "provenance": model.meta["provenance"]}
    save_json(Path(out).with_name("provenance.json"), model.meta["provenance"])  # beside it, for the pages
    save_model(model, out, meta)  # written last: its presence means the import finished
    return Path(out)
