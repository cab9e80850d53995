"""proseflow: a reproducible pipeline for Prose, a transferable all-atom normalizing flow for peptides."""

__version__ = "0.1.0"
