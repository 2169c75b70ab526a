"""Deterministic top-k selections that return boolean masks.

Every selection breaks ties by the **lower flat index** (what a stable descending sort would
do), so the same scores give the same mask on every machine, device and DDP rank. The
implementations avoid a full sort: one ``torch.topk`` finds the k-th largest value (the
threshold), everything strictly above it is taken, and the remaining places go to the
lowest-index entries equal to the threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_rows", "rowwise_topk_mask", "topk_mask"]


def as_rows(t: Tensor) -> Tensor:
    """View a weight-shaped tensor as ``(O, F)`` with ``F = prod(shape[1:])``.

    A *neuron* is an output row: ``Linear (out, in)`` -> ``(out, in)``,
    ``Conv2d (out, in, kh, kw)`` -> ``(out, in*kh*kw)`` in row-major order.
    """
    if t.dim() < 2:
        raise ValueError(
            f"expected a weight-shaped tensor with at least 2 dims (out, in, ...), got shape "
            f"{tuple(t.shape)}; biases and 1-D parameters cannot be made constant fan-in sparse"
        )
    return t.reshape(t.shape[0], -1)


def _check_scores(scores: Tensor) -> None:
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(
            "scores contain NaN, so a top-k selection is undefined; "
            "skip the update or replace non-finite gradients before scoring"
        )


def topk_mask(scores: Tensor, k: int, *, among: Tensor | None = None) -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``scores`` over all its elements.

    Args:
        scores: any shape, real dtype, no NaN.
        k: number of entries to select, ``0 <= k <= `` number of eligible entries.
        among: optional bool tensor shaped like ``scores``; only its True entries are eligible.
            Selecting among the few active weights of a sparse layer is much faster than
            scoring the whole layer.

    Returns:
        BoolTensor shaped like ``scores`` with exactly ``k`` True entries; ties at the
        threshold go to the lower flat (row-major) index.
    """
    if among is not None and among.shape != scores.shape:
        raise ValueError(
            f"among must have the shape of scores {tuple(scores.shape)}, got {tuple(among.shape)}"
        )
    flat = scores.reshape(-1)
    eligible = flat if among is None else flat[among.reshape(-1)]
    n = eligible.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] for {n} eligible scores, got k={k}")
    _check_scores(eligible)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == n:
        return torch.ones_like(scores, dtype=torch.bool) if among is None else among.clone()
    threshold = torch.topk(eligible, k, sorted=False).values.min()
    selected = flat >= threshold
    if among is not None:
        selected &= among.reshape(-1)
    if int(selected.count_nonzero()) > k:  # ties at the threshold: only the lowest-index ones fit
        ties = selected & (flat == threshold)
        n_from_ties = k - int(selected.count_nonzero() - ties.count_nonzero())
        selected &= ~ties | (ties.cumsum(0) <= n_from_ties)
    return selected.reshape(scores.shape)


def rowwise_topk_mask(scores: Tensor, k: Tensor | int) -> Tensor:
    """Per-row top-``k_i`` mask of a ``(O, F)`` score matrix.

    Args:
        scores: ``(O, F)`` real scores, no NaN.
        k: ``(O,)`` int64 counts (one per row, each in ``[0, F]``) or one int for all rows.

    Returns:
        BoolTensor ``(O, F)``; row ``i`` has exactly ``k_i`` True entries, ties at the row's
        threshold go to the lower column index.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (O, F), got shape {tuple(scores.shape)}")
    _check_scores(scores)
    rows, cols = scores.shape
    k_rows = torch.as_tensor(k, dtype=torch.long, device=scores.device).expand(rows)
    if k_rows.numel() and (k_rows.min() < 0 or k_rows.max() > cols):
        raise ValueError(f"every k_i must be in [0, {cols}], got min {k_rows.min()}, max {k_rows.max()}")
    k_max = int(k_rows.max()) if rows else 0
    if k_max == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # One extra value per row tells whether the k_i-th largest is tied with the next one.
    top_values = torch.topk(scores, min(k_max + 1, cols), dim=1, sorted=True).values
    index = (k_rows - 1).clamp(min=0).unsqueeze(1)
    threshold = top_values.gather(1, index)
    selected = (scores >= threshold) & (k_rows > 0).unsqueeze(1)
    next_index = k_rows.clamp(max=top_values.shape[1] - 1).unsqueeze(1)
    next_value = top_values.gather(1, next_index)
    tied_rows = (next_value == threshold).squeeze(1) & (k_rows > 0) & (k_rows < cols)
    if bool(tied_rows.any()):  # keep only the lowest-index ties of those rows
        ties = selected & (scores == threshold)
        n_from_ties = (k_rows - (selected.sum(dim=1) - ties.sum(dim=1))).unsqueeze(1)
        selected &= ~ties | (ties.cumsum(dim=1) <= n_from_ties)
    return selected
