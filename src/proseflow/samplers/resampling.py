"""Importance weights: normalisation, the Kish effective sample size, and resampling (one implementation,
used by SNIS, SMC, self-improvement and the evaluation)."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def normalise_log_weights(log_w: np.ndarray) -> np.ndarray:
    """log w - logsumexp(log w); all -inf stays all -inf."""
    log_w = np.asarray(log_w, dtype=np.float64)
    finite = np.isfinite(log_w)
    if not finite.any():
        return np.full_like(log_w, -np.inf)
    return np.where(finite, log_w - logsumexp(log_w[finite]), -np.inf)


def kish_ess(log_w: np.ndarray, n_total: int | None = None) -> float:
    """Normalised Kish ESS (sum w)^2 / (N sum w^2); N = ``n_total`` or len(log_w) (-inf entries count)."""
    log_w = np.asarray(log_w, dtype=np.float64)
    n = len(log_w) if n_total is None else int(n_total)
    finite = log_w[np.isfinite(log_w)]
    if n == 0 or finite.size == 0:
        return 0.0
    # relative to the largest weight: log weights of 1e11 (energies of clashing proposals) would otherwise lose
    # 1e-5 to round-off and give an ESS above 1; by Cauchy-Schwarz it is at most 1
    finite = finite - finite.max()
    return float(min(1.0, np.exp(2.0 * logsumexp(finite) - logsumexp(2.0 * finite) - np.log(n))))


def _cumulative_weights(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(normalise_log_weights(log_w))
    if not w.any():
        raise ValueError("cannot resample: no finite log weight")
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def multinomial_resample(log_w: np.ndarray, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``n`` i.i.d. indices drawn with probability proportional to exp(log_w)."""
    cdf = _cumulative_weights(log_w)
    u = _rng(rng).uniform(size=int(n))
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def systematic_resample(log_w: np.ndarray, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Systematic resampling: one uniform offset, ``n`` evenly spaced points; unbiased, low variance."""
    cdf = _cumulative_weights(log_w)
    u = (_rng(rng).uniform() + np.arange(int(n))) / int(n)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def count_distinct(x: np.ndarray) -> int:
    """Number of distinct configurations (rows of ``x`` [B, ...] with exactly equal coordinates count once)."""
    if len(x) == 0:
        return 0
    flat = np.ascontiguousarray(np.asarray(x).reshape(len(x), -1))
    return len(np.unique(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1])))))


def finite_stat(x: np.ndarray, stat=np.mean) -> float | None:
    """``stat`` of the finite entries of ``x``, or None if there are none."""
    x = x[np.isfinite(x)]
    return float(stat(x)) if x.size else None
