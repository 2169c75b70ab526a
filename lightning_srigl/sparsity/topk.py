"""Deterministic top-k selections that return boolean masks.

Every selection breaks ties by the **lower flat index** (what a stable descending sort would
do), so the same scores give the same mask on every machine, device and DDP rank. The
implementations avoid a full sort: the k-th largest value is found (the threshold), everything
strictly above it is taken, and the remaining places go to the lowest-index entries equal to it.

Memory stays a small multiple of the scores' size, because a topology update of a large layer must
not need many copies of it: on CPU, ``torch.topk`` and ``torch.sort`` over ``n`` values peak at about
5x their input and ``torch.kthvalue`` at 3x. So `kth_largest` brackets the answer from a strided
sample and selects exactly inside the (small) bracket, row-wise selections run over blocks of
about `BLOCK_ELEMENTS` scores, and tie-breaking counts block by block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_srigl.sparsity.validation import all_finite

__all__ = ["BLOCK_ELEMENTS", "as_rows", "kth_largest", "row_blocks", "row_counts", "rowwise_topk_mask", "topk_mask"]

BLOCK_ELEMENTS = 1 << 20  # scores per block of a row-wise selection or a tie count
# Entries of kth_largest's strided sample. Its two selections cost ~2 * SAMPLE_SIZE and the bracket
# they leave holds ~8 * n / sqrt(SAMPLE_SIZE) entries: 2^16 balances the two for layers of a few million.
SAMPLE_SIZE = 1 << 16


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
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))  # explicit: a shard may hold no rows


def row_blocks(rows: int, cols: int) -> range:
    """Start rows of blocks of about `BLOCK_ELEMENTS` entries of a ``(rows, cols)`` matrix."""
    return range(0, rows, max(1, BLOCK_ELEMENTS // max(cols, 1)))


def row_counts(mask: Tensor) -> Tensor:
    """``(O,)`` int64 number of True entries in each row of an ``(O, F)`` bool mask.

    Counted block by block: ``mask.sum(dim=1)`` would first copy the whole mask as int64 (8x its size).
    ``F`` must be below 2^31.
    """
    rows, cols = mask.shape
    counts = torch.empty(rows, dtype=torch.long, device=mask.device)
    as_bytes = mask.view(torch.uint8)  # a uint8 sum into int32 is one vectorised pass; a bool sum is not
    blocks = row_blocks(rows, cols)
    for start in blocks:
        counts[start : start + blocks.step] = as_bytes[start : start + blocks.step].sum(dim=1, dtype=torch.int32)
    return counts


def _check_scores(scores: Tensor, among: Tensor | None = None) -> None:
    """Raise on NaN scores (only the eligible ones, when ``among`` is given)."""
    if not scores.is_floating_point() or not bool(torch.isnan(scores.sum())):
        return  # without NaN the sum is a number or +-inf (NaN from inf - inf: checked entry by entry below)
    nan = torch.isnan(scores)
    if among is not None:
        nan &= among
    if bool(nan.any()):
        raise ValueError(
            "scores contain NaN, so a top-k selection is undefined; "
            "skip the update or replace non-finite gradients before scoring"
        )


def kth_largest(values: Tensor, k: int, among: Tensor | None = None) -> Tensor:
    """The ``k``-th largest entry of ``values`` (no NaN), as a 0-d tensor; only ``among``'s entries count.

    Exact and deterministic. Small inputs go straight to ``torch.kthvalue``; large ones first bracket
    the answer between two order statistics of a strided sample (about 2^18 values), count the entries
    above the bracket, and select inside it; when the bracket misses (or holds too many entries) the
    eligible entries are selected whole instead. Besides its input it needs two bool masks plus the
    bracket, instead of the 3-5 copies of a full ``kthvalue``/``topk``.

    Args:
        values: any shape.
        k: ``1 <= k <=`` number of eligible entries.
        among: optional bool tensor shaped like ``values``; only its True entries are eligible.
    """
    flat = values.reshape(-1)
    eligible = None if among is None else among.reshape(-1)
    n = flat.numel() if eligible is None else int(eligible.count_nonzero())
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return _kth_largest(flat, k, eligible, n)


def _kth_largest(flat: Tensor, k: int, eligible: Tensor | None, n: int) -> Tensor:
    """`kth_largest` of 1-D ``flat`` with its ``n`` eligible entries already counted."""
    if n > BLOCK_ELEMENTS:
        bound = _kth_largest_in_bracket(flat, eligible, n, k)
        if bound is not None:
            return bound
    chosen = flat if eligible is None else flat[eligible]
    return torch.kthvalue(chosen, n - k + 1).values


def _kth_largest_in_bracket(flat: Tensor, eligible: Tensor | None, n: int, k: int) -> Tensor | None:
    """`kth_largest` through a sampled bracket, or ``None`` when the bracket does not isolate it."""
    stride = max(1, flat.numel() // SAMPLE_SIZE)
    sample = flat[::stride] if eligible is None else flat[::stride][eligible[::stride]]
    m = sample.numel()
    if m == 0:
        return None
    margin = 4 * math.isqrt(m) + 2  # sample ranks this far around k's share hold the answer w.h.p.
    rank = k * m / n
    hi = torch.kthvalue(sample, m - max(1, min(m, int(rank) - margin)) + 1).values  # larger bound
    lo = torch.kthvalue(sample, m - max(1, min(m, math.ceil(rank) + margin)) + 1).values  # smaller bound
    inside = flat > hi
    if eligible is not None:
        inside &= eligible
    need = k - int(inside.count_nonzero())
    torch.ge(flat, lo, out=inside)
    inside &= flat <= hi
    if eligible is not None:
        inside &= eligible
    if not 1 <= need <= int(inside.count_nonzero()):
        return None
    if bool(lo == hi):
        return hi
    bracket = flat[inside]
    if bracket.numel() > max(BLOCK_ELEMENTS, n // 8):
        return None
    return torch.kthvalue(bracket, bracket.numel() - need + 1).values


def _drop_last_ties(selected: Tensor, ties: Tensor, surplus: int) -> None:
    """In place on 1-D bool tensors: unselect the last ``surplus`` True entries of ``ties``, block by block."""
    for end in range(ties.numel(), 0, -BLOCK_ELEMENTS):
        if surplus == 0:
            return
        start = max(0, end - BLOCK_ELEMENTS)
        block = ties[start:end]
        count = int(block.count_nonzero())
        if count <= surplus:
            selected[start:end] &= ~block
            surplus -= count
        else:
            last = block & (block.flip(0).cumsum(0).flip(0) <= surplus)
            selected[start:end] &= ~last
            surplus = 0


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
        raise ValueError(f"among must have the shape of scores {tuple(scores.shape)}, got {tuple(among.shape)}")
    flat = scores.reshape(-1)
    n = flat.numel() if among is None else int(among.count_nonzero())
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] for {n} eligible scores, got k={k}")
    _check_scores(scores, among)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == n:
        return torch.ones_like(scores, dtype=torch.bool) if among is None else among.clone()
    threshold = _kth_largest(flat, k, None if among is None else among.reshape(-1), n)
    selected = flat >= threshold
    if among is not None:
        selected &= among.reshape(-1)
    surplus = int(selected.count_nonzero()) - k
    if surplus > 0:  # ties at the threshold: only the lowest-index ones fit
        _drop_last_ties(selected, selected & (flat == threshold), surplus)
    return selected.reshape(scores.shape)


def rowwise_topk_mask(
    scores: Tensor, k: Tensor | int, *, exclude: Tensor | None = None, keep: Tensor | None = None
) -> Tensor:
    """Per-row top-``k_i`` mask of a ``(O, F)`` score matrix.

    Args:
        scores: ``(O, F)`` real scores, no NaN (and all finite when ``keep`` is given).
        k: ``(O,)`` int64 counts (one per row, each in ``[0, F]``) or one int for all rows.
        exclude: optional ``(O, F)`` bool; those positions score ``-1`` instead (below any
            non-negative score), as ``torch.where(exclude, -1.0, scores)`` would, without the copy.
        keep: optional ``(O, F)`` bool, at most ``k_i`` in row ``i``: those positions are selected
            whatever they score and count toward ``k_i``, so each row gets its top
            ``k_i - keep_i`` other positions. With ``k_i`` in ``{0, K}`` (a constant fan-in grown back
            to ``K``) this is the faster selection, one unsorted ``topk`` per block.

    Returns:
        BoolTensor ``(O, F)``; row ``i`` has exactly ``k_i`` True entries, ties at the row's
        threshold go to the lower column index. Rows are processed in blocks of about
        `BLOCK_ELEMENTS` scores, so the temporaries stay small.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (O, F), got shape {tuple(scores.shape)}")
    for name, extra in (("exclude", exclude), ("keep", keep)):
        if extra is not None and extra.shape != scores.shape:
            raise ValueError(f"{name} must have the shape of scores {tuple(scores.shape)}, got {tuple(extra.shape)}")
    _check_scores(scores)
    rows, cols = scores.shape
    k_rows = torch.as_tensor(k, dtype=torch.long, device=scores.device).expand(rows)
    if k_rows.numel() and (k_rows.min() < 0 or k_rows.max() > cols):
        raise ValueError(f"every k_i must be in [0, {cols}], got min {k_rows.min()}, max {k_rows.max()}")
    if keep is not None:
        if not all_finite(scores):
            raise ValueError("rowwise_topk_mask(keep=...) needs finite scores: kept positions score +inf")
        if bool((row_counts(keep) > k_rows).any()):
            raise ValueError("keep holds more than k_i positions in some row; it can hold at most k_i")
    selected = torch.zeros_like(scores, dtype=torch.bool)
    blocks = row_blocks(rows, cols)
    for start in blocks:
        rows_here = slice(start, start + blocks.step)
        block = scores[rows_here]
        if exclude is not None:
            block = block.masked_fill(exclude[rows_here], -1.0)
        if keep is not None:
            block = block.masked_fill(keep[rows_here], math.inf)
        selected[rows_here] = _rowwise_topk_block(block, k_rows[rows_here])
    return selected


def _rowwise_topk_block(scores: Tensor, k_rows: Tensor) -> Tensor:
    """`rowwise_topk_mask` of one block of rows: ``scores (R, F)``, ``k_rows (R,)``.

    The threshold of row ``i`` is its ``k_i``-th largest score; every score above it is selected and
    the lowest-index ones equal to it fill the row up to ``k_i``. When every non-zero ``k_i`` is the
    same ``K``, the threshold is the smallest of an unsorted ``topk(K)``; otherwise it is read from a
    sorted ``topk(max k_i)``.
    """
    k_max = int(k_rows.max()) if k_rows.numel() else 0
    if k_max == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    active = k_rows > 0
    if bool((k_rows[active] == k_max).all()):
        threshold = torch.topk(scores, k_max, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    else:
        top_values = torch.topk(scores, k_max, dim=1, sorted=True).values
        threshold = top_values.gather(1, (k_rows - 1).clamp(min=0).unsqueeze(1))
    selected = scores >= threshold
    selected &= active.unsqueeze(1)
    tied_rows = torch.nonzero(row_counts(selected) > k_rows).flatten()
    if tied_rows.numel():  # more scores equal the threshold than fit: keep the lowest-index ones
        tied_scores, tied = scores[tied_rows], selected[tied_rows]
        ties = tied & (tied_scores == threshold[tied_rows])
        from_ties = (k_rows[tied_rows] - row_counts(tied & ~ties)).unsqueeze(1)
        tied &= ~ties | (ties.cumsum(dim=1) <= from_ties)
        selected[tied_rows] = tied
    return selected
