"""The metric registry: every metric the evaluation writes is registered, and the reports take its labels,
units and better-direction from there."""

import numpy as np
import pandas as pd

from proseflow.evaluation import registry
from proseflow.evaluation.evaluate import Projection, sampler_metrics
from proseflow.report.summary import table2
from proseflow.report.system_page import _metrics_frame, metadata_label


def projection(rng, n, shift=0.0):
    return Projection(rng.normal(shift, 1.0, n), rng.uniform(-np.pi, np.pi, (n, 2)), rng.normal(shift, 1.0, (n, 2)))


def test_every_metric_the_evaluation_writes_is_registered():
    rng = np.random.default_rng(0)
    ref, samples = projection(rng, 400), projection(rng, 300, 0.5)
    for log_w in (None, rng.normal(size=300)):
        m = sampler_metrics(ref, samples, log_w, n_metric=200, k=5)
        assert set(m) <= set(registry.METRICS), set(m) - set(registry.METRICS)
        assert set(registry.DISTRIBUTION) <= set(m)


def test_labels_units_and_directions():
    assert registry.label("energy_w2") == "E-W2" and registry.label("energy_w2", unit=True) == "E-W2 (kT)"
    assert registry.label("torus_w2", unit=True) == "T-W2 (rad)" and registry.label("not_a_metric") == "not_a_metric"
    assert registry.better("ess") == "higher" and registry.better("tica_w2") == "lower"
    assert registry.better("n_samples") is None and registry.is_integer("n_energy_evals")


def test_best_value_follows_the_registry_direction():
    metrics = {"a": {"ess": 0.1, "energy_w2": 2.0, "n_samples": 10},
               "b": {"ess": 0.3, "energy_w2": 5.0, "n_samples": 99}}
    df, best = _metrics_frame(metrics)
    assert best == {"ess": 1, "energy_w2": 0}  # highest ESS, lowest W2; counts are never "best"
    assert list(df.columns[:3]) == ["sampler", "ess", "energy_w2"]


def test_a_collapsed_set_is_never_best():
    """issue 19: the demo's smc_mala showed ESS 1 in bold with 1 distinct sample: a collapsed set is labelled and
    no column marks it best, even where its figure is the highest."""
    metrics = {"snis": {"ess": 0.002, "energy_w2": 9.0, "n_samples": 500, "n_distinct": 40},
               "smc_mala": {"ess": 1.0, "energy_w2": 2.0, "n_samples": 200, "n_distinct": 1},
               "proposal": {"energy_w2": 30.0, "n_samples": 500, "n_distinct": 500}}
    df, best = _metrics_frame(metrics)
    assert best == {"energy_w2": 0}  # ESS: no other non-collapsed set has one, so nothing to compare
    assert df["sampler"].tolist() == ["snis", "smc_mala (collapsed)", "proposal"]


def test_tables_use_the_registry_labels_and_identifier_keys():
    rows = [{"sequence": "AA", "length": 2, "sampler": "snis", "ess": 0.2, "energy_w2": 1.0, "torus_w2": 0.3,
             "tica_w2": np.nan, "n_distinct": 5}]
    t = table2(rows)
    assert "2AA ESS" in t.columns and "2AA E-W2" in t.columns and "2AA T-W2" in t.columns
    run = t[t["source"] == "this run"].iloc[0]
    assert run["2AA E-W2"] == 1.0 and pd.isna(run["2AA TICA-W2"])
    assert metadata_label("snis_wall_time_s") == "snis wall time (s)" and metadata_label("in_training_set") == "in training set"
