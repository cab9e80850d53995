"""The Prose flow (transferable TarFlow) and its coordinate preprocessing."""

from proseflow.flow.model import (
    PERMUTATION_NAMES,
    FlowConfig,
    ProseFlow,
    count_parameters,
    repeat_batch,
    set_fp32_numerics,
)
from proseflow.flow.preprocess import (
    SCALE_NM,
    preprocess_train,
    proposal_log_prob_nm,
    random_rotations,
    remove_centroid,
    to_nm,
)

__all__ = [
    "PERMUTATION_NAMES",
    "SCALE_NM",
    "FlowConfig",
    "ProseFlow",
    "count_parameters",
    "preprocess_train",
    "proposal_log_prob_nm",
    "random_rotations",
    "remove_centroid",
    "repeat_batch",
    "set_fp32_numerics",
    "to_nm",
]
