"""Prose: a transferable TarFlow over all-atom peptide coordinates (PAPER.md section 2).

One token per atom (its 3 Cartesian coordinates). The flow is a stack of ``n_blocks`` affine
autoregressive MetaBlocks; each gathers the atoms into that block's permutation, runs a causal
transformer over them and transforms token i with an affine map predicted from tokens < i:

    reverse  (latent -> data):  x_i = L_i z_i + mu_i,          logdet = +sum alpha
    forward  (data -> latent):  z_i = L_i^-1 (x_i - mu_i),     logdet = -sum alpha

with L_i = diag(exp(alpha_i)) (``affine="diagonal"``, TarFlow's form) or the lower-triangular 3x3
matrix with diagonal exp(alpha_i) and three free entries below it (``affine="triangular"``: an atom's
x, y and z are coupled, so one block can make an atom narrow along a bond of any direction). The
Jacobian of one block is block-triangular in the permuted order with these 3x3 blocks on its diagonal,
so the log-determinant is exact; the inverse of L_i is a forward substitution (:class:`Affine`).

Batch convention (one dict of tensors, see ``ProseFlow.forward``):
    mask [B, N] bool (real atoms first, padding last), atom_type / residue_type / residue_index
    [B, N] int64 (0 = padding), chain_length [B] int64, permutations [B, P, N] int64 (each row a
    permutation of range(N) with the padding indices last). Which of the P permutations a block uses
    is ``FlowConfig.permutation_order()``; the meaning of the P = 8 rows is
    :data:`proseflow.data.permutations.PERMUTATION_NAMES` (one vocabulary for the loader and the model).

Shared conditioning: the conditioning (embedding, each block's conditioning MLP, every adaLN modulation)
depends only on the system. When a batch holds copies of one system (single-system training and fine-tuning,
sampling), :meth:`ProseFlow.trim` keeps the conditioning's inputs once; the model computes it once and
broadcasting carries it to the B rows (conditioning tensors have 1 or B rows): the same numbers, without repeating that work for every frame. (Mixed batches
compute it per row: at the paper's scale a batch hardly ever repeats a system, and a varying number of
distinct systems would make a compiled step recompile.)

Padding tokens never influence real atoms (key-padding mask in attention, lookahead masked, their
affine parameters are zero so padding coordinates pass through unchanged), so a system's output does
not depend on what else is in the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from proseflow.data.permutations import PERMUTATION_NAMES  # noqa: F401
from proseflow.flow.config import AFFINE_KINDS, FlowConfig  # noqa: F401  (FlowConfig: re-exported)

SYSTEM_KEYS = ("atom_type", "residue_type", "residue_index", "chain_length")  # the conditioning's inputs


def set_fp32_numerics() -> None:
    """Full float32 matmuls (TF32 off): invertibility to ~1e-5 needs it."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def sinusoidal(values: torch.Tensor, dim: int, max_period: float = 1e4, interleaved: bool = False,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard sinusoidal features of (integer) values: [...] -> [..., dim], frequencies max_period^(-2i/dim);
    [sin, cos] halves, or sin/cos interleaved (the released Prose's layout)."""
    half = dim // 2
    dtype = dtype or torch.get_default_dtype()
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=dtype) / half)
    angles = values.to(dtype)[..., None] * freqs
    if interleaved:
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConditionEmbedding(nn.Module):
    """Per-atom conditioning: atom type, residue type, residue position and chain length -> MLP."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.dim = cfg.cond_dim
        # released form: sinusoids interleaved with base 1000, the embedding zero on padding atoms
        self.released, self.base = cfg.released, 1000.0 if cfg.released else 1e4
        self.atom = nn.Embedding(cfg.n_atom_types, cfg.cond_dim)
        self.residue = nn.Embedding(cfg.n_residue_types, cfg.cond_dim)
        self.mlp = nn.Sequential(
            nn.Linear(4 * cfg.cond_dim, cfg.channels), nn.GELU(), nn.Linear(cfg.channels, cfg.channels)
        )

    def forward(self, batch: dict) -> torch.Tensor:
        n = batch["atom_type"].shape[1]
        length = batch["chain_length"][:, None].expand(-1, n)
        dtype = self.atom.weight.dtype
        feats = [
            self.atom(batch["atom_type"]),
            self.residue(batch["residue_type"]),
            sinusoidal(batch["residue_index"], self.dim, self.base, self.released, dtype),
            sinusoidal(length, self.dim, self.base, self.released, dtype),
        ]
        out = self.mlp(torch.cat(feats, dim=-1))
        return out * (batch["atom_type"] != 0)[..., None].to(out.dtype) if self.released else out


class Permutation:
    """Gathers per-atom tensors into one of the batch permutations and scatters them back."""

    def __init__(self, index: int):
        self.index = index

    def forward(self, t: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        idx = perms[:, self.index]
        idx = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand_as(t)
        return t.gather(1, idx)

    def reverse(self, t: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        idx = perms[:, self.index]
        idx = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand_as(t)
        return torch.empty_like(t).scatter(1, idx, t)


class KVCache:
    """Keys/values of the tokens seen so far (used only while sampling); preallocated under no_grad."""

    def __init__(self, max_len: int):
        self.max_len, self.len = max_len, 0
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():  # differentiable reverse: concatenate (no in-place writes)
            self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
            self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
            return self.k, self.v
        if self.k is None:
            shape = (*k.shape[:2], self.max_len, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        t = k.shape[2]
        self.k[:, :, self.len : self.len + t] = k
        self.v[:, :, self.len : self.len + t] = v
        self.len += t
        return self.k[:, :, : self.len], self.v[:, :, : self.len]


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-LayerNorm and an explicit KV cache.

    released=True (the released Prose): a LayerNorm of its own on the input, and the QK-LayerNorm over all
    channels of q (k) before the split into heads instead of per head."""

    def __init__(self, channels: int, head_dim: int, qk_norm: bool, released: bool = False):
        super().__init__()
        self.heads, self.head_dim = channels // head_dim, head_dim
        self.pre_norm = nn.LayerNorm(channels) if released else None
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        width = channels if released else head_dim
        self.q_norm = nn.LayerNorm(width) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(width) if qk_norm else nn.Identity()
        self.cache: KVCache | None = None

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """h [B, T, C]; attn_mask bool, broadcastable to [B, heads, T, T_keys] (True = attend)."""
        b, t, c = h.shape
        if self.pre_norm is not None:
            q, k, v = self.qkv(self.pre_norm(h)).chunk(3, dim=-1)
            q, k = self.q_norm(q), self.k_norm(k)
            q, k, v = (a.view(b, t, self.heads, self.head_dim).transpose(1, 2) for a in (q, k, v))
        else:
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k = self.q_norm(q), self.k_norm(k)
        if self.cache is not None:
            k, v = self.cache.append(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """TarFlow's feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(channels, ratio * channels), nn.GELU(), nn.Linear(ratio * channels, channels)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class Transition(nn.Module):
    """SwiGLU transition: (SiLU(W_g h) * W_u h) W_o, no biases."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.gate_up = nn.Linear(channels, 2 * ratio * channels, bias=False)
        self.down = nn.Linear(ratio * channels, channels, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class AdaLN(nn.Module):
    """Shift, scale and gate from the conditioning; zero-initialised (shift = scale = 0 at start).

    gate="zero": the gate is the linear output itself, so it starts at exactly 0 (adaLN-Zero);
    gate="sigmoid": gate = sigmoid(linear output) with bias -2, starting at 0.12 (the paper's code).
    """

    GATE_BIAS = -2.0

    def __init__(self, channels: int, gate: str = "zero"):
        super().__init__()
        self.sigmoid_gate = gate == "sigmoid"
        self.norm = nn.LayerNorm(channels, elementwise_affine=False)
        self.mod = nn.Linear(channels, 3 * channels)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        if self.sigmoid_gate:
            nn.init.constant_(self.mod.bias[2 * channels :], self.GATE_BIAS)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, C], c [B or 1, T, C] -> (modulated h, gate)."""
        shift, scale, gate = self.mod(F.silu(c)).chunk(3, dim=-1)
        return self.norm(h) * (1 + scale) + shift, torch.sigmoid(gate) if self.sigmoid_gate else gate


class ReleasedAdaLN(nn.Module):
    """The released Prose's adaptive LayerNorm: LN(h) * sigmoid(W_g LN(c) + b_g) + W_b LN(c) (no bias on the shift)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=False)
        self.norm_cond = nn.LayerNorm(channels)
        self.to_gamma = nn.Linear(channels, channels)
        self.to_beta = nn.Linear(channels, channels, bias=False)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cn = self.norm_cond(c)
        return self.norm(h) * torch.sigmoid(self.to_gamma(cn)) + self.to_beta(cn)


def _gate(channels: int) -> nn.Linear:
    """A residual gate sigmoid(W c + b) of the raw block conditioning, starting at sigmoid(-2) (the released form)."""
    lin = nn.Linear(channels, channels)
    nn.init.zeros_(lin.weight)
    nn.init.constant_(lin.bias, -2.0)
    return lin


class ReleasedBlock(nn.Module):
    """One layer of the released Prose (arch="prose_released"):

        u = adaLN_a(h, c);  v = u + Attn(LN(u));  w = v + MLP(LN(v));  h += sigmoid(W_a c + b_a) * w
        h += sigmoid(W_t c + b_t) * SwiGLU(adaLN_t(h, c))        (transition, if enabled)
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        d = cfg.channels
        self.adaln_attn = ReleasedAdaLN(d)
        self.attn = Attention(d, cfg.head_dim, cfg.qk_norm, released=True)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio)
        self.gate_attn = _gate(d)
        self.adaln_tr = ReleasedAdaLN(d) if cfg.transition else None
        self.transition = Transition(d, cfg.mlp_ratio) if cfg.transition else None
        self.gate_tr = _gate(d) if cfg.transition else None

    def forward(self, h: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        u = self.adaln_attn(h, c)
        v = u + self.attn(u, attn_mask)
        h = h + torch.sigmoid(self.gate_attn(c)) * (v + self.mlp(self.norm_mlp(v)))
        if self.transition is not None:
            h = h + torch.sigmoid(self.gate_tr(c)) * self.transition(self.adaln_tr(h, c))
        return h


class Block(nn.Module):
    """One transformer layer.

    prose:   h += gate_a * AttnMLP(adaLN_a(h, c)),  AttnMLP(u) = a + MLP(LN(a)), a = Attn(u)
             h += gate_t * SwiGLU(adaLN_t(h, c))     (transition, if enabled)
    tarflow: h += Attn(LN(h));  h += MLP(LN(h))
    The attention unit is TarFlow's attention block (attention, then MLP) and Prose adds the adaLN-Zero
    conditioning around it and the transition after it (PAPER.md section 2).
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        d = cfg.channels
        self.adaptive = cfg.adaptive
        self.norm_attn = AdaLN(d, cfg.adaln_gate) if self.adaptive else nn.LayerNorm(d)
        self.attn = Attention(d, cfg.head_dim, cfg.qk_norm)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio)
        self.norm_tr = AdaLN(d, cfg.adaln_gate) if cfg.transition else None
        self.transition = Transition(d, cfg.mlp_ratio) if cfg.transition else None

    def forward(self, h: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        if self.adaptive:
            u, gate = self.norm_attn(h, c)
            a = self.attn(u, attn_mask)
            h = h + gate * (a + self.mlp(self.norm_mlp(a)))
        else:
            h = h + self.attn(self.norm_attn(h), attn_mask)
            h = h + self.mlp(self.norm_mlp(h))
        if self.transition is not None:
            u, gate = self.norm_tr(h, c)
            h = h + gate * self.transition(u)
        return h


class Affine:
    """The per-atom affine map of one block, from its parameters p [..., n_params] predicted by the trunk.

    p = (mu [3], alpha [3]) for "diagonal"; (mu, alpha, l21, l31, l32) for "triangular", where
    L = [[e^a1, 0, 0], [l21, e^a2, 0], [l31, l32, e^a3]]. Zero parameters are the identity (padding, and
    every block at initialisation). log |det L| = sum alpha for both forms.
    """

    KINDS = AFFINE_KINDS

    def __init__(self, kind: str = "diagonal"):
        self.triangular = kind == "triangular"
        self.n_params = 9 if self.triangular else 6

    def to_data(self, z: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = L z + mu; returns (x, alpha) (log |det| = alpha.sum())."""
        mu, alpha = p[..., :3], p[..., 3:6]
        s = z * torch.exp(alpha)
        if self.triangular:
            l21, l31, l32, z1, z2 = p[..., 6:7], p[..., 7:8], p[..., 8:9], z[..., 0:1], z[..., 1:2]
            s = s + torch.cat([torch.zeros_like(z1), l21 * z1, l31 * z1 + l32 * z2], dim=-1)
        return s + mu, alpha

    def to_latent(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = L^-1 (x - mu) by forward substitution; returns (z, alpha)."""
        mu, alpha = p[..., :3], p[..., 3:6]
        y, inv = x - mu, torch.exp(-alpha)
        if not self.triangular:
            return y * inv, alpha
        l21, l31, l32 = p[..., 6:7], p[..., 7:8], p[..., 8:9]
        z1 = y[..., 0:1] * inv[..., 0:1]
        z2 = (y[..., 1:2] - l21 * z1) * inv[..., 1:2]
        z3 = (y[..., 2:3] - l31 * z1 - l32 * z2) * inv[..., 2:3]
        return torch.cat([z1, z2, z3], dim=-1), alpha


class MetaBlock(nn.Module):
    """One affine autoregressive flow block: a causal transformer over one atom permutation."""

    def __init__(self, cfg: FlowConfig, perm_index: int):
        super().__init__()
        d = cfg.channels
        self.permutation = Permutation(perm_index)
        self.adaptive, self.lookahead = cfg.adaptive, cfg.lookahead
        self.grad_checkpoint = cfg.grad_checkpoint
        self.proj_in = nn.Linear(3, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_atoms, d) * 1e-2)
        cond_in = 2 * d if cfg.lookahead else d
        self.proj_cond = nn.Sequential(nn.Linear(cond_in, d), nn.GELU(), nn.Linear(d, d))
        self.layers = nn.ModuleList([(ReleasedBlock if cfg.released else Block)(cfg) for _ in range(cfg.n_layers)])
        self.norm_out = nn.Identity() if cfg.released else nn.LayerNorm(d)  # released: no norm before the output
        self.affine = Affine(cfg.affine)
        self.proj_out = nn.Linear(d, self.affine.n_params)  # the affine parameters of the *next* token
        # those of token 0, from its conditioning only (released form: token 0 is left unchanged)
        self.proj_start = None if cfg.released else nn.Linear(d, self.affine.n_params)
        for lin in (self.proj_out, self.proj_start):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    # --- pieces shared by forward and reverse -------------------------------------------------
    def conditioning(self, systems: tuple) -> torch.Tensor:
        """The conditioning, permuted -> this block's per-token conditioning [B or 1, T, C] (with lookahead:
        token i+1's too). ``systems`` = (cond [B or 1, N, C], mask [B or 1, N], permutations [B or 1, P, N])."""
        cond, mask, perms = systems
        cond, mask = (self.permutation.forward(t, perms) for t in (cond, mask))
        if self.lookahead:
            nxt = cond[:, 1:] * mask[:, 1:, None]  # padding (always last) contributes nothing
            cond = torch.cat([cond, F.pad(nxt, (0, 0, 0, 1))], dim=-1)
        return self.proj_cond(cond)

    def trunk(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor, start: int = 0):
        """Tokens x [B, T, 3] at positions start..start+T-1 -> affine parameters [B, T, P] of the next tokens."""
        h = self.proj_in(x) + self.pos_embed[start : start + x.shape[1]]
        if not self.adaptive:
            h = h + c
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute and layer.attn.cache is None:
                h = checkpoint(layer, h, c, attn_mask, use_reentrant=False)
            else:
                h = layer(h, c, attn_mask)
        return self.proj_out(self.norm_out(h))

    def start_params(self, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.proj_start is None:  # released form: token 0 unchanged
            return c.new_zeros(mask.shape[0], 1, self.affine.n_params)
        return self.proj_start(c[:, :1]) * mask[:, :1, None]  # [B, 1, P] (mask has B rows)

    def params(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced affine parameters [B, T, P] for every token: token i's from tokens < i; zero on padding."""
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        attn_mask = (causal & mask[:, None, :])[:, None]  # [B, 1, T, T]
        p = self.trunk(torch.where(mask[..., None], x, 0.0), c, attn_mask)
        return torch.cat([self.start_params(c, mask), p[:, :-1]], dim=1) * mask[..., None]

    def set_cache(self, max_len: int | None) -> None:
        for layer in self.layers:
            layer.attn.cache = None if max_len is None else KVCache(max_len)

    # --- the flow ------------------------------------------------------------------------------
    def forward(self, x, mask, perms, systems):
        x, mask = (self.permutation.forward(t, perms) for t in (x, mask))
        c = self.conditioning(systems)
        z, alpha = self.affine.to_latent(x, self.params(x, c, mask))
        return self.permutation.reverse(z, perms), -alpha.sum(dim=(1, 2))

    def reverse(self, z, mask, perms, systems, cached: bool = True):
        z, mask = (self.permutation.forward(t, perms) for t in (z, mask))
        c = self.conditioning(systems)
        x0, alpha = self.affine.to_data(z[:, :1], self.start_params(c, mask))
        xs, alphas = [x0], [alpha]
        t = z.shape[1]
        if cached:
            self.set_cache(t)
        try:
            for i in range(t - 1):
                if cached:  # feed only token i; keys/values of tokens < i come from the cache
                    p = self.trunk(torch.where(mask[:, i : i + 1, None], xs[i], 0.0),
                                   c[:, i : i + 1], mask[:, None, None, : i + 1], start=i)
                    p = p * mask[:, i + 1 : i + 2, None]
                else:  # slow reference path: rerun the whole prefix
                    x = torch.cat(xs + [z[:, i + 1 :]], dim=1)
                    p = self.params(x, c, mask)[:, i + 1 : i + 2]
                x_next, alpha = self.affine.to_data(z[:, i + 1 : i + 2], p)
                xs.append(x_next)
                alphas.append(alpha)
        finally:
            self.set_cache(None)
        x = torch.cat(xs, dim=1)
        return self.permutation.reverse(x, perms), torch.cat(alphas, dim=1).sum(dim=(1, 2))


class ProseFlow(nn.Module):
    """Transferable all-atom TarFlow (Prose, or the plain TarFlow baseline with arch="tarflow")."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.embed_cond = ConditionEmbedding(config)
        order = config.permutation_order()
        if max(order) >= config.n_permutations:
            raise ValueError(f"permutation order {order} needs more than {config.n_permutations} permutations")
        self.blocks = nn.ModuleList([MetaBlock(config, order[k % len(order)]) for k in range(config.n_blocks)])
        self.share_conditioning = True  # how :meth:`forward`, :meth:`reverse` and :meth:`sample` trim (:meth:`trim`)

    # --- batch handling ------------------------------------------------------------------------
    @staticmethod
    def trim(batch: dict, share_conditioning: bool = True) -> dict:
        """The batch cut to its longest system (n atoms): ``mask``, the three per-atom features [B, n],
        ``chain_length`` [B] and ``permutations`` [B, P, n]. Reads the mask (data-dependent), so it runs
        eagerly, outside a compiled region; :meth:`flow` then sees only shape-polymorphic tensor code.

        Padding entries of every permutation are reset to the identity, so the first ``n`` entries of
        each row are a permutation of range(n) whatever order the loader gave them.

        With ``share_conditioning`` and a batch of copies of one system, the conditioning's inputs are kept
        once: the features and ``chain_length`` have one row, and ``system_mask`` [1, n] and
        ``system_permutations`` [1, P, n] are added (``mask`` and ``permutations`` keep B rows, for x).
        """
        mask = batch["mask"].bool()
        n_real = mask.sum(dim=1)
        n_eff = int(n_real.max())
        perms = batch["permutations"]
        pos = torch.arange(perms.shape[-1], device=perms.device)
        real = pos[None, None, :] < n_real[:, None, None]
        if bool((perms.lt(n_real[:, None, None]) != real).any()):
            raise ValueError("permutations must list the real atoms first (and only them) in every row")
        trimmed = {k: batch[k][:, :n_eff] for k in ("atom_type", "residue_type", "residue_index")}
        trimmed.update(mask=mask[:, :n_eff], chain_length=batch["chain_length"],
                       permutations=torch.where(real, perms, pos)[..., :n_eff])  # fmt: skip
        if share_conditioning:
            _share_systems(trimmed)
        return {k: v.contiguous() for k, v in trimmed.items()}  # one stride pattern: no recompiles

    def flow(self, x: torch.Tensor, trimmed: dict, reverse: bool = False, cached: bool = True):
        """The flow on a trimmed batch (:meth:`trim`): x [B, n, 3] -> (z [B, n, 3], logdet [B]). Compiled, it
        wants contiguous inputs (a new stride pattern would compile a new graph)."""
        mask, perms = trimmed["mask"], trimmed["permutations"]
        systems = (self.embed_cond(trimmed), trimmed.get("system_mask", mask), trimmed.get("system_permutations", perms))
        h, logdet = x, x.new_zeros(x.shape[0])
        blocks = reversed(self.blocks) if reverse else self.blocks
        for block in blocks:
            h, ld = block.reverse(h, mask, perms, systems, cached) if reverse else block(h, mask, perms, systems)
            logdet = logdet + ld
        return h, logdet

    def nll_per_dim_trimmed(self, x: torch.Tensor, trimmed: dict) -> torch.Tensor:
        """:meth:`nll_per_dim` of x [B, n, 3] on a trimmed batch: the training step's compiled region."""
        z, logdet = self.flow(x, trimmed)
        mask = trimmed["mask"]
        return -(self.prior_log_prob(z, mask) + logdet) / (3 * mask.sum(dim=1))

    def _run(self, x: torch.Tensor, batch: dict, reverse: bool, cached: bool = True):
        trimmed = self.trim(batch, self.share_conditioning)
        n = trimmed["mask"].shape[1]
        h, logdet = self.flow(x[:, :n], trimmed, reverse, cached)
        return torch.cat([h, x[:, n:]], dim=1), logdet

    # --- the flow ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent. x [B, N, 3] normalised coordinates. Returns (z, log|det dz/dx| [B])."""
        return self._run(x, batch, reverse=False)

    def reverse(self, z: torch.Tensor, batch: dict, cached: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent -> data, token by token. Returns (x, log|det dx/dz| [B]); cached=False is the slow path."""
        return self._run(z, batch, reverse=True, cached=cached)

    @staticmethod
    def prior_log_prob(z: torch.Tensor, mask: torch.Tensor, prior_std: float = 1.0) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) over the 3N real-atom dimensions."""
        m = mask.bool()[..., None].to(z.dtype)
        dims = 3 * m.sum(dim=(1, 2))
        sq = ((z * m) ** 2).sum(dim=(1, 2)) / prior_std**2
        return -0.5 * sq - dims * (0.5 * math.log(2 * math.pi) + math.log(prior_std))

    def log_prob(self, x: torch.Tensor, batch: dict, prior_std: float = 1.0) -> torch.Tensor:
        """log q(x) [B] in normalised units over the 3N real-atom dimensions (centroid included)."""
        z, logdet = self(x, batch)
        return self.prior_log_prob(z, batch["mask"], prior_std) + logdet

    def nll_per_dim(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """Training loss (PAPER.md section 3): -log q(x) / 3N per system [B], real atoms only."""
        return -self.log_prob(x, batch) / (3 * batch["mask"].sum(dim=1))

    @torch.no_grad()
    def sample(
        self,
        batch: dict,
        n: int | None = None,
        z: torch.Tensor | None = None,
        prior_std: float = 1.0,
        generator: torch.Generator | None = None,
        cached: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Draw x = f^-1(z), z ~ N(0, prior_std^2 I) on real atoms (padding 0).

        The batch may mix systems; with ``n`` every system is repeated n times (consecutively).
        prior_std != 1 is the "scaled prior" of temperature transfer (prior_std^2 = T / T_train).
        Returns (x [B', N, 3] normalised units, log q(x) [B'], the batch actually used).
        """
        if n is not None:
            batch = repeat_batch(batch, n)
        mask = batch["mask"].bool()
        if z is None:
            z = torch.randn(*mask.shape, 3, generator=generator, device=mask.device) * prior_std
        z = torch.where(mask[..., None], z, 0.0)
        x, logdet = self.reverse(z, batch, cached=cached)
        x = torch.where(mask[..., None], x, 0.0)
        return x, self.prior_log_prob(z, mask, prior_std) - logdet, batch


def _share_systems(trimmed: dict) -> None:
    """In place: a trimmed batch of copies of one system keeps the conditioning's inputs once (see
    :meth:`ProseFlow.trim`); any other batch is left as it is."""
    mask, perms = trimmed["mask"], trimmed["permutations"]
    b = mask.shape[0]
    if b < 2:
        return
    key = torch.cat([trimmed[k].reshape(b, -1) for k in SYSTEM_KEYS]
                    + [mask.reshape(b, -1).long(), perms.reshape(b, -1)], dim=1)  # fmt: skip
    if not bool((key == key[:1]).all()):
        return
    for k in SYSTEM_KEYS:
        trimmed[k] = trimmed[k][:1]
    trimmed.update(system_mask=mask[:1], system_permutations=perms[:1])


def repeat_batch(batch: dict, n: int) -> dict:
    """Repeat every system of a batch n times (system b occupies rows b*n .. b*n+n-1)."""
    return {k: v.repeat_interleave(n, dim=0) if torch.is_tensor(v) else v for k, v in batch.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
