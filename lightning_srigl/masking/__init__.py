"""Bind masks to a model: parameter selection, mask buffers, optimizer-state hygiene (plain PyTorch)."""

from lightning_srigl.masking.masks import MASK_SUFFIX, MaskedParameters, mask_buffer_name
from lightning_srigl.masking.optim_state import zero_optimizer_state_
from lightning_srigl.masking.selection import (
    DEFAULT_LAYER_TYPES,
    SparseParameter,
    check_patterns_match,
    matches,
    select_parameters,
    select_structured_parameters,
    sparsifiable_param_names,
)

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "MASK_SUFFIX",
    "MaskedParameters",
    "SparseParameter",
    "check_patterns_match",
    "mask_buffer_name",
    "matches",
    "select_parameters",
    "select_structured_parameters",
    "sparsifiable_param_names",
    "zero_optimizer_state_",
]
