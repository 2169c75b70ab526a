"""Pure tensor math for dynamic sparse training: no Lightning, no module walking."""

from lightning_srigl.sparsity.constant_fan_in import (
    LayerInputs,
    NeuronAblation,
    SRigLUpdate,
    check_fan_in_budget,
    nearest_fan_in,
    neurons_to_ablate,
    random_constant_fan_in_mask,
    srigl_update,
    srigl_update_layers,
)
from lightning_srigl.sparsity.distribution import erk_densities, layer_budgets, uniform_densities
from lightning_srigl.sparsity.diversity import count_transposable_patterns, mask_diversity_log10
from lightning_srigl.sparsity.init import sparse_init_
from lightning_srigl.sparsity.metrics import (
    active_neurons,
    density,
    fan_in,
    is_constant_fan_in,
    itop_rate,
    mask_change,
)
from lightning_srigl.sparsity.nm import (
    check_nm,
    is_nm,
    nm_fan_in,
    nm_group_view,
    nm_mask,
    nm_ungroup_view,
    sr_ste_refine_term,
)
from lightning_srigl.sparsity.nm_dynamic import NMUpdate, nm_drop_grow, random_nm_mask
from lightning_srigl.sparsity.reducer import LocalReducer, Reducer, Selection, ShardReducer, update_groups
from lightning_srigl.sparsity.rigl import RigLUpdate, random_unstructured_mask, rigl_update, rigl_update_layers
from lightning_srigl.sparsity.schedule import (
    cosine_drop_fraction,
    exploration_end,
    in_gradient_window,
    is_update_step,
    update_due,
)
from lightning_srigl.sparsity.structure import CONSTANT_FAN_IN, Structure
from lightning_srigl.sparsity.topk import as_rows, rowwise_topk_mask, topk_mask
from lightning_srigl.sparsity.transposable import (
    TransposableMask,
    check_transposable_nm,
    is_transposable_nm,
    tile_view,
    transposable_nm_mask,
    transposable_patterns,
    untile_view,
)
from lightning_srigl.sparsity.validation import all_finite, as_integer, as_real, check_sparsity

__all__ = [
    "CONSTANT_FAN_IN",
    "LayerInputs",
    "LocalReducer",
    "Reducer",
    "Selection",
    "ShardReducer",
    "NMUpdate",
    "NeuronAblation",
    "RigLUpdate",
    "SRigLUpdate",
    "Structure",
    "TransposableMask",
    "active_neurons",
    "all_finite",
    "as_integer",
    "as_real",
    "as_rows",
    "check_fan_in_budget",
    "check_nm",
    "check_sparsity",
    "check_transposable_nm",
    "cosine_drop_fraction",
    "count_transposable_patterns",
    "density",
    "erk_densities",
    "exploration_end",
    "fan_in",
    "in_gradient_window",
    "is_constant_fan_in",
    "is_nm",
    "is_transposable_nm",
    "is_update_step",
    "itop_rate",
    "layer_budgets",
    "mask_change",
    "mask_diversity_log10",
    "nearest_fan_in",
    "neurons_to_ablate",
    "nm_drop_grow",
    "nm_fan_in",
    "nm_group_view",
    "nm_mask",
    "nm_ungroup_view",
    "random_constant_fan_in_mask",
    "random_nm_mask",
    "random_unstructured_mask",
    "rigl_update",
    "rigl_update_layers",
    "rowwise_topk_mask",
    "sparse_init_",
    "sr_ste_refine_term",
    "srigl_update",
    "srigl_update_layers",
    "tile_view",
    "topk_mask",
    "transposable_nm_mask",
    "transposable_patterns",
    "uniform_densities",
    "untile_view",
    "update_due",
    "update_groups",
]
