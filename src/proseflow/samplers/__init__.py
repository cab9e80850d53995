"""Samplers over a trained flow: proposals, SNIS, SMC, self-improvement."""
