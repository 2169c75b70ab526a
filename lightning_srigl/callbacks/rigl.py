"""``RigLCallback``: unstructured RigL (Evci et al., 2020), the baseline SRigL is compared with."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from lightning_srigl.callbacks.base import DynamicSparsityCallback
from lightning_srigl.sparsity import random_unstructured_mask, rigl_update


class RigLCallback(DynamicSparsityCallback):
    """Train with RigL: drop the smallest weights of a layer, grow where the dense gradient is largest.

    Same schedule, budgets, logging and resumable state as
    [`SRigLCallback`][lightning_srigl.callbacks.SRigLCallback], without the constant fan-in constraint and
    without neuron ablation. See that class for the arguments.
    """

    metric_prefix = "rigl"

    @override
    def initial_mask(self, fqn: str, shape: torch.Size, target: int, generator: torch.Generator) -> Tensor:
        return random_unstructured_mask(shape, target, generator)

    @override
    def mask_problem(self, fqn: str, mask: Tensor) -> str | None:
        """RigL keeps each layer's budget exactly."""
        active = int(mask.count_nonzero())
        if active != self.budgets[fqn]:
            return f"{active} active weights, but RigL keeps the layer's budget of {self.budgets[fqn]}"
        return super().mask_problem(fqn, mask)

    @override
    def layer_update(
        self, fqn: str, weight: Tensor, mask: Tensor, dense_grad: Tensor, target: int, drop_fraction: float
    ) -> tuple[Tensor, Tensor]:
        update = rigl_update(weight, mask, dense_grad, drop_fraction=drop_fraction)
        return update.mask, update.grown
