"""Evaluation: TICA, the paper's metrics, per-system evaluation, diagnostics, budget and temperature studies."""
