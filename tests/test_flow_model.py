"""The Prose flow: invertible, exact log-determinant, padding-blind; preprocessing and density bookkeeping."""

import math
import os

import pytest
import torch

from proseflow.data.permutations import PERMUTATION_NAMES
from proseflow.flow import FlowConfig, ProseFlow, count_parameters, proposal_log_prob_nm
from proseflow.flow import preprocess as pp

torch.set_num_threads(2)
N_ATOM_TYPES = 12


def make_batch(lengths, n_max=None, seed=0, n_perm=8, junk_padding=True):
    """Random systems (fake chemistry) padded to n_max, with valid permutations (padding last)."""
    g = torch.Generator().manual_seed(seed)
    n_max = n_max or max(lengths)
    b = len(lengths)
    mask = torch.arange(n_max)[None] < torch.tensor(lengths)[:, None]
    x = torch.randn(b, n_max, 3, generator=g)
    if junk_padding:  # padding content is arbitrary: it must never matter
        x = torch.where(mask[..., None], x, 1e3 * torch.randn(b, n_max, 3, generator=g))
    batch = {
        "mask": mask,
        "atom_type": torch.randint(1, N_ATOM_TYPES, (b, n_max), generator=g) * mask,
        "residue_type": torch.randint(1, 21, (b, n_max), generator=g) * mask,
        "residue_index": (torch.arange(n_max)[None] // 3 + 1) * mask,
        "chain_length": torch.tensor([(n - 1) // 3 + 1 for n in lengths]),
    }
    perms = torch.empty(b, n_perm, n_max, dtype=torch.long)
    for i, n in enumerate(lengths):
        pad = torch.arange(n, n_max)[torch.randperm(n_max - n, generator=g)]  # padding last, any order
        for k in range(n_perm):
            real = torch.arange(n) if k % 4 == 0 else torch.randperm(n, generator=g)
            real = real.flip(0) if k % 2 else real
            perms[i, k] = torch.cat([real, pad])
    batch["permutations"] = perms
    return x, batch


def select(batch, rows, n_max):
    out = {k: v[rows] for k, v in batch.items()}
    for k in ("mask", "atom_type", "residue_type", "residue_index"):
        out[k] = out[k][:, :n_max]
    perms = out["permutations"]
    out["permutations"] = torch.stack([p[p < n_max].view(perms.shape[1], n_max) for p in perms])
    return out


def make_model(seed=0, std=0.1, **kw):
    torch.manual_seed(seed)
    model = ProseFlow(FlowConfig.preset("tiny", n_atom_types=N_ATOM_TYPES, **kw))
    with torch.no_grad():  # leave the zero-initialised (identity) state
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model.eval()


def real_max_err(a, b, mask):
    return (a - b)[mask].abs().max().item()


AFFINES = ["diagonal", "triangular"]


@pytest.mark.parametrize("affine", AFFINES)
def test_identity_at_initialisation(affine):
    x, batch = make_batch([5, 9, 3], n_max=11)
    model = ProseFlow(FlowConfig.preset("tiny", n_atom_types=N_ATOM_TYPES, affine=affine))
    z, logdet = model(x, batch)
    assert torch.equal(z, x)
    assert torch.equal(logdet, torch.zeros(3))


@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("cached", [True, False])
def test_invertible_mixed_padded_batch(cached, affine):
    x, batch = make_batch([5, 9, 3], n_max=11)
    model = make_model(affine=affine)
    with torch.no_grad():
        z, logdet = model(x, batch)
        x_back, logdet_rev = model.reverse(z, batch, cached=cached)
    assert logdet.abs().min() > 0.05  # the flow is far from the identity
    # float32 precision relative to the largest intermediate (random weights make the triangular map stretch z)
    scale = max(1.0, z[batch["mask"]].abs().max().item())
    assert real_max_err(x_back, x, batch["mask"]) < 5e-6 * scale
    assert torch.equal(x_back[~batch["mask"]], x[~batch["mask"]])  # padding passes through
    torch.testing.assert_close(logdet_rev, -logdet, atol=1e-5 * scale, rtol=1e-5)
    model64 = model.double()  # exact inverse: float64 round trip to 1e-10
    with torch.no_grad():
        z64, logdet64 = model64(x.double(), batch)
        x64, logdet64_rev = model64.reverse(z64, batch, cached=cached)
    assert real_max_err(x64, x.double(), batch["mask"]) < 1e-10
    torch.testing.assert_close(logdet64_rev, -logdet64, atol=1e-10, rtol=0)


@pytest.mark.parametrize("affine", AFFINES)
def test_cached_and_uncached_reverse_agree(affine):
    _, batch = make_batch([7, 4], n_max=8)
    z = torch.randn(2, 8, 3)
    model = make_model(seed=1, affine=affine)
    with torch.no_grad():
        x1, ld1 = model.reverse(z, batch, cached=True)
        x2, ld2 = model.reverse(z, batch, cached=False)
    scale = max(1.0, x2[batch["mask"]].abs().max().item())  # float32 round-off grows with the largest coordinate
    assert real_max_err(x1, x2, batch["mask"]) < 2e-6 * scale
    torch.testing.assert_close(ld1, ld2, atol=1e-5, rtol=1e-6)
    assert all(layer.attn.cache is None for blk in model.blocks for layer in blk.layers)


ARCHITECTURES = [
    dict(), dict(affine="triangular"), dict(arch="tarflow"), dict(arch="tarflow", affine="triangular"),
    dict(transition=False), dict(lookahead=False), dict(backbone_first=False), dict(adaln_gate="sigmoid"),
]


@pytest.mark.parametrize("overrides", ARCHITECTURES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "prose")
def test_logdet_matches_autograd_jacobian(overrides):
    """Every architecture option: the log-determinant is log |det| of the autograd Jacobian, both ways."""
    x, batch = make_batch([5], junk_padding=False)
    model = make_model(seed=2, std=0.1, **overrides).double()  # float64 (std 0.2 makes the Jacobian too ill-conditioned: cond 1e12)
    x = x.double()

    def fwd(v):
        return model(v.view(1, 5, 3), batch)[0].flatten()

    def rev(v):
        return model.reverse(v.view(1, 5, 3), batch)[0].flatten()

    jac = torch.autograd.functional.jacobian(fwd, x.flatten())
    _, logdet = model(x, batch)
    assert abs(logdet.item()) > 0.1
    assert abs(torch.linalg.slogdet(jac)[1].item() - logdet.item()) < 1e-8
    z = fwd(x.flatten()).detach()
    jac_rev = torch.autograd.functional.jacobian(rev, z)
    _, logdet_rev = model.reverse(z.view(1, 5, 3), batch)
    assert abs(torch.linalg.slogdet(jac_rev)[1].item() - logdet_rev.item()) < 1e-8


def test_padding_and_batch_order_do_not_matter():
    lengths = [6, 9, 4]
    x, batch = make_batch(lengths, n_max=12)
    model = make_model(seed=3)
    with torch.no_grad():
        z, logp = model(x, batch)[0], model.log_prob(x, batch)
        order = [2, 0, 1]
        z_perm, logp_perm = model(x[order], batch_o := select(batch, order, 12))[0], model.log_prob(x[order], batch_o)
        torch.testing.assert_close(z_perm, z[order], rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(logp_perm, logp[order], rtol=1e-5, atol=1e-4)
        for i, n in enumerate(lengths):  # each system alone, without any padding
            alone = select(batch, [i], n)
            z1, logp1 = model(x[i : i + 1, :n], alone)[0], model.log_prob(x[i : i + 1, :n], alone)
            torch.testing.assert_close(z1[0], z[i, :n], rtol=2e-6, atol=1e-5)
            torch.testing.assert_close(logp1, logp[i : i + 1], rtol=1e-5, atol=1e-4)


def test_nan_padding_stays_out():
    x, batch = make_batch([4, 7], n_max=8)
    x = torch.where(batch["mask"][..., None], x, float("nan"))
    model = make_model(seed=4)
    with torch.no_grad():
        z, logdet = model(x, batch)
        x_back, _ = model.reverse(z, batch)
    assert torch.isfinite(logdet).all() and torch.isfinite(z[batch["mask"]]).all()
    assert real_max_err(x_back, x, batch["mask"]) < 1e-4


def test_sample_log_prob_consistent_and_mixed_systems():
    _, batch = make_batch([5, 8], n_max=9)
    model = make_model(seed=5)
    g = torch.Generator().manual_seed(0)
    x, log_q, used = model.sample(batch, n=3, generator=g)
    assert x.shape == (6, 9, 3) and log_q.shape == (6,)
    assert torch.equal(used["chain_length"], batch["chain_length"].repeat_interleave(3))
    assert (x[~used["mask"]] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, used), log_q, rtol=1e-5, atol=1e-3)
    # scaled prior (temperature transfer): log q consistent too
    x2, log_q2, _ = model.sample(used, prior_std=1.3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x2, used, prior_std=1.3), log_q2, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("affine", AFFINES)
def test_sample_log_prob_consistent_triangular_padded(affine):
    """Sampling (KV cache) and density agree with padding; a triangular flow is truly coupled (off-diagonal used)."""
    _, batch = make_batch([6, 4], n_max=7)
    model = make_model(seed=9, affine=affine)
    x, log_q, used = model.sample(batch, n=4, generator=torch.Generator().manual_seed(1))
    assert (x[~used["mask"]] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, used), log_q, rtol=1e-5, atol=1e-3)
    n_params = model.blocks[0].proj_out.out_features
    assert n_params == (9 if affine == "triangular" else 6)


def test_zero_trunk_triangular_flow_is_a_known_correlated_gaussian():
    """One triangular block whose output layers have zero weights and fixed biases maps N(0, I) to
    N(mu, L L^T) on every atom: log q equals torch's MultivariateNormal density (an independent computation),
    and sample covariances match L L^T."""
    torch.manual_seed(0)
    model = ProseFlow(FlowConfig.preset("tiny", n_atom_types=N_ATOM_TYPES, n_blocks=1, affine="triangular")).eval()
    mu, alpha, off = torch.tensor([0.3, -0.2, 0.1]), torch.tensor([-1.2, 0.4, -0.3]), torch.tensor([0.8, -0.5, 1.1])
    bias = torch.cat([mu, alpha, off])
    with torch.no_grad():
        for lin in (model.blocks[0].proj_out, model.blocks[0].proj_start):
            lin.weight.zero_()
            lin.bias.copy_(bias)
    L = torch.diag(alpha.exp())
    L[1, 0], L[2, 0], L[2, 1] = off
    gauss = torch.distributions.MultivariateNormal(mu, scale_tril=L)
    x, batch = make_batch([6], junk_padding=False)
    x = gauss.sample((1, 6))  # [1, 6, 3]
    with torch.no_grad():
        log_q = model.log_prob(x, batch)
    torch.testing.assert_close(log_q, gauss.log_prob(x).sum(dim=1), rtol=1e-5, atol=1e-4)
    draws, log_q_draws, used = model.sample(batch, n=4000, generator=torch.Generator().manual_seed(2))
    flat = draws.reshape(-1, 3).double()
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, (L @ L.T).double(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(log_q_draws, gauss.log_prob(draws).sum(dim=1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [dict(transition=False), dict(lookahead=False), dict(backbone_first=False), dict(arch="tarflow"),
     dict(arch="tarflow", affine="triangular")],
)
def test_ablations_build_and_invert(overrides):
    x, batch = make_batch([5, 7], n_max=8)
    model = make_model(seed=6, **overrides)
    with torch.no_grad():
        z, logdet = model(x, batch)
        x_back, logdet_rev = model.reverse(z, batch)
    assert real_max_err(x_back, x, batch["mask"]) < 1e-4
    torch.testing.assert_close(logdet_rev, -logdet, atol=1e-4, rtol=1e-5)


def test_permutation_order_switches():
    names = lambda cfg: [PERMUTATION_NAMES[i] for i in cfg.permutation_order()]  # noqa: E731
    assert names(FlowConfig()) == ["bb_std", "rbr_std_flip", "bb_std_flip", "rbr_std",
                                   "bb_var", "rbr_var_flip", "bb_var_flip", "rbr_var"]  # fmt: skip
    assert names(FlowConfig(backbone_first=False)) == ["rbr_std", "rbr_std_flip", "rbr_var", "rbr_var_flip"]
    cfg = FlowConfig(arch="tarflow")
    assert names(cfg) == ["rbr_std", "rbr_std_flip"]
    assert not (cfg.transition or cfg.lookahead or cfg.qk_norm)


@pytest.mark.parametrize("preset", ["paper", "small", "tiny"])
def test_every_preset_sees_all_eight_orders_interleaved(preset):
    """Block -> permutation table of each preset: 8 blocks, the paper's interleaved cycle (bb, rbr, bb, ...)."""
    cfg = FlowConfig.preset(preset)
    with torch.device("meta"):
        model = ProseFlow(cfg)
    table = [PERMUTATION_NAMES[b.permutation.index] for b in model.blocks]
    assert table == ["bb_std", "rbr_std_flip", "bb_std_flip", "rbr_std", "bb_var", "rbr_var_flip", "bb_var_flip",
                     "rbr_var"]  # fmt: skip
    assert sorted(table) == sorted(PERMUTATION_NAMES)
    # ablation: the four residue-by-residue orders, each used by two of the 8 blocks
    ablation = ProseFlow(FlowConfig.preset(preset, backbone_first=False)) if preset != "paper" else None
    if ablation is not None:
        assert [PERMUTATION_NAMES[b.permutation.index] for b in ablation.blocks] == [
            "rbr_std", "rbr_std_flip", "rbr_var", "rbr_var_flip"] * 2


@pytest.mark.parametrize("gate", ["zero", "sigmoid"])
def test_adaln_gate_start_and_identity_at_init(gate):
    """adaLN-Zero gates start at 0; the paper's sigmoid gates at sigmoid(-2) = 0.119; both flows start at identity."""
    torch.manual_seed(3)
    model = ProseFlow(FlowConfig.preset("tiny", n_atom_types=N_ATOM_TYPES, adaln_gate=gate)).eval()
    adaln = model.blocks[0].layers[0].norm_attn
    c = torch.randn(2, 5, adaln.mod.in_features)
    _, g = adaln(torch.randn(2, 5, adaln.mod.in_features), c)
    expected = 0.0 if gate == "zero" else 1 / (1 + math.exp(2.0))
    torch.testing.assert_close(g, torch.full_like(g, expected))
    x, batch = make_batch([5, 7], n_max=8)
    with torch.no_grad():
        z, logdet = model(x, batch)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(logdet, torch.zeros_like(logdet))


@pytest.mark.parametrize("arch,paper_count", [("prose", 285e6), ("tarflow", 115e6)])
def test_paper_preset_parameter_count(arch, paper_count):
    with torch.device("meta"):
        n = count_parameters(ProseFlow(FlowConfig.preset("paper", arch=arch)))
    assert abs(n / paper_count - 1) < 0.1, n


# --- preprocessing ------------------------------------------------------------------------------


def test_random_rotations_are_proper_and_uniform():
    r = pp.random_rotations(4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4000, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4000, dtype=torch.float64))
    assert r.mean(0).abs().max() < 0.05  # Haar measure: E[R] = 0
    # a fixed unit vector is sent uniformly over the sphere: E[(Rv)_i^2] = 1/3
    torch.testing.assert_close((r[:, :, 0] ** 2).mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02, rtol=0)


def test_preprocess_centres_scales_and_augments():
    x, batch = make_batch([5, 9], n_max=10)
    mask = batch["mask"]
    x_nm = x * 0.3 + 2.0
    y = pp.normalise(x_nm, mask)
    torch.testing.assert_close(pp.centroid(y, mask), torch.zeros(2, 3), atol=1e-6, rtol=0)
    assert (y[~mask] == 0).all()
    torch.testing.assert_close(pp.to_nm(y, mask), pp.remove_centroid(x_nm, mask), atol=1e-6, rtol=1e-5)
    # augmentation: rotation keeps distances, centroid shifted with std 1/sqrt(N)
    g = torch.Generator().manual_seed(0)
    xs = pp.preprocess_train(x_nm.repeat(2000, 1, 1), mask.repeat(2000, 1), generator=g)
    torch.testing.assert_close(torch.cdist(xs[:1, :5], xs[:1, :5]), torch.cdist(y[:1, :5], y[:1, :5]), atol=1e-5, rtol=1e-5)
    c = pp.centroid(xs, mask.repeat(2000, 1)).view(2000, 2, 3)
    torch.testing.assert_close(c.std(dim=(0, 2)), torch.tensor([5, 9]).rsqrt().float(), atol=0.02, rtol=0)
    torch.testing.assert_close(pp.to_nm(xs[:2], mask), pp.rotate(pp.to_nm(xs[:2], mask), torch.eye(3).expand(2, 3, 3)))


def test_chi_density_normalised_and_matches_com_norms():
    n = torch.tensor(9)
    sigma = n.float().rsqrt()
    r = torch.linspace(1e-6, 10 * sigma, 20001, dtype=torch.float64)
    dens = pp.log_chi3(r, sigma.double()).exp()
    assert abs(torch.trapezoid(dens, r).item() - 1) < 1e-6
    # histogram of |c| for c ~ the training augmentation
    c = pp.com_shift(torch.ones(200_000, 9, dtype=torch.bool), torch.Generator().manual_seed(0))[:, 0]
    hist, edges = torch.histogram(c.norm(dim=-1).double(), bins=30, range=(0.0, 4 * sigma.item()), density=False)
    mids, width = (edges[1:] + edges[:-1]) / 2, edges[1] - edges[0]
    expected = pp.log_chi3(mids, sigma.double()).exp() * width * 200_000
    assert ((hist - expected).abs() / expected.sqrt().clamp(min=1)).max() < 5  # within 5 Poisson sigmas


def test_gaussian_com_correction_is_exact_for_a_gaussian_flow():
    """For q(x) = N(0, I_3N) the centred sample's density is N_{3N-3}(y) (orthonormal coordinates)."""
    n, b = 6, 4
    mask = torch.ones(b, n, dtype=torch.bool)
    x = torch.randn(b, n, 3, dtype=torch.float64)
    log_q = -0.5 * (x**2).sum((1, 2)) - 1.5 * n * math.log(2 * math.pi)
    y = pp.remove_centroid(x, mask)
    exact = -0.5 * (y**2).sum((1, 2)) - 0.5 * (3 * n - 3) * math.log(2 * math.pi)
    got = proposal_log_prob_nm(log_q, x, mask, scale=1.0, com_correction="gaussian")
    torch.testing.assert_close(got, exact)
    # nm units: -(3N-3) log(scale); chi correction = gaussian - log(4 pi |c|^2)
    got_nm = proposal_log_prob_nm(log_q, x, mask, scale=0.35, com_correction="gaussian")
    torch.testing.assert_close(got_nm, exact - (3 * n - 3) * math.log(0.35))
    chi = proposal_log_prob_nm(log_q, x, mask, scale=1.0, com_correction="chi")
    c = pp.centroid(x, mask)
    torch.testing.assert_close(chi, exact - torch.log(4 * math.pi * (c**2).sum(-1)))


def test_gradient_checkpointing_gives_the_same_gradients():
    x, batch = make_batch([5, 7], n_max=8)
    grads = []
    for ckpt in (False, True):
        model = make_model(seed=7, grad_checkpoint=ckpt).train()
        model.nll_per_dim(x, batch).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_trimmed_loss_is_the_loss():
    """The training step's path (trim eagerly, then the flow on the cut batch) is nll_per_dim exactly."""
    x, batch = make_batch([5, 9, 3], n_max=12)
    model = make_model(seed=4)
    trimmed = model.trim(batch)
    assert trimmed["mask"].shape == (3, 9) and trimmed["permutations"].shape == (3, 8, 9)
    assert torch.equal(model.nll_per_dim_trimmed(x[:, :9], trimmed), model.nll_per_dim(x, batch))


def one_system_batch(seed=6, copies=5):
    """Copies of one random system (padded), with distinct coordinates per row."""
    x, batch = make_batch([7], n_max=10, seed=seed)
    batch = {k: v.expand(copies, *v.shape[1:]).contiguous() for k, v in batch.items()}
    x = torch.randn(copies, 10, 3, generator=torch.Generator().manual_seed(seed + 1)) * batch["mask"][..., None]
    return x, batch


def test_a_mixed_batch_is_not_shared():
    x, batch = make_batch([5, 9, 4], n_max=10)
    twice = {k: torch.cat([v, v[:1]]) for k, v in batch.items()}  # system 0 twice, systems 1 and 2 once
    model = make_model(seed=8)
    assert "system_mask" not in model.trim(twice) and model.trim(twice)["atom_type"].shape[0] == 4


@pytest.mark.parametrize("arch", ["prose", "tarflow"])
def test_shared_conditioning_is_the_same_flow(arch):
    """A batch of copies of one system computes its conditioning once (trim's system_* keys): z, the
    log-determinant and the inverse are the per-row computation's, and gradients agree to round-off."""
    x, batch = one_system_batch()
    model = make_model(seed=8, arch=arch)
    shared, per_row = model.trim(batch), model.trim(batch, share_conditioning=False)
    assert shared["atom_type"].shape == (1, 7) and per_row["atom_type"].shape == (5, 7)
    assert shared["system_permutations"].shape == (1, 8, 7) and shared["mask"].shape == (5, 7)
    assert shared["system_mask"].shape == (1, 7) and "system_mask" not in per_row
    xs = x[:, :7].clone().requires_grad_(True)
    out = []
    for trimmed in (shared, per_row):
        model.zero_grad(set_to_none=True)
        xs.grad = None
        z, logdet = model.flow(xs, trimmed)
        (z.square().sum() + logdet.sum()).backward()
        out.append((z.detach(), logdet.detach(), xs.grad.clone(), [p.grad.clone() for p in model.parameters()]))
    (z_s, ld_s, gx_s, gp_s), (z_r, ld_r, gx_r, gp_r) = out
    assert ld_s.abs().min() > 0.05 and (ld_s - ld_s[0]).abs().max() > 1e-3  # far from the identity; rows differ
    # float32 round-off: a matrix product over 1 row or B rows rounds differently, and 8 blocks amplify it
    def close(a, b, rel):
        return bool((a - b).abs().max() <= rel * b.abs().max())

    assert close(z_s, z_r, 1e-5) and close(ld_s, ld_r, 1e-5)
    # (over all parameters at once: some gradients are exactly 0 in exact arithmetic, e.g. the key-norm biases,
    # which shift every key's logit by the same amount, and are float32 noise either way)
    assert close(gx_s, gx_r, 1e-4) and close(torch.cat([g.flatten() for g in gp_s]),
                                             torch.cat([g.flatten() for g in gp_r]), 1e-4)
    with torch.no_grad():
        for cached in (True, False):
            x_back, ld_back = model.flow(z_s, shared, reverse=True, cached=cached)
            assert real_max_err(x_back, x[:, :7], shared["mask"]) < 1e-4
            torch.testing.assert_close(ld_back, -ld_s, atol=1e-4, rtol=1e-5)


def test_sampling_a_single_system_shares_its_conditioning():
    """model.sample on copies of one system: the same draws as the per-row computation."""
    _, one = one_system_batch(copies=3)
    model = make_model(seed=9)
    z = torch.randn(3, 10, 3, generator=torch.Generator().manual_seed(0))
    assert model.trim(one)["atom_type"].shape[0] == 1
    x_shared, log_q_shared, _ = model.sample(one, z=z)
    model.share_conditioning = False  # the per-row computation
    x_rows, log_q_rows, _ = model.sample(one, z=z)
    torch.testing.assert_close(x_shared, x_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_q_shared, log_q_rows, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(os.environ.get("PROSEFLOW_TEST_COMPILE") != "1", reason="torch.compile takes minutes on 2 cores")
@pytest.mark.parametrize("affine", AFFINES)
def test_compiled_flow_equals_eager_on_mixed_length_batches(affine):
    """torch.compile with the atom dimension dynamic (the training step's setting): one graph for batches of
    any padded length, the same numbers as eager to float32 round-off; both per-atom affine forms."""
    from proseflow.flow.train import mark_length_dynamic

    torch._dynamo.reset()
    model = make_model(seed=3, affine=affine)
    flow = torch.compile(model.flow)
    with torch.no_grad():
        for i, (lengths, n_max) in enumerate((([5, 9, 3], 11), ([7, 4, 6], 8))):
            x, batch = make_batch(lengths, n_max=n_max, seed=len(lengths))
            trimmed = model.trim(batch)
            n = trimmed["mask"].shape[1]
            x_in = x[:, :n].contiguous()
            mark_length_dynamic(x_in, trimmed)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):  # the second length reuses the graph
                z_c, ld_c = flow(x_in, trimmed)
            z_e, ld_e = model.flow(x[:, :n], trimmed)
            assert ld_e.abs().min() > 0.05  # far from the identity
            scale = max(1.0, z_e[trimmed["mask"]].abs().max().item())  # round-off grows with the largest value
            assert real_max_err(z_c, z_e, trimmed["mask"]) < 1e-6 * scale + 1e-5
            torch.testing.assert_close(ld_c, ld_e, rtol=1e-5, atol=1e-5)
            x_back, ld_rev = model.reverse(torch.cat([z_c, x[:, n:]], dim=1), batch)  # eager inverse of compiled z
            assert real_max_err(x_back, x, batch["mask"]) < 1e-4 * scale  # float32, amplified as in the eager test
            torch.testing.assert_close(ld_rev, -ld_c, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.skipif(os.environ.get("PROSEFLOW_TEST_COMPILE") != "1", reason="torch.compile takes minutes on 2 cores")
def test_compiled_training_loss_and_gradients_equal_eager():
    """Forward + loss compiled as the trainer does (nn.Module.compile, atom dimension dynamic): loss, gradients and the
    log-determinant (against the autograd Jacobian) as eager; parameter names unchanged."""
    from proseflow.flow.train import _NLL, mark_length_dynamic

    model = make_model(seed=5)
    eager, compiled = _NLL(model), _NLL(model)
    compiled.compile()
    cases = [(*make_batch([5, 9, 3], n_max=11, seed=11), False),
             (*make_batch([7, 4, 6], n_max=8, seed=8), True),  # a second length reuses the graph
             (*one_system_batch(), False)]  # shared conditioning compiled too
    for x, batch, same_graph in cases:
        trimmed = model.trim(batch)
        x = x[:, : trimmed["mask"].shape[1]].contiguous()
        mark_length_dynamic(x, trimmed)
        grads = []
        for fn in (eager, compiled):
            model.zero_grad(set_to_none=True)
            with torch._dynamo.config.patch(error_on_recompile=same_graph):
                loss = fn(x, trimmed)
            loss.mean().backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
        for g_c, g_e in zip(grads[1][1], grads[0][1], strict=True):
            torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-5)  # fused kernels reassociate float32 sums
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert not any("_orig_mod" in k for k in model.state_dict())

    x, batch = make_batch([5], junk_padding=False)
    trimmed = model.trim(batch)
    torch._dynamo.reset()  # a fresh graph, whatever earlier tests compiled from the same code
    with torch._functorch.config.patch(donated_buffer=False):  # the Jacobian runs backward with retain_graph
        flow = torch.compile(model.flow)
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 5, 3), trimmed)[0].flatten(), x.flatten())
        _, logdet = flow(x, trimmed)
    assert abs(torch.linalg.slogdet(jac)[1].item() - logdet.item()) < 1e-3 * max(1.0, abs(logdet.item()))
