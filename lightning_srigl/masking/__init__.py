"""Bind masks to a model (plain PyTorch): which weights are sparse, with which mask.

This layer is the one owner of that question. `masked_weights` lists a model's masked weights
and `mask_of` gives one module's mask; acceleration, folding and reporting ask them. Selection
(`select_parameters`), the mask buffers (`register_mask_`, `MaskedParameters`) and
optimizer-state hygiene (`zero_optimizer_state_`) live here too, and the per-step work: one
exact pass to zero gradients (`zero_inactive_`) and the rule for when the optimizer step keeps
inactive weights at zero by itself (`weight_remask_reason`).
"""

from lightning_srigl.masking.layer_types import HF_CONV1D, is_hf_conv1d, neuron_major, parameter_owners
from lightning_srigl.masking.masked_weight import MaskedWeight, mask_of, qualified_name
from lightning_srigl.masking.masks import MaskedParameters
from lightning_srigl.masking.optim_state import zero_optimizer_state_
from lightning_srigl.masking.registry import (
    LEGACY_MASK_SUFFIX,
    MASK_SUFFIX,
    accept_masks_on_load,
    bind_masks,
    check_not_pruned,
    mask_buffer_name,
    masked_weights,
    register_mask_,
    remove_mask_,
    remove_masks_,
    without_masks,
)
from lightning_srigl.masking.selection import (
    DEFAULT_LAYER_TYPES,
    SparseParameter,
    check_patterns_match,
    matches,
    select_parameters,
    select_structured_parameters,
    sparsifiable_param_names,
    sparsifiable_weights,
    split_frozen,
)
from lightning_srigl.masking.sharding import (
    RowSharding,
    gather_rows,
    is_sharded,
    local_part,
    plain_class,
    reducer_for,
    row_sharding,
    shard_like,
    unshard_modules_,
    whole_tensor,
)
from lightning_srigl.masking.zero_keeping import ZERO_KEEPING_OPTIMIZERS, establish_zeros_, weight_remask_reason
from lightning_srigl.masking.zeroing import move_inactive_, step_mask, zero_inactive_

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "HF_CONV1D",
    "ZERO_KEEPING_OPTIMIZERS",
    "LEGACY_MASK_SUFFIX",
    "MASK_SUFFIX",
    "MaskedParameters",
    "MaskedWeight",
    "RowSharding",
    "SparseParameter",
    "accept_masks_on_load",
    "bind_masks",
    "check_not_pruned",
    "is_hf_conv1d",
    "is_sharded",
    "local_part",
    "check_patterns_match",
    "establish_zeros_",
    "gather_rows",
    "mask_buffer_name",
    "mask_of",
    "masked_weights",
    "matches",
    "move_inactive_",
    "neuron_major",
    "parameter_owners",
    "plain_class",
    "qualified_name",
    "reducer_for",
    "register_mask_",
    "remove_mask_",
    "remove_masks_",
    "row_sharding",
    "without_masks",
    "select_parameters",
    "select_structured_parameters",
    "shard_like",
    "sparsifiable_param_names",
    "sparsifiable_weights",
    "split_frozen",
    "step_mask",
    "unshard_modules_",
    "weight_remask_reason",
    "whole_tensor",
    "zero_inactive_",
    "zero_optimizer_state_",
]
