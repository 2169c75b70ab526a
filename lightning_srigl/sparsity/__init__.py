"""Pure tensor math for dynamic sparse training: no Lightning, no module walking."""

from lightning_srigl.sparsity.constant_fan_in import (
    NeuronAblation,
    SRigLUpdate,
    neurons_to_ablate,
    random_constant_fan_in_mask,
    srigl_update,
)
from lightning_srigl.sparsity.distribution import erk_densities, layer_budgets, uniform_densities
from lightning_srigl.sparsity.init import sparse_init_
from lightning_srigl.sparsity.metrics import (
    active_neurons,
    density,
    fan_in,
    is_constant_fan_in,
    itop_rate,
    mask_change,
)
from lightning_srigl.sparsity.rigl import RigLUpdate, random_unstructured_mask, rigl_update
from lightning_srigl.sparsity.schedule import cosine_drop_fraction, exploration_end, is_update_step
from lightning_srigl.sparsity.topk import as_rows, rowwise_topk_mask, topk_mask
from lightning_srigl.sparsity.validation import check_sparsity
