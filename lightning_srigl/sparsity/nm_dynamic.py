"""Dynamic N:M topology: a RigL-style drop-and-grow update that keeps every group exactly N:M.

An N:M mask is a constant fan-in mask (every output row keeps ``in * n / m`` inputs) whose kept
inputs are also spread evenly, ``n`` in every group of ``m`` consecutive inputs (see
[`lightning_srigl.sparsity.nm`][lightning_srigl.sparsity.nm] for the group layout). This module lets the SRigL schedule
explore
such masks: drop the smallest-magnitude active weights of the layer, then refill every group that
lost weights with the positions of that group that have the largest dense-gradient magnitude.
Neuron ablation does not apply: a group must keep exactly ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_srigl.sparsity.nm import check_nm, nm_group_view, nm_mask, nm_ungroup_view
from lightning_srigl.sparsity.topk import rowwise_topk_mask, topk_mask

__all__ = ["NMUpdate", "nm_drop_grow", "random_nm_mask"]


@dataclass(frozen=True)
class NMUpdate:
    """Result of ``nm_drop_grow``; every mask has the weight's shape.

    Attributes:
        mask: the new mask, exactly ``n`` per group.
        grown: positions active now that were inactive before (their weights are 0).
        regrown: every position chosen by the grow step, including dropped-and-regrown ones.
        n_prune: active weights dropped by magnitude before regrowth.
    """

    mask: Tensor
    grown: Tensor
    regrown: Tensor
    n_prune: int


def random_nm_mask(shape: tuple[int, ...] | torch.Size, n: int, m: int, generator: torch.Generator | None) -> Tensor:
    """Uniformly random N:M mask: ``n`` random positions of every group of ``m``.

    Args:
        shape: weight shape ``(out, in)`` or ``(K, C, *kernel)``.
        generator: CPU generator (one seed gives the same mask on every rank and machine).

    Returns:
        BoolTensor of ``shape`` with exactly ``n`` True entries per group.
    """
    check_nm(shape, n, m)
    scores = torch.rand(tuple(shape), generator=generator)
    return nm_mask(scores, n, m)


@torch.no_grad()
def nm_drop_grow(weight: Tensor, mask: Tensor, dense_grad: Tensor, *, n: int, m: int, drop_fraction: float) -> NMUpdate:
    """One N:M topology update: drop by ``|weight|`` over the layer, regrow by ``|dense_grad|`` per group.

    1. ``n_prune = floor(n_active * drop_fraction)`` active weights with the smallest magnitude are
       dropped (layer-wise, like RigL; ties go to the higher index so lower indices are kept).
    2. Every group that lost ``d`` weights grows back its ``d`` inactive-or-just-dropped positions
       with the largest ``|dense_grad|`` (ties to the lower index), so each group again keeps ``n``.

    Args:
        weight: ``(out, in)`` or ``(K, C, *kernel)`` masked weight (zeros where ``mask`` is False).
        mask: bool mask of the same shape with exactly ``n`` per group.
        dense_grad: gradient w.r.t. the dense weight, same shape.
        n, m: the N:M pattern.
        drop_fraction: fraction of active weights replaced, in ``[0, 1]``.

    Returns:
        An ``NMUpdate``. The caller zeroes ``weight`` outside ``update.mask``; grown weights
        are already 0, and dropped-and-regrown ones keep their value.

    Raises:
        ValueError: if the shapes differ, the mask is not exactly ``n:m`` or ``drop_fraction`` is
            outside ``[0, 1]``.
    """
    if not weight.shape == mask.shape == dense_grad.shape:
        raise ValueError(
            f"weight {tuple(weight.shape)}, mask {tuple(mask.shape)} and dense_grad "
            f"{tuple(dense_grad.shape)} must have the same shape"
        )
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    check_nm(weight.shape, n, m)
    groups_mask = nm_group_view(mask.bool(), m)
    if not bool((groups_mask.sum(dim=-1) == n).all()):
        raise ValueError(f"mask is not exactly {n}:{m}; start from random_nm_mask or nm_mask")
    n_active = int(groups_mask.sum())
    n_prune = int(n_active * drop_fraction)
    kept = topk_mask(nm_group_view(weight.abs(), m), n_active - n_prune, among=groups_mask)
    deficit = n - kept.sum(dim=-1)
    grow_scores = nm_group_view(dense_grad.abs(), m).masked_fill(kept, -torch.inf)
    regrown = rowwise_topk_mask(grow_scores, deficit)
    new_groups = kept | regrown
    new_mask = nm_ungroup_view(new_groups, weight.shape).contiguous()
    regrown_full = nm_ungroup_view(regrown, weight.shape).contiguous()
    return NMUpdate(mask=new_mask, grown=new_mask & ~mask.bool(), regrown=regrown_full, n_prune=n_prune)
