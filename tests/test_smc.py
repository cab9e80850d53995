"""Tests for proseflow.samplers.smc on toy targets with known answers (Gaussian proposal, closed-form energies)."""

import numpy as np
import pytest

from proseflow.samplers.resampling import kish_ess as normalised_ess
from proseflow.samplers.resampling import systematic_resample
from proseflow.samplers.smc import SMCConfig, smc

LOG2PI = np.log(2 * np.pi)


class GaussianProposal:
    """q = N(0, I_D) with E_q = -log q; stands in for the flow."""

    def sample(self, rng, b, shape):
        x = rng.standard_normal((b, *shape))
        return x, self.log_q(x)

    @staticmethod
    def log_q(x):
        xf = x.reshape(len(x), -1)
        return -0.5 * np.sum(xf**2, axis=1) - 0.5 * xf.shape[1] * LOG2PI

    def energy_and_forces(self, x):
        return -self.log_q(x), -x


def gaussian_target(mean, sd):
    """Unnormalised E = |x - mean|^2 / (2 sd^2); Z = (2 pi sd^2)^(D/2)."""
    mean = np.asarray(mean, dtype=float)

    def fn(x):
        d = x - mean
        return np.sum(d**2, axis=1) / (2 * sd**2), -d / sd**2

    return fn


def double_well(x):
    """E = 3 (x^2 - 1)^2 + 0.5 x in 1-D: barrier ~3 kT, the left well is favoured."""
    z = x[:, 0]
    e = 3 * (z**2 - 1) ** 2 + 0.5 * z
    return e, (-(12 * z * (z**2 - 1) + 0.5))[:, None]


def quadrature(energy_1d, fns, lo=-6.0, hi=8.0, n=200_001):
    z = np.linspace(lo, hi, n)
    w = np.exp(-(energy_1d(z) - energy_1d(z).min()))
    w /= w.sum()
    return [float(np.sum(w * f(z))) for f in fns]


class Counting:
    def __init__(self, fn):
        self.fn, self.count, self.calls = fn, 0, 0

    def __call__(self, x):
        self.count += len(x)
        self.calls += 1
        return self.fn(x)


def run(target, cfg, seed, b=1000, shape=(1,)):
    rng = np.random.default_rng(seed)
    q = GaussianProposal()
    x0, lq0 = q.sample(rng, b, shape)
    return smc(x0, lq0, q, target, cfg, rng)


def check_close(estimates, truth, n_se=4.0, max_se=0.05):
    est = np.asarray(estimates)
    se = est.std(ddof=1, axis=0) / np.sqrt(len(est))
    assert np.all(se < max_se), se  # the check is meaningful only if the runs are precise
    assert np.all(np.abs(est.mean(axis=0) - truth) < n_se * se + 1e-3), (est.mean(axis=0), truth, se)


# --- schedule -------------------------------------------------------------------------------------


def test_schedule_ends_exactly_at_one():
    t = SMCConfig(n_levels=100).t_schedule()
    assert len(t) == 101 and t[0] == 0.0 and t[-1] == 1.0 and np.all(np.diff(t) > 0)
    assert SMCConfig(schedule=[0.0, 0.3, 1.0]).t_schedule().tolist() == [0.0, 0.3, 1.0]
    for bad in ([0.0, 0.5, 0.99], [0.1, 1.0], [0.0, 0.6, 0.5, 1.0], [0.0]):
        with pytest.raises(ValueError):
            SMCConfig(schedule=bad).t_schedule()
    res = run(gaussian_target([2.0], 0.5), SMCConfig(n_levels=5), seed=0, b=50)
    assert res.t_schedule[-1] == 1.0 and len(res.ess) == 5


def test_without_moves_the_weights_are_exact_importance_weights():
    """n_mcmc_steps=0: the increments telescope to -(E_target - E_q)(x0) only if the path reaches t=1."""
    target = gaussian_target([1.0, -0.5], 0.8)
    rng = np.random.default_rng(1)
    q = GaussianProposal()
    x0, lq0 = q.sample(rng, 400, (2,))
    res = smc(x0, lq0, q, target, SMCConfig(n_levels=10, n_mcmc_steps=0, ess_threshold=0.0), rng)
    lw = -target(x0)[0] - lq0
    np.testing.assert_allclose(res.final_log_weights_pre_resampling, lw - np.logaddexp.reduce(lw), atol=1e-9)
    assert res.final_ess_pre_resampling == pytest.approx(normalised_ess(lw))
    assert not res.resampled[:-1].any() and res.resampled[-1]
    assert res.n_energy_evals == 400
    # the final particles are an equally weighted resample of x0
    np.testing.assert_allclose(res.log_weights, -np.log(400))
    assert np.isin(res.x[:, 0], x0[:, 0]).all()


@pytest.mark.parametrize("kernel", ["ula", "mala"])
def test_identical_energies_keep_weights_uniform(kernel):
    """E_q == E_target: every increment is 0, the ESS stays 1; works on [B, N, 3] particles."""
    q = GaussianProposal()
    cfg = SMCConfig(kernel=kernel, n_levels=8, n_mcmc_steps=2, step_size=0.05)
    res = run(q.energy_and_forces, cfg, seed=2, b=300, shape=(2, 3))
    assert res.x.shape == (300, 2, 3)
    np.testing.assert_allclose(res.ess, 1.0, atol=1e-12)
    np.testing.assert_allclose(res.final_log_weights_pre_resampling, -np.log(300), atol=1e-12)
    assert res.resampled.tolist() == [False] * 7 + [True]
    assert res.log_z == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(res.target_energy, q.energy_and_forces(res.x)[0])


# --- accuracy on known targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel,step",
    [("ula", 0.01), ("mala", 0.05)],  # ULA has O(step) bias: keep its step small
)
def test_shifted_gaussian_moments_and_log_z(kernel, step):
    mean, sd = np.array([2.0, -1.0]), 0.5
    cfg = SMCConfig(kernel=kernel, n_levels=40, n_mcmc_steps=3, step_size=step)
    est_m, est_m2, est_lz = [], [], []
    for seed in range(6):
        res = run(gaussian_target(mean, sd), cfg, seed=100 + seed, b=1000, shape=(2,))
        assert res.t_schedule[-1] == 1.0
        est_m.append(res.x.mean(axis=0))
        est_m2.append((res.x**2).mean(axis=0))
        est_lz.append(res.log_z)
    check_close(est_m, mean)
    check_close(est_m2, mean**2 + sd**2, max_se=0.1)
    check_close(est_lz, np.log(2 * np.pi * sd**2))  # log of the 2-D Gaussian normaliser


@pytest.mark.parametrize("kernel,step", [("ula", 0.003), ("mala", 0.02)])
def test_double_well_occupancy(kernel, step):
    def e1(z):
        return double_well(z[:, None])[0]

    mean_true, left_true = quadrature(e1, [lambda z: z, lambda z: (z < 0).astype(float)])
    assert 0.65 < left_true < 0.8  # a genuinely asymmetric two-well target
    cfg = SMCConfig(kernel=kernel, n_levels=40, n_mcmc_steps=3, step_size=step)
    est = []
    for seed in range(6):
        res = run(double_well, cfg, seed=200 + seed, b=1000)
        est.append([res.x[:, 0].mean(), (res.x[:, 0] < 0).mean()])
    check_close(est, [mean_true, left_true])


# --- MALA step-size adaptation -----------------------------------------------------------------------


@pytest.mark.parametrize("h0", [1e-4, 10.0])
def test_mala_step_size_adapts_toward_target_acceptance(h0):
    cfg = SMCConfig(kernel="mala", n_levels=40, step_size=h0, target_accept=0.6)
    res = run(gaussian_target([2.0], 0.5), cfg, seed=3, b=1000)
    first, last = res.acceptance[0], res.acceptance[-10:].mean()
    assert abs(last - 0.6) < abs(first - 0.6)
    assert abs(last - 0.6) < 0.1, res.acceptance
    assert (res.step_sizes[-1] > h0) if h0 < 1 else (res.step_sizes[-1] < h0)
    # ULA does not adapt by default
    res_ula = run(gaussian_target([2.0], 0.5), SMCConfig(kernel="ula", n_levels=5, step_size=1e-3), seed=3)
    np.testing.assert_array_equal(res_ula.step_sizes, 1e-3)


# --- robustness and accounting -------------------------------------------------------------------------


def broken_gaussian(x):
    """N(2, 0.5^2) but NaN energy for x < -1.5 and infinite forces for -1.5 <= x < -1 (~16% of q)."""
    e, f = gaussian_target([2.0], 0.5)(x)
    e = np.where(x[:, 0] < -1.5, np.nan, e)
    f = np.where((x[:, :1] >= -1.5) & (x[:, :1] < -1), np.inf, f)
    return e, f


@pytest.mark.parametrize("kernel,step", [("ula", 0.01), ("mala", 0.05)])
def test_non_finite_target_energies_get_zero_weight(kernel, step):
    cfg = SMCConfig(kernel=kernel, n_levels=30, n_mcmc_steps=2, step_size=step, ess_threshold=0.3)
    rng = np.random.default_rng(4)
    q = GaussianProposal()
    x0, lq0 = q.sample(rng, 2000, (1,))
    res = smc(x0, lq0, q, broken_gaussian, cfg, rng)
    bad0 = (x0[:, 0] < -1).mean()
    assert 0.1 < bad0 < 0.25
    assert res.ess[0] <= 1 - bad0 + 1e-9  # the invalid particles lost all weight at the first level
    assert np.all(res.x[:, 0] >= -1) and np.isfinite(res.target_energy).all()
    assert np.isfinite(res.log_weights).all() and np.isfinite(res.log_z)
    assert abs(res.x[:, 0].mean() - 2.0) < 0.1


def test_all_weights_vanishing_raises():
    def dead(x):
        return np.full(len(x), np.inf), np.zeros_like(x)

    with pytest.raises(RuntimeError, match="vanished"):
        run(dead, SMCConfig(n_levels=3), seed=5, b=20)


@pytest.mark.parametrize("kernel,n_levels,n_steps", [("ula", 7, 3), ("mala", 5, 2), ("mala", 4, 0)])
def test_energy_evaluations_are_counted_exactly(kernel, n_levels, n_steps):
    b = 64
    target = Counting(gaussian_target([1.0], 0.7))
    q = GaussianProposal()
    q_count = Counting(q.energy_and_forces)
    rng = np.random.default_rng(6)
    x0, lq0 = q.sample(rng, b, (1,))
    cfg = SMCConfig(kernel=kernel, n_levels=n_levels, n_mcmc_steps=n_steps, step_size=0.05)
    res = smc(x0, lq0, q_count, target, cfg, rng)
    assert res.n_energy_evals == target.count == b * (1 + n_levels * n_steps)
    assert res.n_proposal_evals == q_count.count == b * (1 + n_levels * n_steps)


def test_paper_config_and_systematic_resampling():
    ula, mala = SMCConfig.paper("ula"), SMCConfig.paper("mala", step_size=5e-4)
    assert (ula.n_levels, ula.n_mcmc_steps, ula.adapts()) == (100, 1, False)
    assert (mala.n_levels, mala.adapts(), mala.step_size) == (50, True, 5e-4)
    rng = np.random.default_rng(7)
    log_w = np.array([np.log(0.5), -np.inf, np.log(0.25), np.log(0.25), -np.inf])
    counts = np.bincount(systematic_resample(log_w, len(log_w), rng), minlength=5)
    assert counts[1] == counts[4] == 0 and counts.sum() == 5
    big = np.bincount(systematic_resample(np.log([0.7, 0.2, 0.1]), 3, rng), minlength=3)
    assert big.sum() == 3 and abs(big[0] - 2.1) < 1 and abs(big[2] - 0.3) < 1


# --- the paper's settings, filters and statistics that cannot mislead --------------------------------


def test_paper_step_sizes_units_and_band_adaptation():
    ula, mala = SMCConfig.paper("ula"), SMCConfig.paper("mala")
    assert ula.step_size == pytest.approx(1e-5 * 0.01) and mala.step_size == 5e-4  # eps x dt; MALA start
    assert (mala.adapt_rule, mala.target_accept_band, mala.adapt_factor) == ("band", (0.55, 0.6), 1.1)
    assert (ula.drop_top_fraction, ula.max_target_energy) == (0.002, 100.0)
    # acceptance ~1 (tiny step): x1.1 per level; acceptance ~0 (huge step): /1.1 per level
    for h0, factor in ((1e-6, 1.1), (50.0, 1 / 1.1)):
        cfg = SMCConfig.paper("mala", n_levels=6, step_size=h0, drop_top_fraction=0.0, max_target_energy=None)
        res = run(gaussian_target([0.5], 1.0), cfg, seed=1, b=400)
        np.testing.assert_allclose(res.step_sizes, h0 * factor ** np.arange(6), rtol=1e-12)


def test_prefilter_drops_top_weights_then_high_energies_and_counts_them():
    rng = np.random.default_rng(11)
    q = GaussianProposal()
    x0, lq0 = q.sample(rng, 5000, (1,))
    target = gaussian_target([0.0], 0.8)  # E = x^2 / 1.28: above 3 kT for |x| > 1.96
    cfg = SMCConfig(kernel="ula", n_levels=3, n_mcmc_steps=0, ess_threshold=1.0, drop_top_fraction=0.002,
                    max_target_energy=3.0)
    res = smc(x0, lq0, q, target, cfg, rng)
    e = target(x0)[0]
    log_iw = -e - lq0  # E_q = -log q
    top = np.argsort(log_iw)[-10:]  # floor(0.002 x 5000)
    high = np.setdiff1d(np.flatnonzero(e > 3.0), top)
    assert res.info["n_dropped_top_weight"] == 10 and res.info["n_dropped_high_energy"] == len(high) > 50
    kept = np.setdiff1d(np.arange(5000), np.union1d(top, high))
    # no moves: every final particle is a copy of a kept proposal
    assert np.isin(res.x[:, 0], x0[kept, 0]).all()
    with pytest.raises(RuntimeError, match="no proposal left"):
        smc(x0, lq0, q, target, SMCConfig(n_levels=2, max_target_energy=-1.0), rng)


def test_collapse_is_visible_in_distinct_counts():
    """One weight dominates: the ESS after resampling says nothing, the distinct counts say 'collapsed'."""
    rng = np.random.default_rng(12)
    q = GaussianProposal()
    x0, lq0 = q.sample(rng, 500, (2,))
    far = gaussian_target([4.0, 4.0], 0.05)  # far in q's tail: a handful of proposals carry all the weight
    frozen = smc(x0, lq0, q, far, SMCConfig(kernel="mala", n_levels=1, n_mcmc_steps=0), rng)
    assert frozen.n_distinct == frozen.n_distinct_ancestors <= 3 and frozen.min_ess < 0.01
    moved = smc(x0, lq0, q, far, SMCConfig(kernel="ula", n_levels=1, n_mcmc_steps=1, step_size=1e-6), rng)
    assert moved.n_distinct == 500  # ULA moved every copy a little ...
    assert moved.n_distinct_ancestors <= 3  # ... but they descend from at most three proposals
    healthy = smc(x0, lq0, q, q.energy_and_forces, SMCConfig(kernel="mala", n_levels=2, n_mcmc_steps=0), rng)
    assert healthy.n_distinct == healthy.n_distinct_ancestors == 500 and healthy.min_ess == pytest.approx(1.0)


def stiffest_bond_kT_per_flow_unit2(temperature_K=300.0, scale_nm=0.35):
    """The largest harmonic bond constant of amber14 (paper force field) for a real dipeptide, in
    kT per (normalised flow unit)^2, the units SMC's step sizes are in (proseflow.samplers.proposals.run_smc)."""
    import openmm

    from proseflow.physics.structures import build_peptide
    from proseflow.physics.system import create_system, kT_kJ_per_mol

    topology, _ = build_peptide("AS", minimize=False)
    force = next(f for f in create_system(topology).getForces() if isinstance(f, openmm.HarmonicBondForce))
    k = max(force.getBondParameters(i)[3].value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer**2)
            for i in range(force.getNumBonds()))  # kJ/mol/nm^2
    return k * scale_nm**2 / kT_kJ_per_mol(temperature_K)


def test_ula_at_the_paper_step_is_stable_on_the_stiffest_bond():
    """E = K r^2 / 2 with K of the force field's stiffest bond (~2.7e4 kT per flow unit^2 at 300 K):
    Euler-Maruyama is stable for h K < 2. The paper's h = 1e-7 (h K ~ 3e-3) keeps the Boltzmann variance 1/K over 2000
    steps; a step of 3 / K (e.g. the old default 1e-3) blows up: the particles run off until their moves overflow
    (a non-finite move is not taken), nowhere near the Boltzmann variance."""
    K = stiffest_bond_kT_per_flow_unit2()
    assert 5e3 < K < 1e5  # amber14 bonds to hydrogen: ~3e5 kJ/mol/nm^2

    def bond(x):
        return 0.5 * K * np.sum(x**2, axis=1), -K * x

    rng = np.random.default_rng(13)
    x0 = rng.normal(0, 1 / np.sqrt(K), (2000, 1))
    lq0 = -0.5 * K * x0[:, 0] ** 2 + 0.5 * np.log(K / (2 * np.pi))
    paper = SMCConfig.paper("ula", n_levels=2000, drop_top_fraction=0.0, max_target_energy=None)
    assert paper.step_size * K < 5e-3
    res = smc(x0, lq0, bond, bond, paper, rng)
    assert np.isfinite(res.x).all() and res.n_distinct == 2000
    assert np.var(res.x) * K == pytest.approx(1.0, abs=0.1)
    blown = smc(x0, lq0, bond, bond, SMCConfig(kernel="ula", n_levels=2000, step_size=3 / K), rng)
    with np.errstate(over="ignore", invalid="ignore"):
        v = float(np.var(blown.x)) * K
    assert not v < 1e3 and blown.acceptance[-1] < 0.5  # unstable: far from 1, and the last moves overflow


# --- adaptive mode (issue 20) -------------------------------------------------------------------------


def test_adaptive_levels_hold_the_conditional_ess_and_reach_the_target():
    """Levels by bisection: every level but the last has conditional ESS = target_cess (to the bisection's
    tolerance), the last at least that; the moments and log Z of a shifted Gaussian come out right; every
    target evaluation is counted (1 + levels x MALA steps per particle)."""
    mean, sd = np.array([2.0, -1.0]), 0.5
    cfg = SMCConfig.adaptive_mala(target_cess=0.9, n_mcmc_steps=3, step_size=0.05, drop_top_fraction=0.0,
                                  max_target_energy=None)
    est_m, est_m2, est_lz = [], [], []
    for seed in range(6):
        res = run(gaussian_target(mean, sd), cfg, seed=300 + seed, b=1000, shape=(2,))
        k = len(res.ess)
        assert res.t_schedule[0] == 0.0 and res.t_schedule[-1] == 1.0 and len(res.t_schedule) == k + 1
        assert np.all(np.diff(res.t_schedule) > 0) and 3 <= k < 100
        np.testing.assert_allclose(res.cess[:-1], 0.9, atol=2e-3)
        assert res.cess[-1] >= 0.9 - 2e-3
        assert res.n_energy_evals == 1000 * (1 + 3 * k) and res.info["adaptive"]
        est_m.append(res.x.mean(axis=0))
        est_m2.append((res.x**2).mean(axis=0))
        est_lz.append(res.log_z)
    check_close(est_m, mean)
    check_close(est_m2, mean**2 + sd**2, max_se=0.1)
    check_close(est_lz, np.log(2 * np.pi * sd**2))


def test_adaptive_mode_spends_more_levels_on_a_harder_target_and_respects_max_levels():
    easy = run(gaussian_target([0.2], 0.9), SMCConfig.adaptive_mala(drop_top_fraction=0.0, max_target_energy=None),
               seed=0, b=500)
    hard = run(gaussian_target([3.0], 0.2), SMCConfig.adaptive_mala(drop_top_fraction=0.0, max_target_energy=None),
               seed=0, b=500)
    assert len(easy.ess) < len(hard.ess)
    capped = run(gaussian_target([3.0], 0.2), SMCConfig.adaptive_mala(max_levels=4, drop_top_fraction=0.0,
                                                                       max_target_energy=None), seed=0, b=500)
    assert len(capped.ess) == 4 and capped.t_schedule[-1] == 1.0


def test_conditional_ess_closed_forms():
    from proseflow.samplers.smc import conditional_ess

    log_w = np.log(np.array([0.5, 0.25, 0.25]))
    assert conditional_ess(log_w, np.zeros(3)) == pytest.approx(1.0)
    assert conditional_ess(log_w, np.full(3, -7.0)) == pytest.approx(1.0)  # a constant increment
    inc = np.log(np.array([1.0, 2.0, 4.0]))  # (sum W w)^2 / sum W w^2 = (0.5+0.5+1)^2 / (0.5+1+4) = 4/5.5
    assert conditional_ess(log_w, inc) == pytest.approx(4 / 5.5)
    assert conditional_ess(np.array([0.0, -np.inf]), np.array([0.0, 5.0])) == pytest.approx(1.0)  # dead: ignored
