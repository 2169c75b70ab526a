"""Unstructured RigL (Evci et al., 2020): the random initial mask and the drop/grow update.

This is the baseline SRigL is compared with; it follows the reference ``RigLScheduler`` update
and reproduces its golden vectors. Tensors are weight-shaped; selections are layer-wise and
break ties by the lower flat index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_srigl.sparsity.reducer import LocalReducer, Reducer, Selection
from lightning_srigl.sparsity.topk import topk_mask
from lightning_srigl.sparsity.validation import check_drop_fraction, check_update_inputs

__all__ = ["RigLUpdate", "random_unstructured_mask", "rigl_update", "rigl_update_layers"]


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
    (update,) = rigl_update_layers([(weight, mask, dense_grad)], drop_fraction=drop_fraction)
    return update


def rigl_update_layers(
    layers: Sequence[tuple[Tensor, Tensor, Tensor]], *, drop_fraction: float, reducer: Reducer | None = None
) -> list[RigLUpdate]:
    """[`rigl_update`][lightning_srigl.sparsity.rigl.rigl_update] of several layers at once, each whole or as
    this process's shard of rows (see [`lightning_srigl.sparsity.reducer`][lightning_srigl.sparsity.reducer]): at most
    11 communication rounds
    per update with a ``ShardReducer``, whatever the number of layers.

    Args:
        layers: per layer ``(weight, mask, dense_grad)``, each ``(O, *rest)`` (``O`` = this part's rows).
        drop_fraction: fraction of active weights to replace, in ``[0, 1]``.
        reducer: the layer-wide steps; ``None``: [`LocalReducer`][lightning_srigl.sparsity.reducer.LocalReducer].

    Returns:
        One [`RigLUpdate`][lightning_srigl.sparsity.rigl.RigLUpdate] per layer, masks shaped like its ``mask``.
    """
    reducer = reducer if reducer is not None else LocalReducer()
    drop_fraction = check_drop_fraction(drop_fraction)
    for weight, mask, dense_grad in layers:
        check_update_inputs(weight, mask, dense_grad)
    n_ones = reducer.sum([int(mask.count_nonzero()) for _, mask, _ in layers])
    n_prune = [int(n * drop_fraction) for n in n_ones]
    n_keep = [n - p for n, p in zip(n_ones, n_prune)]
    kept = reducer.topk_masks([Selection(w.abs(), k, m) for (w, m, _), k in zip(layers, n_keep)])
    regrown = reducer.topk_masks(
        [Selection(g.abs().masked_fill_(keep, -1.0), p) for (_, _, g), keep, p in zip(layers, kept, n_prune)]
    )
    return [
        RigLUpdate(mask=keep | grow, grown=grow & ~mask, regrown=grow, n_prune=p, n_keep=k)
        for (_, mask, _), keep, grow, p, k in zip(layers, kept, regrown, n_prune, n_keep)
    ]
