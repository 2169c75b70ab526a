"""N:M fine-grained structured sparsity along the input (reduction) dimension.

An N:M mask keeps exactly ``n`` of every ``m`` consecutive weights of a group. Groups run along the
dimension a GEMM reduces over, in the layout NVIDIA's sparse tensor cores, apex ASP and the SR-STE
reference code (``Sparse_NHWC``) use:

- Linear weight ``(out, in)``: ``m`` consecutive input features of one output row.
- Conv weight ``(K, C, *kernel)`` (Conv1d/2d/3d): ``m`` consecutive **input channels** at a fixed
  output channel ``k`` and kernel position, i.e. the weight viewed as ``(K, *kernel, C)`` ("NHWC").

Everything here is pure tensor code: deterministic, device-agnostic, no Lightning and no modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_nm",
    "is_nm",
    "nm_fan_in",
    "nm_group_view",
    "nm_mask",
    "nm_ungroup_view",
    "sr_ste_refine_term",
]


def check_nm(shape: Sequence[int], n: int, m: int) -> None:
    """Validate that a weight of ``shape`` can carry an ``n:m`` mask along its input dimension.

    Args:
        shape: weight shape, ``(out, in)`` for Linear or ``(K, C, *kernel)`` for Conv.
        n: weights kept per group, ``1 <= n < m``.
        m: group size, ``m >= 2``.

    Raises:
        ValueError: if the pattern is not a sparse N:M pattern, the weight is not at least 2-D, or the
            input dimension (``in`` / ``C``) is not divisible by ``m``.
    """
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise ValueError(f"N:M needs integer n and m, got n={n!r}, m={m!r}.")
    if m < 2 or not 1 <= n < m:
        raise ValueError(f"Invalid N:M pattern {n}:{m}: need 1 <= n < m (keep n of every m weights), e.g. 2:4 or 4:8.")
    if len(shape) < 2:
        raise ValueError(
            f"N:M sparsity needs a weight of at least 2 dims ((out, in) or (K, C, *kernel)); got shape "
            f"{tuple(shape)}. Exclude this parameter from the N:M layer selection."
        )
    if shape[1] % m != 0:
        raise ValueError(
            f"Cannot apply {n}:{m} sparsity to a weight of shape {tuple(shape)}: its input dimension "
            f"(dim 1, size {shape[1]}) is not divisible by m={m}. Keep this layer dense (e.g. a stem "
            f"conv with 3 input channels) or pick an m that divides {shape[1]}."
        )


def nm_group_view(t: Tensor, m: int) -> Tensor:
    """View ``t`` as groups of ``m`` consecutive input-dimension entries.

    Args:
        t: ``(out, in)`` or ``(K, C, *kernel)`` tensor; dim 1 must be divisible by ``m``.
        m: group size.

    Returns:
        ``(G, m)`` tensor with ``G = numel / m``. Linear groups are ordered row-major over
        ``(out, in / m)``; conv groups over ``(K, *kernel, C / m)``. Invert with
        [`nm_ungroup_view`][lightning_srigl.sparsity.nm.nm_ungroup_view].
    """
    check_nm(t.shape, 1, m)
    return t.movedim(1, -1).reshape(-1, m)


def nm_ungroup_view(groups: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of [`nm_group_view`][lightning_srigl.sparsity.nm.nm_group_view].

    Args:
        groups: ``(G, m)`` tensor produced by ``nm_group_view`` (or computed from one).
        shape: the original tensor shape, ``(out, in)`` or ``(K, C, *kernel)``.

    Returns:
        Tensor of ``shape`` holding the group entries back at their original positions.
    """
    channels_last = (shape[0], *shape[2:], shape[1])
    return groups.reshape(channels_last).movedim(-1, 1)


_PAIRWISE_MAX_M = 8  # above this, m * (m - 1) / 2 comparisons cost more than a sort


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest-scoring entries of every group of ``m`` along the input dimension.

    Ties are broken deterministically: among equal scores the lower input index wins, so every
    process computes the same mask from the same scores. The result is the first ``n`` of a stable
    descending sort of each group (NaN counts as the largest score, as in ``torch.sort``).

    Args:
        scores: ``(out, in)`` or ``(K, C, *kernel)`` importance scores, typically ``weight.abs()``.
        n: entries kept per group.
        m: group size.

    Returns:
        Bool mask of ``scores.shape`` with exactly ``n`` True entries per group.
    """
    check_nm(scores.shape, n, m)
    groups = nm_group_view(scores.detach(), m)
    if m <= _PAIRWISE_MAX_M and not bool(torch.isnan(groups.sum())):
        keep = _keep_by_pairwise_rank(groups, n)
    else:
        order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
        keep.scatter_(-1, order[:, :n], True)
    return nm_ungroup_view(keep, scores.shape).contiguous()


def _keep_by_pairwise_rank(groups: Tensor, n: int) -> Tensor:
    """``(G, m)`` bool: entry ``i`` of a group is kept when fewer than ``n`` entries outrank it.

    Entry ``j`` outranks ``i`` when ``s_j > s_i``, or ``s_j == s_i`` and ``j < i``: the position of
    ``i`` in a stable descending sort. Counted over the ``m * (m - 1) / 2`` column pairs, each one
    comparison of two ``(G,)`` columns (about 7x faster than sorting the groups for 2:4 on the CPU).
    ``groups`` must hold no NaN (comparisons with NaN are all False).
    """
    size, m = groups.shape
    rank = torch.arange(m, dtype=torch.uint8, device=groups.device).unsqueeze(1).expand(m, size).contiguous()
    for i in range(m):
        for j in range(i + 1, m):
            j_beats_i = (groups[:, j] > groups[:, i]).view(torch.uint8)
            rank[i] += j_beats_i  # rank[j] started at j: every earlier entry outranks it by default
            rank[j] -= j_beats_i
    keep = torch.empty(groups.shape, dtype=torch.bool, device=groups.device)
    return torch.lt(rank.t(), n, out=keep)


def is_nm(mask: Tensor, n: int, m: int) -> bool:
    """Whether ``mask`` has exactly ``n`` nonzeros in every group of ``m`` along the input dimension.

    Args:
        mask: ``(out, in)`` or ``(K, C, *kernel)`` mask (bool or 0/1 numbers).
        n: required nonzeros per group.
        m: group size.

    Raises:
        ValueError: if ``mask.shape`` cannot carry an ``n:m`` pattern (see
            [`check_nm`][lightning_srigl.sparsity.nm.check_nm]).
    """
    check_nm(mask.shape, n, m)
    counts = nm_group_view(mask != 0, m).sum(dim=-1)
    return bool((counts == n).all())


def nm_fan_in(shape: Sequence[int], n: int, m: int) -> int:
    """Constant fan-in (kept weights per output unit) of an ``n:m`` layer.

    Args:
        shape: ``(out, in)`` -> ``in * n / m``; ``(K, C, *kernel)`` -> ``C * prod(kernel) * n / m``.
        n: kept weights per group.
        m: group size.
    """
    check_nm(shape, n, m)
    return math.prod(shape[1:]) * n // m


def sr_ste_refine_term(weight: Tensor, mask: Tensor, lambda_w: float) -> Tensor:
    """SR-STE's sparse-refined gradient term ``lambda_w * (1 - mask) * weight``.

    Added once per optimizer step to the dense weight's gradient, it decays only the currently
    pruned weights towards zero (Zhou et al., ICLR 2021); ``lambda_w = 0`` is the plain STE.

    Args:
        weight: dense weight, any shape.
        mask: bool mask of the same shape (True = kept).
        lambda_w: decay strength (the paper's default is 2e-4).

    Returns:
        Tensor shaped and typed like ``weight``; zero at kept positions.
    """
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal weight shape {tuple(weight.shape)}.")
    return weight.detach().masked_fill(mask.bool(), 0.0).mul_(lambda_w)
