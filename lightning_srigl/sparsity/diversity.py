"""Mask diversity (Hubara et al., NeurIPS 2021): how many masks a sparsity constraint admits.

For ``T`` weights at density ``n / m``:

- ``"unstructured"``: ``C(T, T n / m)``;
- ``"nm"``: ``C(m, n) ** (T / m)``;
- ``"transposable_nm"``: ``K(m, n) ** (T / m^2)``, ``K(m, n)`` = number of ``m x m`` 0/1 matrices with
  ``n`` ones in every row and column (``count_transposable_patterns``);
- ``"block"``: blocks of ``block_size`` weights kept or dropped together, ``C(T / b, (T / b) n / m)``.

Values are returned as ``log10`` (they overflow floats quickly): exact big integers where they are
small enough to build, ``lgamma`` for the binomials of whole tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache
from typing import Literal

from lightning_srigl.sparsity.nm import check_nm

__all__ = ["count_transposable_patterns", "mask_diversity_log10"]

Kind = Literal["unstructured", "nm", "transposable_nm", "block"]


def _distributions(total: int, limits: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """All ``(a_0, ..., a_{len-1})`` with ``0 <= a_i <= limits[i]`` and ``sum(a) == total``."""
    if not limits:
        if total == 0:
            yield ()
        return
    for first in range(min(total, limits[0]) + 1):
        for rest in _distributions(total - first, limits[1:]):
            yield (first, *rest)


@cache
def _count_completions(rows_left: int, columns_needing: tuple[int, ...]) -> int:
    """Ways to fill ``rows_left`` rows when ``columns_needing[k]`` columns still need ``k + 1`` ones.

    Each row puts ``n = len(columns_needing)`` ones into distinct columns; only how many columns need
    how many more ones matters, not which ones, which keeps the state space small.
    """
    n = len(columns_needing)
    if rows_left == 0:
        return int(not any(columns_needing))
    total = 0
    for taken in _distributions(n, columns_needing):
        ways = math.prod(math.comb(avail, k) for avail, k in zip(columns_needing, taken))
        after = [avail - k for avail, k in zip(columns_needing, taken)]
        for need in range(1, n):  # a column needing need+1 that got a one now needs need
            after[need - 1] += taken[need]
        total += ways * _count_completions(rows_left - 1, tuple(after))
    return total


def count_transposable_patterns(m: int, n: int) -> int:
    """Exact ``K(m, n)``: number of ``m x m`` 0/1 matrices with ``n`` ones per row and per column.

    Dynamic programming over rows, with the multiset of per-column remaining counts as state. Cached;
    milliseconds for ``m <= 8``, seconds for ``m = 12``, minutes for ``m = 16, n = 8``.
    ``K(4, 2) = 90``, ``K(8, 4) = 116_963_796_250``, ``K(m, 1) = m!``.
    """
    check_nm((m, m), n, m)
    columns_needing = tuple(m if k == n - 1 else 0 for k in range(n))
    return _count_completions(m, columns_needing)


def _log10_comb(total: int, chosen: int) -> float:
    """``log10(C(total, chosen))`` without building the binomial."""
    log_comb = math.lgamma(total + 1) - math.lgamma(chosen + 1) - math.lgamma(total - chosen + 1)
    return log_comb / math.log(10)


def _units(numel: int, unit: int, what: str) -> int:
    if numel <= 0 or numel % unit != 0:
        raise ValueError(f"numel={numel} must be a positive multiple of {unit} for {what}.")
    return numel // unit


def _kept(units: int, n: int, m: int, what: str) -> int:
    if units * n % m != 0:
        raise ValueError(f"{what}: {units} units at density {n}/{m} is not an integer count; change numel.")
    return units * n // m


def mask_diversity_log10(kind: Kind, numel: int, n: int, m: int, *, block_size: int | None = None) -> float:
    """``log10`` of the number of masks of ``numel`` weights at density ``n / m`` under a constraint.

    Args:
        kind: ``"unstructured"``, ``"nm"``, ``"transposable_nm"`` or ``"block"``.
        numel: number of weights ``T``; a multiple of ``m`` (nm), ``m^2`` (transposable_nm) or
            ``block_size`` (block), and such that the kept count is an integer.
        n: kept weights per ``m`` (the density is ``n / m`` for every kind).
        m: group size (tile side for transposable_nm).
        block_size: weights per block; required for ``kind="block"`` and only allowed there.

    Returns:
        ``log10`` of the mask count, e.g. for 64 weights at 2:4: unstructured 18.26, nm 12.45,
        transposable_nm 7.82, 4-element blocks 4.11.

    Raises:
        ValueError: on an invalid ``n:m``, an unknown kind, or a ``numel`` the constraint cannot tile.
    """
    check_nm((m, m), n, m)
    if (block_size is not None) != (kind == "block"):
        raise ValueError("Pass block_size exactly when kind='block'.")
    if kind == "unstructured":
        return _log10_comb(numel, _kept(_units(numel, 1, kind), n, m, kind))
    if kind == "nm":
        return _units(numel, m, kind) * math.log10(math.comb(m, n))
    if kind == "transposable_nm":
        return _units(numel, m * m, kind) * math.log10(count_transposable_patterns(m, n))
    if kind == "block":
        assert block_size is not None  # checked above: kind == "block" comes with a block_size
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        blocks = _units(numel, block_size, kind)
        return _log10_comb(blocks, _kept(blocks, n, m, kind))
    raise ValueError(f"Unknown kind {kind!r}; use 'unstructured', 'nm', 'transposable_nm' or 'block'.")
