"""Transposable N:M masks (Hubara et al., NeurIPS 2021).

A mask is *transposable* ``n:m`` when every ``m x m`` tile of the ``(out x in)`` weight matrix keeps
exactly ``n`` entries in every row **and** every column, so both ``W`` (forward GEMM) and ``W^T``
(data-gradient GEMM) are ``n:m`` along their reduction dimension. Conv weights ``(K, C, *kernel)`` are
tiled at each fixed kernel position: ``m`` output channels x ``m`` input channels.

Solvers, all batched over tiles:

- ``"exact"``: the optimum of ``max sum(scores * mask)`` per tile. For ``m <= 4`` every valid tile pattern
  is scored at once with one matmul (90 patterns for 2:4); otherwise the per-tile linear program is solved
  with SciPy's HiGHS (optional dependency). The constraint matrix is totally unimodular, so the LP optimum
  is integral.
- ``"lp"``: always the LP (useful to cross-check the enumeration).
- ``"greedy"``: the 2-approximation: visit entries by descending score and keep one whenever its row and
  column still hold fewer than ``n``. May leave rows/columns under-filled (at most ``n`` each).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_srigl.sparsity.nm import check_nm

__all__ = [
    "TransposableMask",
    "check_transposable_nm",
    "is_transposable_nm",
    "tile_view",
    "transposable_nm_mask",
    "transposable_patterns",
    "untile_view",
]

Method = Literal["exact", "lp", "greedy"]

_MAX_ENUMERATED_M = 4
_LP_TILES_PER_SOLVE = 64


@dataclass(frozen=True)
class TransposableMask:
    """Result of [`transposable_nm_mask`][lightning_srigl.sparsity.transposable.transposable_nm_mask].

    Attributes:
        mask: bool mask shaped like the scores.
        underfilled_fraction: fraction of tiles with at least one row or column holding fewer than ``n``
            kept entries (always 0.0 for the exact solvers).
        underfilled_line_fraction: fraction of all tile rows and columns holding fewer than ``n``.
    """

    mask: Tensor
    underfilled_fraction: float
    underfilled_line_fraction: float


def check_transposable_nm(shape: Sequence[int], n: int, m: int) -> None:
    """Validate that a weight of ``shape`` can carry a transposable ``n:m`` mask.

    Raises:
        ValueError: if ``n:m`` is invalid or the output dimension (dim 0) or input dimension (dim 1) is
            not divisible by ``m``.
    """
    check_nm(shape, n, m)
    if shape[0] % m != 0:
        raise ValueError(
            f"Cannot apply transposable {n}:{m} sparsity to a weight of shape {tuple(shape)}: its output "
            f"dimension (dim 0, size {shape[0]}) is not divisible by m={m}. Use plain (non-transposable) "
            f"N:M for this layer or keep it dense."
        )


def tile_view(t: Tensor, m: int) -> Tensor:
    """View ``t`` as ``(out x in)`` tiles of ``m x m``.

    Args:
        t: ``(out, in)`` or ``(K, C, *kernel)``; dims 0 and 1 divisible by ``m``.
        m: tile side.

    Returns:
        ``(T, m, m)`` tensor; ``tiles[t, i, j]`` is output ``i`` and input ``j`` of tile ``t``. Tiles are
        ordered over ``(*kernel, out / m, in / m)``. Invert with [`untile_view`][lightning_srigl.sparsity.transposable.untile_view].
    """
    check_transposable_nm(t.shape, 1, m)
    out, inp = t.shape[0], t.shape[1]
    per_position = t.movedim((0, 1), (-2, -1)).reshape(-1, out // m, m, inp // m, m)
    return per_position.permute(0, 1, 3, 2, 4).reshape(-1, m, m)


def untile_view(tiles: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of [`tile_view`][lightning_srigl.sparsity.transposable.tile_view]: ``(T, m, m)`` tiles back to a tensor of ``shape``."""
    m = tiles.shape[-1]
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    per_position = tiles.reshape(-1, out // m, inp // m, m, m).permute(0, 1, 3, 2, 4)
    return per_position.reshape(*kernel, out, inp).movedim((-2, -1), (0, 1))


@lru_cache(maxsize=None)
def _patterns_cpu(m: int, n: int) -> Tensor:
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    row_table = torch.tensor(rows, dtype=torch.int64)  # (C(m, n), m)
    choices = torch.cartesian_prod(*[torch.arange(len(rows))] * m).reshape(-1, m)
    candidates = row_table[choices]  # (C(m, n)^m, m, m)
    valid = (candidates.sum(dim=1) == n).all(dim=-1)
    return candidates[valid].to(torch.bool)


def transposable_patterns(m: int, n: int) -> Tensor:
    """All ``m x m`` 0/1 patterns with exactly ``n`` ones per row and per column (``m <= 4``).

    Returns:
        Bool tensor ``(P, m, m)`` in lexicographic order of rows; ``P = 90`` for 2:4. Cached.
    """
    check_nm((m, m), n, m)
    if m > _MAX_ENUMERATED_M:
        raise ValueError(f"Pattern enumeration supports m <= {_MAX_ENUMERATED_M}, got m={m}; use the LP.")
    return _patterns_cpu(m, n).clone()


def _enumerate_solve(tiles: Tensor, n: int) -> Tensor:
    """Exact masks ``(T, m, m)`` by scoring every valid pattern: one ``(T, m^2) @ (m^2, P)`` matmul."""
    m = tiles.shape[-1]
    work_dtype = torch.promote_types(tiles.dtype, torch.float32)
    patterns = _patterns_cpu(m, n).to(tiles.device)
    totals = tiles.reshape(-1, m * m).to(work_dtype) @ patterns.reshape(-1, m * m).to(work_dtype).T
    return patterns[totals.argmax(dim=1)]


def _import_scipy_lp() -> tuple[Callable[..., Any], type]:
    """Return ``(scipy.optimize.linprog, scipy.sparse.coo_array)``, or explain how to install SciPy."""
    try:
        from scipy.optimize import linprog
        from scipy.sparse import coo_array
    except ImportError as err:
        raise ImportError(
            "Exact transposable N:M masks for m > 4 solve a linear program with SciPy, which is not "
            "installed. Install it with `pip install lightning-srigl[transposable]`, or use method='greedy'."
        ) from err
    return linprog, coo_array


def _lp_solve(tiles: Tensor, n: int) -> Tensor:
    """Exact masks ``(T, m, m)`` from the LP ``max <s, x>`` s.t. row/column sums ``n``, ``0 <= x <= 1``.

    Tiles are independent, so chunks of tiles are solved as one block-diagonal LP. The constraint matrix
    (a bipartite incidence matrix) is totally unimodular, so HiGHS' basic optimum is integral; it is
    rounded and checked.
    """
    linprog, coo_array = _import_scipy_lp()
    import numpy as np

    m = tiles.shape[-1]
    scores = tiles.detach().to("cpu", torch.float64).reshape(-1, m * m).numpy()
    solved = []
    for chunk in np.array_split(scores, max(1, -(-len(scores) // _LP_TILES_PER_SOLVE))):
        n_tiles = len(chunk)
        var = np.arange(n_tiles * m * m)
        tile, row, col = var // (m * m), (var // m) % m, var % m
        constraint_rows = np.concatenate([tile * 2 * m + row, tile * 2 * m + m + col])
        constraints = coo_array(
            (np.ones(2 * var.size), (constraint_rows, np.concatenate([var, var]))),
            shape=(n_tiles * 2 * m, var.size),
        ).tocsr()
        result = linprog(
            -chunk.reshape(-1),
            A_eq=constraints,
            b_eq=np.full(n_tiles * 2 * m, float(n)),
            bounds=(0.0, 1.0),
            method="highs",
        )
        if not result.success:
            raise RuntimeError(f"HiGHS failed on the transposable N:M LP: {result.message}")
        x = result.x.reshape(n_tiles, m, m)
        if np.abs(x - np.round(x)).max(initial=0.0) > 1e-6:
            raise RuntimeError("HiGHS returned a fractional vertex for a totally unimodular LP.")
        solved.append(np.round(x) > 0.5)
    mask = torch.from_numpy(np.concatenate(solved)).to(tiles.device)
    if not _line_counts_equal(mask, n):
        raise RuntimeError("The LP solution violates the transposable N:M constraints.")
    return mask


def _greedy_solve(tiles: Tensor, n: int) -> Tensor:
    """2-approximate masks ``(T, m, m)``: accept entries by descending score while row and column allow."""
    n_tiles, m, _ = tiles.shape
    order = torch.sort(tiles.reshape(n_tiles, m * m), dim=1, descending=True, stable=True).indices
    order = order.T.unsqueeze(-1).contiguous()  # (m*m, T, 1): k-th best position of every tile
    keep = torch.zeros(n_tiles, m * m, dtype=torch.bool, device=tiles.device)
    row_count = torch.zeros(n_tiles, m, dtype=torch.int64, device=tiles.device)
    col_count = torch.zeros_like(row_count)
    for position, row, col in zip(order, order // m, order % m):  # m*m steps over all tiles at once
        accept = (row_count.gather(1, row) < n) & (col_count.gather(1, col) < n)
        keep.scatter_(1, position, accept)
        row_count.scatter_add_(1, row, accept.long())
        col_count.scatter_add_(1, col, accept.long())
    return keep.reshape(n_tiles, m, m)


def _line_counts(tile_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Kept entries per tile row ``(T, m)`` and per tile column ``(T, m)``."""
    kept = tile_masks != 0
    return kept.sum(dim=2), kept.sum(dim=1)


def _line_counts_equal(tile_masks: Tensor, n: int) -> bool:
    rows, cols = _line_counts(tile_masks)
    return bool((rows == n).all() and (cols == n).all())


def transposable_nm_mask(scores: Tensor, n: int, m: int, method: Method = "exact") -> TransposableMask:
    """Transposable ``n:m`` mask maximising the kept score in every ``m x m`` (out x in) tile.

    Args:
        scores: ``(out, in)`` or ``(K, C, *kernel)`` importance scores, typically ``weight.abs()``;
            dims 0 and 1 divisible by ``m``.
        n: kept entries per tile row and column.
        m: tile side.
        method: ``"exact"`` (enumeration for ``m <= 4``, else LP), ``"lp"`` (always the LP; needs SciPy)
            or ``"greedy"`` (2-approximation, at most ``n`` per row/column).

    Returns:
        [`TransposableMask`][lightning_srigl.sparsity.transposable.TransposableMask] with a bool mask of ``scores.shape`` and the greedy's under-fill rates.
    """
    check_transposable_nm(scores.shape, n, m)
    tiles = tile_view(scores.detach(), m)
    if method == "greedy":
        tile_masks = _greedy_solve(tiles, n)
    elif method == "lp" or (method == "exact" and m > _MAX_ENUMERATED_M):
        tile_masks = _lp_solve(tiles, n)
    elif method == "exact":
        tile_masks = _enumerate_solve(tiles, n)
    else:
        raise ValueError(f"Unknown method {method!r}; use 'exact', 'lp' or 'greedy'.")
    rows, cols = _line_counts(tile_masks)
    short = torch.cat([rows, cols], dim=1) < n  # (T, 2m)
    return TransposableMask(
        mask=untile_view(tile_masks, scores.shape).contiguous(),
        underfilled_fraction=short.any(dim=1).float().mean().item(),
        underfilled_line_fraction=short.float().mean().item(),
    )


def is_transposable_nm(mask: Tensor, n: int, m: int, exact: bool = True) -> bool:
    """Whether every ``m x m`` tile of ``mask`` has ``n`` kept entries per row and column.

    Args:
        mask: ``(out, in)`` or ``(K, C, *kernel)`` mask (bool or 0/1 numbers).
        n: required kept entries per tile row and column.
        m: tile side.
        exact: if True, exactly ``n``; if False, at most ``n`` (what the greedy guarantees).

    Raises:
        ValueError: if ``mask.shape`` cannot be tiled (see [`check_transposable_nm`][lightning_srigl.sparsity.transposable.check_transposable_nm]).
    """
    check_transposable_nm(mask.shape, n, m)
    rows, cols = _line_counts(tile_view(mask, m))
    if exact:
        return bool((rows == n).all() and (cols == n).all())
    return bool((rows <= n).all() and (cols <= n).all())
