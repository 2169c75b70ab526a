"""Constant fan-in sparsity: the random initial mask, neuron ablation and the SRigL update.

Every tensor argument is weight-shaped ``(O, *rest)``; internally it is viewed as ``(O, F)`` with
``F = prod(rest)`` (a conv filter's flattened receptive field). A *neuron* is a row. After an
update every surviving row has exactly ``k`` active weights and every ablated row none.

The update follows the reference implementation (``calgaryml/condensed-sparsity``) step by step
and reproduces its golden vectors, with these deliberate, documented deviations:

* **trim** (``trim="magnitude"``): a row holding more than ``k`` kept weights is cut to its ``k``
  largest ``|w|``; the reference cuts arbitrarily (``trim="reference"`` keeps the ``k``
  lowest-index ones, a deterministic stand-in for its boolean sort).
* **no zero-valued "kept" weights**: when ablation leaves fewer non-zero weights in surviving rows
  than ``n_keep``, the reference fills the kept set with arbitrary zero-valued positions (random
  growth, rows may exceed ``k``). We keep only the real non-zero weights and let gradient-based
  growth fill each row to ``k``.
* **protected layers**: ``ablation=False`` disables ablation for a layer; the callback uses it for
  the output layer by default (the reference means to but does not, its quirk Q2).
* **exact budgets**: ``budget`` is an integer chosen by the caller; the callback passes
  ``round(numel * density)`` where the reference floors a float (quirk Q1).
* **the budget is honoured model-wide** (``target``): the reference floors the fan-in,
  ``k = budget // O`` (after ablation ``budget // survivors``), which at 99 % sparsity keeps up to a
  quarter fewer weights than asked. With a ``target`` the fan-in is the nearest integer instead
  ([`nearest_fan_in`][lightning_srigl.sparsity.constant_fan_in.nearest_fan_in]), and the callback
  carries each layer's rounding into the next layer's target, so the model-wide count stays within
  half a neuron's worth of weights of the last layer (docs/deviations.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_srigl.sparsity.topk import as_rows, row_blocks, row_counts, rowwise_topk_mask, topk_mask
from lightning_srigl.sparsity.validation import check_drop_fraction, check_update_inputs

__all__ = [
    "NeuronAblation",
    "SRigLUpdate",
    "check_fan_in_budget",
    "nearest_fan_in",
    "neurons_to_ablate",
    "random_constant_fan_in_mask",
    "srigl_update",
]

TrimRule = Literal["magnitude", "reference"]


def check_fan_in_budget(shape: torch.Size | tuple[int, ...], budget: int) -> None:
    """Raise ``ValueError`` unless ``budget`` active weights give every row of ``shape`` at least one."""
    rows = shape[0]
    numel = math.prod(shape)
    if not 0 <= budget <= numel:
        raise ValueError(
            f"budget must be in [0, {numel}] active weights for shape {tuple(shape)}, got {budget}"
        )
    if budget < rows:
        raise ValueError(
            f"a budget of {budget} active weights cannot give each of the {rows} neurons of a layer "
            f"shaped {tuple(shape)} at least one weight (fan-in would be 0); lower this layer's sparsity "
            f"to at most {1 - rows / numel:.6g}, pin it dense, or exclude it from sparsification"
        )


def nearest_fan_in(target: int, rows: int, fan_in: int) -> int:
    """The constant fan-in ``k`` in ``[1, fan_in]`` whose ``rows * k`` is nearest ``target`` (ties go up).

    Args:
        target: active weights wanted in the layer (its budget plus rounding carried from other layers).
        rows: neurons that share the weights (the surviving rows after ablation), ``>= 1``.
        fan_in: dense fan-in ``F``, the most weights one row can hold.
    """
    return min(max(math.floor(target / rows + 0.5), 1), fan_in)


def random_constant_fan_in_mask(
    shape: tuple[int, ...] | torch.Size, budget: int, generator: torch.Generator | None = None
) -> Tensor:
    """Random mask with exactly ``budget // O`` active weights in every row, uniformly drawn.

    Args:
        shape: weight shape ``(O, *rest)``.
        budget: target number of active weights in the layer (the layer nnz is ``O * (budget // O)``).
        generator: source of randomness (same generator state -> same mask); ``None`` uses the
            global RNG. The mask is created on the generator's device (CPU when ``None``).

    Returns:
        BoolTensor of ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    check_fan_in_budget(shape, budget)
    rows = shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand((rows, math.prod(shape[1:])), generator=generator, device=device)
    return rowwise_topk_mask(noise, budget // rows).reshape(shape)


@dataclass(frozen=True)
class NeuronAblation:
    """Neurons whose saliency is too low to keep them.

    Attributes:
        ablated: ``(n_ablated,)`` int64 row indices, ascending.
        threshold: final salient-weight count ``tau`` a neuron needs to survive.
        saliency_counts: ``(O,)`` int64 number of salient weights per row.
    """

    ablated: Tensor
    threshold: int
    saliency_counts: Tensor


def neurons_to_ablate(
    weight_score: Tensor,
    grad_score: Tensor,
    *,
    n_keep: int,
    n_prune: int,
    budget: int,
    gamma_sal: float,
    sparse_fan_in_denominator: bool = True,
    min_active_neurons: int = 1,
) -> NeuronAblation:
    """Select the neurons to ablate from weight and gradient saliency (reference step 4).

    A weight is salient if it is in the layer-wise top-``n_keep`` of ``weight_score`` or the
    top-``n_prune`` of ``grad_score`` (all positions). Row ``i`` is ablated when its count
    ``c_i < tau`` with ``tau = gamma_sal`` (rounded up) if ``gamma_sal >= 1``, else
    ``max(1, floor(gamma_sal * D))`` where ``D = budget // O`` (``sparse_fan_in_denominator``) or
    ``F``. ``tau`` is lowered so that at least ``max(budget // F + 1, min_active_neurons)``
    neurons survive.

    Args:
        weight_score: ``(O, F)`` ``|w|`` of active weights; inactive positions score 0 or below.
        grad_score: ``(O, F)`` ``|dense gradient|``.
        n_keep, n_prune: the update's keep/prune counts (``n_keep`` at most the number of
            positive ``weight_score`` entries, as [`srigl_update`][lightning_srigl.sparsity.constant_fan_in.srigl_update] guarantees).
        budget: target nnz of the layer.
        gamma_sal: minimum salient fraction (``< 1``) or count (``>= 1``), must be ``> 0``.
        sparse_fan_in_denominator: relative ``gamma_sal`` is a fraction of the sparse fan-in.
        min_active_neurons: user floor on surviving neurons.
    """
    if gamma_sal <= 0:
        raise ValueError(f"gamma_sal must be > 0 to ablate neurons (0 disables ablation), got {gamma_sal}")
    rows, cols = weight_score.shape
    salient = topk_mask(weight_score, n_keep, among=weight_score > 0)
    salient |= topk_mask(grad_score, n_prune)
    counts = row_counts(salient)
    if gamma_sal >= 1:
        threshold = math.ceil(gamma_sal)
    else:
        denominator = budget // rows if sparse_fan_in_denominator else cols
        threshold = max(1, int(gamma_sal * denominator))
    floor_position = min(max(budget // cols, min_active_neurons - 1), rows - 1)
    floor_count = int(torch.sort(counts, descending=True).values[floor_position])
    threshold = min(threshold, floor_count)
    ablated = torch.nonzero(counts < threshold).flatten()
    return NeuronAblation(ablated=ablated, threshold=threshold, saliency_counts=counts)


@dataclass(frozen=True)
class SRigLUpdate:
    """Result of one SRigL topology update of a layer.

    Attributes:
        mask: new mask, weight-shaped bool.
        grown: positions inactive before the update and active after it (their weight is 0).
        regrown: the whole grow set, including dropped-and-regrown positions (which keep their value).
        ablated: ``(n_ablated,)`` int64 ablated rows, ascending.
        fan_in: new constant fan-in ``k`` of every surviving row.
        n_prune, n_keep: drop/keep counts used (after the non-zero adjustment).
        saliency_threshold: final ablation threshold, ``None`` when ablation did not run.
    """

    mask: Tensor
    grown: Tensor
    regrown: Tensor
    ablated: Tensor
    fan_in: int
    n_prune: int
    n_keep: int
    saliency_threshold: int | None


def _drop_counts(n_ones: int, n_nonzero: int, drop_fraction: float) -> tuple[int, int]:
    """``(n_prune, n_keep)``; keep at most the non-zero weights (reference quirk Q6)."""
    n_prune = int(n_ones * drop_fraction)
    n_keep = n_ones - n_prune
    if n_nonzero < n_keep:
        n_keep = n_nonzero
        n_prune = n_ones - n_keep
    return n_prune, n_keep


def _trim_rows(kept: Tensor, weight_score: Tensor, fan_in: int, trim: TrimRule) -> Tensor:
    """Cut rows of ``kept`` ``(O, F)`` holding more than ``fan_in`` weights down to ``fan_in``."""
    if not bool((row_counts(kept) > fan_in).any()):
        return kept
    if trim == "magnitude":
        return kept & rowwise_topk_mask(weight_score, fan_in, exclude=~kept)
    trimmed = kept.clone()  # the first fan_in kept positions of each row, block by block
    blocks = row_blocks(*kept.shape)
    for start in blocks:
        rows = slice(start, start + blocks.step)
        trimmed[rows] &= kept[rows].cumsum(dim=1) <= fan_in
    return trimmed


def srigl_update(
    weight: Tensor,
    mask: Tensor,
    dense_grad: Tensor,
    *,
    budget: int,
    drop_fraction: float,
    gamma_sal: float = 0.0,
    ablation: bool = True,
    sparse_fan_in_denominator: bool = True,
    trim: TrimRule = "magnitude",
    min_active_neurons: int = 1,
    target: int | None = None,
) -> SRigLUpdate:
    """One SRigL drop/grow update of a layer, keeping every surviving neuron at constant fan-in.

    Steps (reference README 1-8): drop to the layer-wise top-``n_keep`` by ``|w|``; ablate
    neurons with too few salient weights (``gamma_sal > 0`` and ``ablation``); spread the whole
    ``budget`` over the surviving rows, ``k = budget // (O - n_ablated)``; trim rows above ``k``
    (``trim``); grow each surviving row to exactly ``k`` by ``|dense_grad|`` among its non-kept
    positions. Ties go to the lower index. The caller then applies ``weight.mul_(update.mask)``:
    grown positions were inactive, hence 0; dropped-and-regrown weights keep their value.

    Args:
        weight: ``(O, *rest)`` weights, zero where ``mask`` is False.
        mask: ``(O, *rest)`` bool, True = active.
        dense_grad: ``(O, *rest)`` gradient w.r.t. the dense weight (finite).
        budget: target number of active weights (the reference's ``n_max``); must be ``>= O``.
        drop_fraction: fraction of active weights to replace, in ``[0, 1]``.
        gamma_sal: ablation threshold (0 disables ablation), see [`neurons_to_ablate`][lightning_srigl.sparsity.constant_fan_in.neurons_to_ablate].
        ablation: False protects this layer from ablation (e.g. the output layer).
        sparse_fan_in_denominator: relative ``gamma_sal`` is a fraction of ``budget // O`` (True)
            or of the dense fan-in ``F`` (False).
        trim: how to cut rows with more than ``k`` kept weights (see module docstring).
        min_active_neurons: never ablate below this many neurons.
        target: active weights to spread over the surviving rows, ``k = nearest_fan_in(target, ...)``
            (the callback's budget plus the rounding carried from earlier layers); ``None``: the
            reference's ``k = budget // survivors``.

    Returns:
        [`SRigLUpdate`][lightning_srigl.sparsity.constant_fan_in.SRigLUpdate] with weight-shaped masks.
    """
    check_update_inputs(weight, mask, dense_grad)
    drop_fraction = check_drop_fraction(drop_fraction)
    check_fan_in_budget(weight.shape, budget)
    if gamma_sal < 0:
        raise ValueError(f"gamma_sal must be >= 0 (0 disables ablation), got {gamma_sal}")
    if trim not in ("magnitude", "reference"):
        raise ValueError(f"trim must be 'magnitude' or 'reference', got {trim!r}")
    if min_active_neurons < 1:
        raise ValueError(f"min_active_neurons must be >= 1, got {min_active_neurons}")

    # Memory: one |w| score and at most one |grad| copy (none when dense_grad is already >= 0, as the
    # callbacks pass it); the selections below work in blocks (lightning_srigl.sparsity.topk).
    active = as_rows(mask)
    rows = active.shape[0]
    weight_score = as_rows(weight).abs()
    grad_score = as_rows(dense_grad)
    if not bool((grad_score >= 0).all()):
        grad_score = grad_score.abs()
    nonzero = weight_score > 0
    n_nonzero_anywhere = int(nonzero.count_nonzero())
    nonzero &= active
    n_nonzero = int(nonzero.count_nonzero())
    if n_nonzero != n_nonzero_anywhere:  # weights off the mask: score them below every active one
        weight_score.masked_fill_(~active, -1.0)
    # Otherwise inactive positions score 0, which the selections below exclude just as they exclude -1.
    n_prune, n_keep = _drop_counts(int(active.count_nonzero()), n_nonzero, drop_fraction)

    ablated = torch.zeros(rows, dtype=torch.bool, device=mask.device)
    threshold = None
    if ablation and gamma_sal > 0:
        result = neurons_to_ablate(
            weight_score,
            grad_score,
            n_keep=n_keep,
            n_prune=n_prune,
            budget=budget,
            gamma_sal=gamma_sal,
            sparse_fan_in_denominator=sparse_fan_in_denominator,
            min_active_neurons=min_active_neurons,
        )
        ablated[result.ablated] = True
        threshold = result.threshold
    survivors = rows - int(ablated.sum())
    fan_in = budget // survivors if target is None else nearest_fan_in(target, survivors, active.shape[1])

    candidates = nonzero
    candidates[ablated] = False
    n_kept = min(n_keep, int(candidates.count_nonzero()))
    kept = topk_mask(weight_score, n_kept, among=candidates)
    del candidates, nonzero
    kept = _trim_rows(kept, weight_score, fan_in, trim)
    del weight_score

    # Each surviving row is grown back to fan_in: its kept weights plus its top |grad| elsewhere.
    new_mask = rowwise_topk_mask(grad_score, torch.where(ablated, 0, fan_in), keep=kept)
    regrown = new_mask & ~kept
    return SRigLUpdate(
        mask=new_mask.reshape(mask.shape),
        grown=(regrown & ~active).reshape(mask.shape),
        regrown=regrown.reshape(mask.shape),
        ablated=torch.nonzero(ablated).flatten(),
        fan_in=fan_in,
        n_prune=n_prune,
        n_keep=n_keep,
        saliency_threshold=threshold,
    )
