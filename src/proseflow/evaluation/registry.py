"""The metric registry: every metric proseflow writes, with its label, unit and which direction is better.

Evaluation writes metrics under these keys (per-system JSON ``metrics``, budget and temperature CSVs); the
reports take labels, units, number formats and "best" highlighting from here. JSON and CSV keys are always
the identifiers (``energy_w2``), never the labels (``E-W2``). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str = ""  # "kT", "rad", "s", or "" for dimensionless
    better: str | None = None  # "higher", "lower", or None (not a quality measure)
    integer: bool = False  # a count
    doc: str = ""

    def label_with_unit(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("ess", "ESS", better="higher", doc="Kish effective sample size of the importance weights over n "
           "(SMC: the smaller of the final weights' ESS and the share of distinct proposals the final particles "
           "descend from, so a population that collapsed onto a few ancestors does not read as ESS 1)"),
    Metric("n_distinct", "distinct samples", integer=True, doc="distinct configurations in the resampled set"),
    Metric("energy_w2", "E-W2", "kT", "lower", doc="1-D Wasserstein-2 distance of the energy distributions"),
    Metric("torus_w2", "T-W2", "rad", "lower", doc="W2 of the backbone dihedrals on the torus"),
    Metric("tica_w2", "TICA-W2", "", "lower", doc="W2 on the first two TICA components"),
    Metric("tica_jsd", "TICA-JSD", "", "lower", doc="Jensen-Shannon divergence of k-means state populations, TICA"),
    Metric("torus_jsd", "Torus-JSD", "", "lower", doc="Jensen-Shannon divergence of k-means state populations, dihedrals"),
    Metric("mean_energy_kT", "mean E", "kT", doc="mean energy of the (resampled) set"),
    Metric("n_samples", "samples", integer=True, doc="samples in the set"),
    Metric("n_energy_evals", "energy evals", integer=True, doc="energy evaluations spent"),
    Metric("n_nonfinite", "non-finite energies", integer=True, doc="samples whose energy is not finite"),
    Metric("chirality_fixed_rate", "chirality fixed", doc="share of proposals mirrored to L chirality"),
    Metric("chirality_unfixable_rate", "chirality unfixable", doc="share of proposals with mixed chirality"),
    Metric("min_ess", "smallest SMC ESS", doc="smallest normalised ESS before an SMC resampling"),
    Metric("n_distinct_ancestors", "distinct ancestors", integer=True, doc="initial proposals behind SMC's particles"),
    Metric("n_dropped_top_weight", "dropped (top weight)", integer=True, doc="proposals dropped for extreme weight"),
    Metric("n_dropped_high_energy", "dropped (high energy)", integer=True, doc="proposals dropped for high energy"),
    Metric("wall_time_s", "wall time", "s", doc="wall-clock time of the sampler"),
)}  # fmt: skip

# metric groups: what each table or curve shows
TABLE2 = ("ess", "energy_w2", "torus_w2", "tica_w2")  # paper Table 2
TABLE4 = ("energy_w2", "torus_w2", "tica_w2")  # paper Table 4
W2 = ("energy_w2", "torus_w2", "tica_w2")
DISTRIBUTION = ("energy_w2", "torus_w2", "tica_w2", "tica_jsd", "torus_jsd", "mean_energy_kT")  # need samples
PAGE = ("ess", "n_distinct", "energy_w2", "torus_w2", "tica_w2", "tica_jsd", "torus_jsd", "mean_energy_kT",
        "n_samples", "n_energy_evals", "chirality_fixed_rate", "chirality_unfixable_rate")  # per-system page order
# counts a sampler's .npz may carry, copied into its metrics
SAMPLER_COUNTS = ("min_ess", "n_distinct_ancestors", "n_dropped_top_weight", "n_dropped_high_energy")


def label(key: str, unit: bool = False) -> str:
    """Display label of ``key`` (with its unit when ``unit``); unknown keys are shown as they are."""
    m = METRICS.get(key)
    if m is None:
        return key
    return m.label_with_unit() if unit else m.label


def better(key: str) -> str | None:
    """"higher", "lower" or None for ``key`` (None for unknown keys)."""
    m = METRICS.get(key)
    return m.better if m else None


def is_integer(key: str) -> bool:
    m = METRICS.get(key)
    return bool(m and m.integer)


def _check() -> None:
    for k, m in METRICS.items():
        assert k == m.key and m.better in (None, "higher", "lower"), m
    for group in (TABLE2, TABLE4, W2, DISTRIBUTION, PAGE, SAMPLER_COUNTS):
        assert set(group) <= set(METRICS), set(group) - set(METRICS)


_check()
