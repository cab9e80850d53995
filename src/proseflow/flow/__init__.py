"""The Prose flow (transferable TarFlow) and its coordinate preprocessing.

The names below load on first use (PEP 562), so ``proseflow.flow.config`` (standard library only) can be
imported by the settings layer without importing torch.
"""

import importlib

_EXPORTS = {
    "PERMUTATION_NAMES": "proseflow.flow.model",
    "FlowConfig": "proseflow.flow.config",
    "ProseFlow": "proseflow.flow.model",
    "count_parameters": "proseflow.flow.model",
    "repeat_batch": "proseflow.flow.model",
    "set_fp32_numerics": "proseflow.flow.model",
    "SCALE_NM": "proseflow.flow.preprocess",
    "preprocess_train": "proseflow.flow.preprocess",
    "proposal_log_prob_nm": "proseflow.flow.preprocess",
    "random_rotations": "proseflow.flow.preprocess",
    "remove_centroid": "proseflow.flow.preprocess",
    "to_nm": "proseflow.flow.preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'proseflow.flow' has no attribute {name!r}")
