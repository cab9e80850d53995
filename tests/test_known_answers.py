"""Known answers through the real sampling path (issue 23): an identity flow as proposal, a Gaussian target.

A freshly built flow is exactly the identity (its output layers start at zero), so its density in flow
coordinates is N(0, I_3N). For the Gaussian target E/kT = |y|^2 / (2 s^2) of the centred configuration y
(nm), with s equal to the flow's scale, the extended target pi(y) h(c), h = N(0, I/N), is that same density:
every importance weight and every SMC weight increment is one constant, and the ESS is exactly 1, through
:func:`draw_proposals` + SNIS and through both SMC kernels. Any error in the density bookkeeping (a dropped
or sign-flipped centre-of-mass term, a dropped log-det, a wrong scale) breaks these equalities.

GG has no chiral centre, so chirality fixing never touches these samples.
"""

import math

import numpy as np
import pytest
import torch

from proseflow.flow.model import ProseFlow
from proseflow.flow.train import TrainConfig, flow_config
from proseflow.samplers.proposals import (
    FlowExtendedEnergy,
    TargetExtendedEnergy,
    draw_proposals,
    run_smc,
    system_batch,
)
from proseflow.samplers.snis import snis

torch.set_num_threads(1)
SCALE = 0.35


class GaussianEnergy:
    """E/kT = |y|^2 / (2 s^2) of the centred configuration y (nm), forces -y / s^2 (kT/nm): a known target."""

    def __init__(self, s_nm: float):
        self.s = s_nm

    def _centred(self, x):
        x = np.asarray(x, dtype=np.float64)
        return x - x.mean(axis=1, keepdims=True)

    def energy_kT(self, x):
        return (self._centred(x) ** 2).sum(axis=(1, 2)) / (2 * self.s**2)

    def energy_and_forces_kT(self, x):
        y = self._centred(x)
        return (y**2).sum(axis=(1, 2)) / (2 * self.s**2), -y / self.s**2


@pytest.fixture(scope="module")
def identity_flow():
    torch.manual_seed(0)
    model = ProseFlow(flow_config(TrainConfig(model_preset="tiny"))).eval()
    model.meta = {"scale_nm": SCALE}
    return model


@pytest.fixture(scope="module")
def perturbed_flow():
    torch.manual_seed(1)
    model = ProseFlow(flow_config(TrainConfig(model_preset="tiny")))
    with torch.no_grad():
        for block in model.blocks:
            for lin in (block.proj_out, block.proj_start):
                lin.weight.normal_(0, 0.05)
                lin.bias.normal_(0, 0.05)
    model.meta = {"scale_nm": SCALE}
    return model.eval()


@pytest.fixture(scope="module")
def gg(peptide):
    return peptide("GG")[0]


def test_identity_flow_is_the_identity(identity_flow, gg):
    batch = system_batch(gg, 3)
    x = torch.randn(3, batch["mask"].shape[1], 3)
    with torch.no_grad():
        z, logdet = identity_flow(x, batch)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3))


def test_snis_of_an_exact_proposal_has_ess_one(identity_flow, gg):
    """Proposals from N(0, I) in flow coordinates, target of width = scale: with the exact (gaussian)
    centre-of-mass correction log q of the centred sample is the target's log density up to one constant."""
    p = draw_proposals(identity_flow, gg, 400, batch_size=200, com_correction="gaussian", seed=0, progress=False)
    assert p.n_chirality_fixed == 0 and p.n_chirality_unfixable == 0
    e_kT = GaussianEnergy(SCALE).energy_kT(p.positions_nm)
    log_w = -e_kT - p.log_q
    n = p.positions_nm.shape[1]
    # the constant is the normaliser of N(0, s^2) on the (3N - 3)-dim centred subspace, in nm
    np.testing.assert_allclose(log_w, 0.5 * (3 * n - 3) * math.log(2 * math.pi * SCALE**2), atol=5e-5)  # float32 nm
    assert snis(-e_kT, p.log_q, drop_top_fraction=0.0, rng=0).ess == pytest.approx(1.0, abs=1e-8)
    # the paper's chi correction is not exact: its weights vary as |c|^2 (proseflow.flow.preprocess)
    chi = draw_proposals(identity_flow, gg, 400, batch_size=200, com_correction="chi", seed=0, progress=False)
    assert snis(-e_kT, chi.log_q, drop_top_fraction=0.0, rng=0).ess < 0.9


def test_flow_energy_at_the_start_is_minus_log_q(perturbed_flow, gg):
    """SMC's proposal energy at the flow's own samples is -log q of those samples (the reverse pass's log q,
    an independent computation from the forward pass the energy uses)."""
    batch = system_batch(gg, 16)
    x, log_q, used = perturbed_flow.sample(batch, generator=torch.Generator().manual_seed(0))
    e, _ = FlowExtendedEnergy(perturbed_flow, gg).energy_and_forces(x.double().numpy())
    np.testing.assert_allclose(e, -log_q.double().numpy(), rtol=1e-5, atol=1e-3)


def test_target_energy_and_forces_in_flow_coordinates_are_the_closed_form(gg):
    """E_target(x) = scale^2 |x - c|^2 / (2 s^2) + N |c|^2 / 2 - 1.5 log(N / 2 pi), F = -scale^2 (x - c) / s^2 - c:
    the centre-of-mass term exactly (a dropped or sign-flipped term is off by N |c|^2 and by c)."""
    s = 0.8 * SCALE
    n = system_batch(gg, 1)["mask"].shape[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, n, 3)) + rng.standard_normal((5, 1, 3))  # a real centroid
    c = x.mean(axis=1, keepdims=True)
    e, f = TargetExtendedEnergy(GaussianEnergy(s), SCALE).energy_and_forces(x)
    expected = (SCALE**2 * ((x - c) ** 2).sum(axis=(1, 2)) / (2 * s**2) + 0.5 * n * (c[:, 0] ** 2).sum(-1)
                - 1.5 * math.log(n / (2 * math.pi)))
    np.testing.assert_allclose(e, expected, rtol=1e-12)
    np.testing.assert_allclose(f, -(SCALE**2) * (x - c) / s**2 - c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["ula", "mala"])
def test_smc_from_an_exact_proposal_never_reweights(identity_flow, gg, kernel):
    """Flow = target in the extended space: every level's increment is one constant, so the ESS is exactly 1 at
    every level, and the final particles are the initial ones moved by Langevin steps that keep N(0, I)."""
    result, positions, e_kT, *_ = run_smc(identity_flow, gg, GaussianEnergy(SCALE), 300, kernel, seed=0,
                                          n_levels=5, drop_top_fraction=0.0, max_target_energy=None,
                                          ess_threshold=0.5, step_size=1e-3)
    np.testing.assert_allclose(result.ess, 1.0, atol=1e-9)
    assert not result.resampled[:-1].any()  # never below the threshold; the last level always resamples
    assert result.n_distinct_ancestors == 300


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["ula", "mala"])
def test_smc_reaches_a_narrower_gaussian(identity_flow, gg, kernel):
    """Target width 0.85 x the flow's: the final centred configurations have the target's variance
    s^2 (N - 1) / N per coordinate, within a few Monte Carlo standard errors; the proposal's own is scale^2."""
    s = 0.85 * SCALE
    result, positions, e_kT, *_ = run_smc(identity_flow, gg, GaussianEnergy(s), 2000, kernel, seed=1,
                                          n_levels=10, drop_top_fraction=0.0, max_target_energy=None,
                                          ess_threshold=0.5, step_size=0.01)
    n = positions.shape[1]
    var = float((positions.astype(np.float64) ** 2).mean())
    target, proposal = s**2 * (n - 1) / n, SCALE**2 * (n - 1) / n
    assert abs(var / target - 1) < 0.03, (var, target, proposal)
    assert abs(var / proposal - 1) > 0.2


def test_unfixable_chirality_gets_weight_zero(peptide):
    """AA has two chiral centres: a sample with one of them mirrored is outside the all-L target's support. SNIS
    gives it weight zero (counted), and SMC's target energy is +inf there (a wholly mirrored one stays finite)."""
    from proseflow.physics.chirality import handedness

    top, pos = peptide("AA")
    pos = pos - pos.mean(axis=0)
    rng = np.random.default_rng(0)
    frames = pos[None] + rng.normal(0, 0.002, (6, *pos.shape))
    mixed = frames[3].copy()
    # reflect one centre's hydrogen through its CA-neighbour plane: swap HA and CB of residue 1 -> D at that centre
    atoms = [a for a in top.atoms() if a.residue.index == 0]
    ha, cb = next(a.index for a in atoms if a.name == "HA"), next(a.index for a in atoms if a.name == "CB")
    mixed[[ha, cb]] = mixed[[cb, ha]]
    frames[3] = mixed
    frames[4] = -frames[4]  # wholly mirrored: fixable
    hand = handedness(frames, top)
    assert (hand[3] == [-1, 1]).all() or (hand[3] == [1, -1]).all()
    valid = np.all(hand == 1, axis=1) | np.all(hand == -1, axis=1)
    r = snis(np.zeros(6), np.zeros(6), drop_top_fraction=0.0, rng=0, valid=valid)
    assert r.n_invalid == 1 and np.isneginf(r.log_weights[3]) and r.ess == pytest.approx(5 / 6)
    from proseflow.physics.energy import make_energy

    target = TargetExtendedEnergy(make_energy(top, 310.0, backend="torch"), SCALE, top)
    e, _ = target.energy_and_forces(frames / SCALE)
    assert np.isinf(e[3]) and np.isfinite(np.delete(e, 3)).all()


@pytest.mark.slow
def test_sampler_metrics_against_closed_forms():
    """evaluation.evaluate.sampler_metrics, the numbers on every page: N(0, 1) energies with the importance weights
    that make them N(1, 1) have energy-W2 ~0 against an N(1, 1) reference and exactly the shift, 1, without them
    (1-D W2 of a translate); a set whose dihedrals are the reference's shifted by (0.1, -0.2) rad (a concentrated
    cloud, so the translation is the optimal plan) has torus-W2 |shift|; TICA coordinates shifted by (3, 4) have
    TICA-W2 5. Dropping the weights (an unweighted metric) breaks the first assertion."""
    from proseflow.evaluation.evaluate import Projection, sampler_metrics

    rng = np.random.default_rng(0)
    n = 3000
    phi = rng.normal(0.0, 0.05, (n, 2))
    tica = rng.normal(0.0, 1.0, (n, 2))
    ref = Projection(rng.normal(1.0, 1.0, n), phi, tica)
    x = rng.normal(0.0, 1.0, n)
    log_w = x - 0.5  # log N(x; 1, 1) - log N(x; 0, 1)
    log_w -= np.logaddexp.reduce(log_w)
    samples = Projection(x, phi + np.array([0.1, -0.2]), tica + np.array([3.0, 4.0]))
    weighted = sampler_metrics(ref, samples, log_w, n_metric=n, seed=1, k=4)
    plain = sampler_metrics(ref, samples, None, n_metric=n, seed=1, k=4)
    assert weighted["energy_w2"] < 0.12 and plain["energy_w2"] == pytest.approx(1.0, abs=0.08)
    assert weighted["ess"] == pytest.approx(np.exp(-1), abs=0.05)  # Kish ESS of this shift: exp(-delta^2) = e^-1
    assert plain["torus_w2"] == pytest.approx(np.hypot(0.1, 0.2), abs=0.01)
    assert plain["tica_w2"] == pytest.approx(5.0, abs=0.05)
    assert plain["mean_energy_kT"] == pytest.approx(0.0, abs=0.06)
    assert weighted["mean_energy_kT"] == pytest.approx(1.0, abs=0.1)
