"""Unstructured RigL (Evci et al., 2020): the random initial mask and the drop/grow update.

This is the baseline SRigL is compared with; it follows the reference ``RigLScheduler`` update
and reproduces its golden vectors. Tensors are weight-shaped; selections are layer-wise and
break ties by the lower flat index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_srigl.sparsity.topk import topk_mask
from lightning_srigl.sparsity.validation import check_drop_fraction, check_update_inputs

__all__ = ["RigLUpdate", "random_unstructured_mask", "rigl_update"]


def random_unstructured_mask(
    shape: tuple[int, ...] | torch.Size, budget: int, generator: torch.Generator | None = None
) -> Tensor:
    """Random mask with exactly ``budget`` active positions, uniformly over the whole layer.

    Args:
        shape: weight shape.
        budget: number of active weights, in ``[0, numel]``.
        generator: source of randomness (same state -> same mask); ``None`` uses the global RNG.
            The mask is created on the generator's device (CPU when ``None``).

    Returns:
        BoolTensor of ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    numel = math.prod(shape)
    if not 0 <= budget <= numel:
        raise ValueError(f"budget must be in [0, {numel}] active weights for shape {shape}, got {budget}")
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(numel, generator=generator, device=device)
    return topk_mask(noise, budget).reshape(shape)


@dataclass(frozen=True)
class RigLUpdate:
    """Result of one RigL topology update of a layer.

    Attributes:
        mask: new mask, weight-shaped bool (same number of active weights as before).
        grown: positions inactive before the update and active after it (their weight is 0).
        regrown: the whole grow set, including dropped-and-regrown positions.
        n_prune, n_keep: drop/keep counts.
    """

    mask: Tensor
    grown: Tensor
    regrown: Tensor
    n_prune: int
    n_keep: int


def rigl_update(weight: Tensor, mask: Tensor, dense_grad: Tensor, *, drop_fraction: float) -> RigLUpdate:
    """One RigL update: keep the top-``n_keep`` ``|w|``, grow the top-``n_prune`` ``|grad|`` elsewhere.

    ``n_prune = int(n_active * drop_fraction)``; grown positions are chosen among all positions not
    kept, so a just-dropped weight can be regrown (and then keeps its value). When fewer than
    ``n_keep`` weights are non-zero (freshly grown weights are exactly 0), the reference fills the
    kept set by arbitrary tie-breaking among all zero-valued positions; we prefer active ones.

    Args:
        weight: ``(O, *rest)`` weights, zero where ``mask`` is False.
        mask: ``(O, *rest)`` bool, True = active.
        dense_grad: ``(O, *rest)`` gradient w.r.t. the dense weight (finite).
        drop_fraction: fraction of active weights to replace, in ``[0, 1]``.

    Returns:
        [`RigLUpdate`][lightning_srigl.sparsity.rigl.RigLUpdate]; the caller applies ``weight.mul_(update.mask)``.
    """
    check_update_inputs(weight, mask, dense_grad)
    drop_fraction = check_drop_fraction(drop_fraction)
    n_ones = int(mask.count_nonzero())
    n_prune = int(n_ones * drop_fraction)
    n_keep = n_ones - n_prune
    kept = topk_mask(weight.abs(), n_keep, among=mask)
    regrown = topk_mask(dense_grad.abs().masked_fill_(kept, -1.0), n_prune)
    return RigLUpdate(
        mask=kept | regrown,
        grown=regrown & ~mask,
        regrown=regrown,
        n_prune=n_prune,
        n_keep=n_keep,
    )
