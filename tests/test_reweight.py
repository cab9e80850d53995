import numpy as np
import pytest
from scipy.stats import norm

from proseflow.samplers.resampling import count_distinct, kish_ess, multinomial_resample, systematic_resample
from proseflow.samplers.snis import snis


def _log(w):
    with np.errstate(divide="ignore"):
        return np.log(w)


def test_target_as_proposal_gives_ess_one():
    x = np.random.default_rng(0).normal(size=5000)
    log_q = norm.logpdf(x)
    result = snis(log_q + 123.0, log_q, drop_top_fraction=0.0, rng=1)  # unnormalised target
    assert result.ess == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(result.weights, 1.0 / len(x))
    assert result.n_nonfinite == 0 and result.n_dropped == 0
    assert len(result.indices) == len(x)


def test_gaussian_mean_shift_ess_closed_form():
    # q = N(0, 1), p = N(mu, 1): E_q[w^2] = exp(mu^2), so ESS = E_q[w]^2 / E_q[w^2] = exp(-mu^2)
    mu = 0.5
    x = np.random.default_rng(2).normal(size=200_000)
    result = snis(norm.logpdf(x, loc=mu), norm.logpdf(x), drop_top_fraction=0.0)
    assert result.ess == pytest.approx(np.exp(-mu**2), abs=0.01)


def test_gaussian_scale_ess_closed_form_and_drop():
    # q = N(0, s^2), p = N(0, 1) in d dims: E_q[w^2] = (s^2 / sqrt(2 s^2 - 1))^d
    s, d = 1.3, 2
    x = np.random.default_rng(3).normal(scale=s, size=(200_000, d))
    log_p, log_q = norm.logpdf(x).sum(1), norm.logpdf(x, scale=s).sum(1)
    expected = (np.sqrt(2 * s**2 - 1) / s**2) ** d
    assert snis(log_p, log_q, drop_top_fraction=0.0).ess == pytest.approx(expected, abs=0.01)
    dropped = snis(log_p, log_q)  # default 0.2%: 400 of 200,000
    assert dropped.n_dropped == 400
    assert np.isneginf(dropped.log_weights).sum() == 400
    assert dropped.ess == pytest.approx(expected, abs=0.03)


def test_nonfinite_counted_and_ess_over_all_proposals():
    log_p = np.zeros(1000)
    log_q = np.zeros(1000)
    log_p[:10] = -np.inf  # E = +inf
    log_p[10:20] = np.nan
    log_q[20:25] = np.inf
    log_q[25:30] = -np.inf  # inf log w: invalid, not a huge weight
    result = snis(log_p, log_q, drop_top_fraction=0.01, rng=0)
    assert result.n_nonfinite == 30
    assert result.n_dropped == 9  # floor(0.01 * 970)
    kept = 1000 - 30 - 9
    assert np.isfinite(result.log_weights).sum() == kept
    assert result.ess == pytest.approx(kept / 1000)  # uniform weights on the kept ones, N = all
    assert np.all(np.isfinite(result.log_weights[result.indices]))


def test_all_nonfinite_does_not_crash():
    result = snis(np.full(5, np.nan), np.zeros(5))
    assert result.ess == 0.0 and result.n_nonfinite == 5 and len(result.indices) == 0


def test_drop_removes_the_largest():
    log_w = np.arange(1000.0) / 100
    result = snis(log_w, np.zeros(1000), drop_top_fraction=0.002)
    assert result.n_dropped == 2
    assert np.all(np.isneginf(result.log_weights[-2:])) and np.all(np.isfinite(result.log_weights[:-2]))


def test_kish_ess_matches_definition():
    w = np.random.default_rng(4).exponential(size=300)
    w[:5] = 0.0
    assert kish_ess(_log(w)) == pytest.approx(w.sum() ** 2 / (len(w) * np.sum(w**2)))


def test_kish_ess_of_huge_log_weights_stays_exact():
    """Log weights near -3.3e11 (SMC increments of clashing proposals, the demo's DGVAHALS aMALA): the ESS of
    nearly equal weights is the definition's value, not 1 + 2e-5 (which a sample file refuses)."""
    rng = np.random.default_rng(0)
    d = rng.normal(0, 1e-3, 200)
    w = np.exp(d - d.max())
    ess = kish_ess(-3.3e11 + d)
    assert ess <= 1.0 and ess == pytest.approx(w.sum() ** 2 / (200 * np.sum(w**2)), rel=1e-6)


@pytest.mark.parametrize("resample", [systematic_resample, multinomial_resample])
def test_resampling_unbiased(resample):
    rng = np.random.default_rng(5)
    w = np.array([0.5, 0.0, 0.3, 0.15, 0.05])
    n, reps = 7, 20_000
    counts = np.zeros(len(w))
    for _ in range(reps):
        counts += np.bincount(resample(_log(w), n, rng), minlength=len(w))
    mean = counts / reps
    assert mean[1] == 0
    assert np.allclose(mean, n * w, atol=0.05)


def test_systematic_counts_within_floor_ceil():
    w = np.random.default_rng(6).dirichlet(np.ones(50))
    counts = np.bincount(systematic_resample(np.log(w), 1000, 7), minlength=50)
    assert counts.sum() == 1000
    assert np.all(counts >= np.floor(1000 * w) - 1e-9) and np.all(counts <= np.ceil(1000 * w) + 1e-9)


def test_count_distinct_counts_exactly_equal_rows_once():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 3)).astype(np.float32)
    resampled = x[[0, 0, 3, 5, 5, 5]]
    assert count_distinct(resampled) == 3
    nudged = resampled.copy()
    nudged[1, 2, 0] = np.nextafter(nudged[1, 2, 0], np.float32(np.inf))  # one ulp apart: a different configuration
    assert count_distinct(nudged) == 4
    assert count_distinct(x[:0]) == 0
