"""The prior of a proposal at another temperature (temperature transfer, PAPER.md section 4): standard
library only, so the settings layer can validate prior modes."""

from __future__ import annotations

import math

PRIOR_MODES = ("plain", "scaled")


def prior_std_for(temperature_K: float, train_temperature_K: float, mode: str) -> float:
    """Prior standard deviation of the proposal at ``temperature_K``: sqrt(T / T_train) ("scaled") or 1 ("plain")."""
    if mode == "scaled":
        t, t0 = float(temperature_K), float(train_temperature_K)
        if not (t > 0 and t0 > 0):
            raise ValueError(f"temperatures must be positive, got T={temperature_K} K, T_train={train_temperature_K} K")
        return math.sqrt(t / t0)
    if mode == "plain":
        return 1.0
    raise ValueError(f"unknown prior mode {mode!r}: expected one of {', '.join(PRIOR_MODES)}")
