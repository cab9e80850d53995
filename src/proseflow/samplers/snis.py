"""Self-normalised importance sampling (SNIS) and resampling (PAPER.md section 4).

log w = log p_unnorm - log q, with log p_unnorm = -E/kT. Proposals whose log w is not finite
(NaN/inf energy or log q) get zero weight and are counted, never raise. The largest
``drop_top_fraction`` of the finite log w are dropped (count rounded down: 0.2% of 1e4 -> 20).
Proposals outside the target's support (``valid`` False: a chirality no mirror can fix has density zero
under the all-L target) get weight zero too, counted as ``n_invalid``, before the drop.
The ESS is the normalised Kish ESS over ALL N proposals, dropped and non-finite ones included:
ESS = (sum w)^2 / (N sum w^2), in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proseflow.samplers.config import PAPER_DROP_TOP_FRACTION
from proseflow.samplers.resampling import kish_ess, multinomial_resample, normalise_log_weights


@dataclass
class SnisResult:
    log_weights: np.ndarray  # [N] normalised (logsumexp = 0), -inf for dropped and non-finite proposals
    ess: float  # normalised Kish ESS over all N proposals
    n_nonfinite: int
    n_dropped: int
    indices: np.ndarray  # [n_resample] multinomial resampling indices into the proposals (empty if none usable)
    n_invalid: int = 0  # proposals outside the target's support (weight zero), e.g. unfixable chirality

    @property
    def weights(self) -> np.ndarray:
        return np.exp(self.log_weights)

    @property
    def n_total(self) -> int:
        return len(self.log_weights)

    @property
    def n_distinct(self) -> int:
        """Distinct proposals in the resampled set (1 when one weight dominates, whatever the ESS says)."""
        return int(len(np.unique(self.indices)))


def snis(log_p_unnorm: np.ndarray, log_q: np.ndarray, drop_top_fraction: float = PAPER_DROP_TOP_FRACTION,
         rng: np.random.Generator | int | None = None, n_resample: int | None = None,
         valid: np.ndarray | None = None) -> SnisResult:
    """SNIS weights of proposals x_i ~ q for the target p ∝ exp(log_p_unnorm).

    ``n_resample`` defaults to N (number of proposals); ``rng`` is a Generator or a seed; ``valid`` [N] bool
    marks the proposals inside the target's support (the others get weight zero).
    """
    log_p = np.asarray(log_p_unnorm, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_p.shape != log_q.shape or log_p.ndim != 1:
        raise ValueError(f"log_p_unnorm {log_p.shape} and log_q {log_q.shape} must be equal 1-D shapes")
    if not 0.0 <= drop_top_fraction < 1.0:
        raise ValueError("drop_top_fraction must be in [0, 1)")
    with np.errstate(invalid="ignore"):
        log_w = log_p - log_q
    finite = np.isfinite(log_p) & np.isfinite(log_q) & np.isfinite(log_w)
    n_nonfinite = int((~finite).sum())
    invalid = np.zeros(len(log_w), dtype=bool) if valid is None else ~np.asarray(valid, dtype=bool)
    if invalid.shape != log_w.shape:
        raise ValueError(f"valid has shape {invalid.shape}, the proposals {log_w.shape}")
    n_invalid = int((invalid & finite).sum())
    finite &= ~invalid
    log_w = np.where(finite, log_w, -np.inf)

    n_dropped = int(np.floor(drop_top_fraction * finite.sum()))
    if n_dropped > 0:
        top = np.argpartition(log_w, -n_dropped)[-n_dropped:]  # -inf entries are never among the largest
        log_w[top] = -np.inf

    log_w = normalise_log_weights(log_w)
    n_total = len(log_w)
    ess = kish_ess(log_w, n_total)
    n_resample = n_total if n_resample is None else int(n_resample)
    if np.isfinite(log_w).any():
        indices = multinomial_resample(log_w, n_resample, rng)
    else:
        indices = np.zeros(0, dtype=np.int64)
    return SnisResult(log_weights=log_w, ess=ess, n_nonfinite=n_nonfinite, n_dropped=n_dropped, indices=indices,
                      n_invalid=n_invalid)
