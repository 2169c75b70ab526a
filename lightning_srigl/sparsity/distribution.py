"""Layer-wise density allocation: uniform and Erdős–Rényi-Kernel (ERK), as the reference computes them.

Both allocators take the weight shapes in layer order and a *global* target sparsity, and return
one density (fraction of active weights) per layer. Layers listed in ``dense`` are pinned to
density 1 and the other layers pay for their extra weights. The reference's
``keep_first_layer_dense=True`` is ``dense={0}``.

Like the reference, the allocators work with ``dense_allocation = round(1 - sparsity, 10)`` (so
``sparsity=0.9`` means exactly the ``dense_allocation=0.1`` the reference was configured with)
and Python float64 arithmetic in layer order, which reproduces its densities to ~1e-16.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from lightning_srigl.sparsity.validation import check_sparsity

__all__ = ["erk_densities", "layer_budgets", "uniform_densities"]


def _dense_allocation(sparsity: float) -> float:
    return round(1.0 - check_sparsity(sparsity), 10)


def _check_layers(shapes: Sequence[Sequence[int]], dense: Collection[int]) -> list[int]:
    if len(shapes) == 0:
        raise ValueError("shapes is empty: pass the weight shape of every sparse layer, in layer order")
    numels = []
    for i, shape in enumerate(shapes):
        if len(shape) < 1 or any(int(d) <= 0 for d in shape):
            raise ValueError(f"layer {i} has shape {tuple(shape)}; every dimension must be positive")
        numels.append(math.prod(int(d) for d in shape))
    bad = sorted(i for i in dense if not 0 <= i < len(shapes))
    if bad:
        raise ValueError(f"dense layer indices {bad} are out of range for {len(shapes)} layers (0-based)")
    return numels


def uniform_densities(shapes: Sequence[Sequence[int]], sparsity: float, dense: Collection[int] = ()) -> list[float]:
    """Same density on every non-pinned layer, raised so that pinned dense layers are paid for.

    Sparse layers get sparsity ``1 - (N_total * d - N_dense) / N_sparse`` with ``d`` the dense
    allocation; if the pinned layers alone exceed the budget, sparse layers fall back to ``1 - d``
    (the reference's behaviour).

    Args:
        shapes: weight shape of each layer, in layer order.
        sparsity: global target sparsity in ``[0, 1)``.
        dense: indices of layers pinned to density 1.

    Returns:
        One density per layer, in ``(0, 1]``.
    """
    allocation = _dense_allocation(sparsity)
    numels = _check_layers(shapes, dense)
    n_total = sum(numels)
    n_dense = sum(numels[i] for i in set(dense))
    n_sparse = n_total - n_dense
    if n_sparse == 0:
        return [1.0] * len(shapes)
    layer_sparsity = 1 - (n_total * allocation - n_dense) / n_sparse
    if layer_sparsity > 1:
        layer_sparsity = 1 - allocation
    return [1.0 if i in dense else 1 - layer_sparsity for i in range(len(shapes))]


def _erk_raw_weight(shape: Sequence[int], power_scale: float) -> float:
    return float((sum(shape) / math.prod(shape)) ** power_scale)


def erk_densities(
    shapes: Sequence[Sequence[int]],
    sparsity: float,
    dense: Collection[int] = (),
    power_scale: float = 1.0,
) -> list[float]:
    """Erdős–Rényi-Kernel densities (kernel dims included), with the reference's re-solve loop.

    A layer's density is ``eps * (sum(shape) / prod(shape)) ** power_scale`` with ``eps`` solved so
    that the layers together keep ``(1 - sparsity)`` of all weights. While some layer would exceed
    density 1, the first layer with the largest raw weight is pinned dense and ``eps`` is
    re-solved; pinned layers' extra weights are paid for by the others.

    Args:
        shapes: weight shape of each layer, in layer order.
        sparsity: global target sparsity in ``[0, 1)``.
        dense: indices of layers pinned to density 1 from the start.
        power_scale: exponent on the raw ERK weight (1.0 = standard ERK).

    Returns:
        One density per layer, in ``(0, 1]``.
    """
    allocation = _dense_allocation(sparsity)
    numels = _check_layers(shapes, dense)
    raw = [_erk_raw_weight([int(d) for d in shape], power_scale) for shape in shapes]
    # The equation for eps. Layer i's share of the budget keeps numel_i - z_i weights, with
    # z_i = int(numel_i * (1 - d)) its share of zeros (d = dense allocation; truncated per layer, as the
    # reference does). A pinned layer keeps all numel_i, z_i more than its share; a sparse layer keeps
    # eps * raw_i * numel_i. The layers together must keep what the shares add up to:
    #     sum_sparse eps * raw_i * numel_i + sum_pinned numel_i = sum_all (numel_i - z_i)
    # so  eps = (sum_sparse (numel_i - z_i) - sum_pinned z_i) / sum_sparse raw_i * numel_i = rhs / divisor.
    # eps <= 0: the pinned layers' extra weights use up the whole budget. A layer with eps * raw_i > 1
    # would need more weights than it has: pin it (the largest raw_i first) and solve again.
    pinned = set(dense)
    while True:
        sparse_layers = [i for i in range(len(shapes)) if i not in pinned]
        if not sparse_layers:
            return [1.0] * len(shapes)
        rhs = 0
        divisor = 0.0
        for i, numel in enumerate(numels):
            n_zeros = int(numel * (1 - allocation))
            if i in pinned:
                rhs -= n_zeros
            else:
                rhs += numel - n_zeros
                divisor += raw[i] * numel
        eps = rhs / divisor
        if eps <= 0:
            raise ValueError(
                f"the dense layers {sorted(pinned)} alone hold more weights than a global sparsity of "
                f"{sparsity} allows; lower the sparsity or pin fewer layers dense"
            )
        max_raw = max(raw[i] for i in sparse_layers)
        if max_raw * eps <= 1:
            break
        pinned.add(next(i for i in sparse_layers if raw[i] == max_raw))
    # ``1 - sparsity`` rather than ``eps * raw``: the reference returns sparsities, and this keeps
    # our densities bit-identical to ``1 - its value``.
    return [1.0 if i in pinned else 1 - (1 - eps * raw[i]) for i in range(len(shapes))]


def layer_budgets(shapes: Sequence[Sequence[int]], densities: Sequence[float]) -> list[int]:
    """Exact integer number of active weights per layer: ``round(numel * density)``.

    This is the ``budget`` to pass to the mask functions. The reference instead floors a float
    (``int(numel * (1 - S))``), which can lose one weight to rounding noise (its quirk Q1).

    Returns:
        One budget per layer, each in ``[0, numel]`` and within 0.5 weight of ``numel * density``.
    """
    if len(shapes) != len(densities):
        raise ValueError(f"got {len(shapes)} shapes but {len(densities)} densities; pass one per layer")
    budgets = []
    for shape, density in zip(shapes, densities):
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density} for shape {tuple(shape)}")
        budgets.append(round(math.prod(int(d) for d in shape) * density))
    return budgets
