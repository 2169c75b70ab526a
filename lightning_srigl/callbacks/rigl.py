"""``RigLCallback``: unstructured RigL (Evci et al., 2020), the baseline SRigL is compared with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_srigl.callbacks.dynamic_sparsity import DynamicSparsityCallback
from lightning_srigl.sparsity import LayerInputs, Reducer, random_unstructured_mask, rigl_update_layers


class RigLCallback(DynamicSparsityCallback):
    """Train with RigL: drop the smallest weights of a layer, grow where the dense gradient is largest.

    Same schedule, budgets, logging and resumable state as
    [`SRigLCallback`][lightning_srigl.callbacks.SRigLCallback], without the constant fan-in constraint and
    without neuron ablation. Its arguments are
    [`DynamicSparsityCallback`][lightning_srigl.callbacks.DynamicSparsityCallback]'s.
    """

    metric_prefix = "rigl"

    @override
    def initial_mask(self, fqn: str, shape: torch.Size, target: int, generator: torch.Generator) -> Tensor:
        return random_unstructured_mask(shape, target, generator)

    @override
    def counts_problem(self, fqn: str, counts: Sequence[int]) -> str | None:
        """RigL keeps each layer's budget exactly (known in fit)."""
        active, budget = counts[0], self.budgets.get(fqn)
        if budget is not None and active != budget:
            return f"{active} active weights, but RigL keeps the layer's budget of {budget}"
        return super().counts_problem(fqn, counts)

    @override
    def layer_updates(
        self, fqns: Sequence[str], layers: Sequence[LayerInputs], drop_fraction: float, reducer: Reducer, carry: int
    ) -> list[tuple[Tensor, Tensor]]:
        """RigL keeps every layer's budget exactly, so there is no rounding to carry."""
        updates = rigl_update_layers(
            [(layer.weight, layer.mask, layer.dense_grad) for layer in layers],
            drop_fraction=drop_fraction,
            reducer=reducer,
        )
        return [(u.mask, u.grown) for u in updates]
