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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_srigl.sparsity.reducer import LocalReducer, Reducer, Selection
from lightning_srigl.sparsity.topk import as_rows, row_blocks, row_counts, rowwise_topk_mask
from lightning_srigl.sparsity.validation import check_drop_fraction, check_update_inputs

__all__ = [
    "LayerInputs",
    "NeuronAblation",
    "SRigLUpdate",
    "check_fan_in_budget",
    "nearest_fan_in",
    "neurons_to_ablate",
    "random_constant_fan_in_mask",
    "srigl_update",
    "srigl_update_layers",
]

TrimRule = Literal["magnitude", "reference"]


def check_fan_in_budget(shape: torch.Size | tuple[int, ...], budget: int) -> None:
    """Raise ``ValueError`` unless ``budget`` active weights give every row of ``shape`` at least one."""
    rows = shape[0]
    numel = math.prod(shape)
    if not 0 <= budget <= numel:
        raise ValueError(f"budget must be in [0, {numel}] active weights for shape {tuple(shape)}, got {budget}")
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
            positive ``weight_score`` entries, as
            [`srigl_update`][lightning_srigl.sparsity.constant_fan_in.srigl_update] guarantees).
        budget: target nnz of the layer.
        gamma_sal: minimum salient fraction (``< 1``) or count (``>= 1``), must be ``> 0``.
        sparse_fan_in_denominator: relative ``gamma_sal`` is a fraction of the sparse fan-in.
        min_active_neurons: user floor on surviving neurons.
    """
    rule = _AblationRule(gamma_sal, sparse_fan_in_denominator, min_active_neurons)
    reducer = LocalReducer()
    (counts,) = _saliency_counts([(weight_score, grad_score, n_keep, n_prune)], reducer)
    (threshold,) = _ablation_thresholds([(counts, budget, weight_score.shape)], rule, reducer)
    ablated = torch.nonzero(counts < threshold).flatten()
    return NeuronAblation(ablated=ablated, threshold=threshold, saliency_counts=counts)


@dataclass(frozen=True)
class _AblationRule:
    """The ablation arguments an update applies to every ablatable layer."""

    gamma_sal: float
    sparse_fan_in_denominator: bool
    min_active_neurons: int

    def __post_init__(self) -> None:
        if self.gamma_sal <= 0:
            raise ValueError(f"gamma_sal must be > 0 to ablate neurons (0 disables ablation), got {self.gamma_sal}")

    def threshold(self, rows: int, cols: int, budget: int) -> int:
        """The salient-weight count ``tau`` a neuron needs, before the survivor floor lowers it."""
        if self.gamma_sal >= 1:
            return math.ceil(self.gamma_sal)
        denominator = budget // rows if self.sparse_fan_in_denominator else cols
        return max(1, int(self.gamma_sal * denominator))

    def floor_position(self, rows: int, cols: int, budget: int) -> int:
        """0-based position, in the descending row counts, of the count every survivor floor needs."""
        return min(max(budget // cols, self.min_active_neurons - 1), rows - 1)


def _saliency_counts(layers: Sequence[tuple[Tensor, Tensor, int, int]], reducer: Reducer) -> list[Tensor]:
    """Per layer ``(weight_score, grad_score, n_keep, n_prune)`` (this part's ``(O, F)`` scores), the
    ``(O,)`` int64 number of salient weights per row: in the layer-wide top-``n_keep`` of positive
    ``weight_score`` or top-``n_prune`` of ``grad_score``."""
    selections = []
    for weight_score, grad_score, n_keep, n_prune in layers:
        selections += [Selection(weight_score, n_keep, weight_score > 0), Selection(grad_score, n_prune)]
    masks = reducer.topk_masks(selections)
    return [row_counts(by_weight | by_grad) for by_weight, by_grad in zip(masks[::2], masks[1::2])]


def _ablation_thresholds(
    layers: Sequence[tuple[Tensor, int, tuple[int, ...] | torch.Size]], rule: _AblationRule, reducer: Reducer
) -> list[int]:
    """Per layer ``(counts, budget, (O, F) of the whole layer)``, the final ablation threshold ``tau``."""
    selections = []
    for counts, budget, (rows, cols) in layers:
        position = rule.floor_position(rows, cols, budget)
        selections.append(Selection(counts.to(torch.int32), position + 1))
    floors = reducer.kth_largest(selections)
    return [
        min(rule.threshold(rows, cols, budget), int(floor)) for (_, budget, (rows, cols)), floor in zip(layers, floors)
    ]


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


@dataclass(frozen=True)
class LayerInputs:
    """One layer's tensors for an update: the whole layer, or this process's shard of its rows.

    Attributes:
        weight: ``(O, *rest)`` weights (``O`` = this part's rows), zero where ``mask`` is False.
        mask: ``(O, *rest)`` bool, True = active.
        dense_grad: ``(O, *rest)`` gradient w.r.t. the dense weight (finite).
        budget: target number of active weights of the whole layer.
        ablation: False protects this layer from ablation (e.g. the output layer).
    """

    weight: Tensor
    mask: Tensor
    dense_grad: Tensor
    budget: int = 0
    ablation: bool = True


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
        gamma_sal: ablation threshold (0 disables ablation), see
            [`neurons_to_ablate`][lightning_srigl.sparsity.constant_fan_in.neurons_to_ablate].
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
    (update,) = srigl_update_layers(
        [LayerInputs(weight, mask, dense_grad, budget, ablation)],
        carry=None if target is None else target - budget,
        drop_fraction=drop_fraction,
        gamma_sal=gamma_sal,
        sparse_fan_in_denominator=sparse_fan_in_denominator,
        trim=trim,
        min_active_neurons=min_active_neurons,
    )
    return update


@dataclass
class _LayerScores:
    """One layer's scores and counts while an update runs (``(O, F)`` views of this part's rows)."""

    active: Tensor
    weight_score: Tensor
    grad_score: Tensor
    nonzero: Tensor
    layer_shape: tuple[int, int] = (0, 0)  # (O, F) of the whole layer
    n_prune: int = 0
    n_keep: int = 0


def _score(layer: LayerInputs) -> tuple[_LayerScores, list[int]]:
    """Scores of one layer and its local counts ``[rows, active, non-zero active, non-zero anywhere]``.

    Memory: one ``|w|`` score and at most one ``|grad|`` copy (none when ``dense_grad`` is already
    ``>= 0``, as the callbacks pass it); the selections work in blocks
    ([`lightning_srigl.sparsity.topk`][lightning_srigl.sparsity.topk]).
    """
    check_update_inputs(layer.weight, layer.mask, layer.dense_grad)
    active = as_rows(layer.mask)
    grad_score = as_rows(layer.dense_grad)
    if not bool((grad_score >= 0).all()):
        grad_score = grad_score.abs()
    scores = _LayerScores(active, as_rows(layer.weight).abs(), grad_score, torch.empty(0))
    scores.nonzero = scores.weight_score > 0
    n_anywhere = int(scores.nonzero.count_nonzero())
    scores.nonzero &= active
    counts = [active.shape[0], int(active.count_nonzero()), int(scores.nonzero.count_nonzero()), n_anywhere]
    return scores, counts


def srigl_update_layers(
    layers: Sequence[LayerInputs],
    *,
    drop_fraction: float,
    gamma_sal: float = 0.0,
    sparse_fan_in_denominator: bool = True,
    trim: TrimRule = "magnitude",
    min_active_neurons: int = 1,
    carry: int | None = None,
    reducer: Reducer | None = None,
) -> list[SRigLUpdate]:
    """[`srigl_update`][lightning_srigl.sparsity.constant_fan_in.srigl_update] of several layers at once,
    each whole or as this process's shard of rows.

    With a [`ShardReducer`][lightning_srigl.sparsity.reducer.ShardReducer] every process passes its shards
    (``LayerInputs`` of the same layers, in the same order) and gets its part of each update's masks, the
    same positions a whole-layer update selects. The layer-wide steps of all layers share communication
    rounds: at most 7 rounds per update without ablation, 16 with, whatever the number of layers.

    Args:
        layers: the layers' tensors, budgets and ablation flags.
        drop_fraction, gamma_sal, sparse_fan_in_denominator, trim, min_active_neurons: as in ``srigl_update``.
        carry: ``None``: each layer's fan-in is the reference's ``budget // survivors``. An int: the layers'
            targets are chained, layer ``i`` spreading ``target_i = budget_i + carry_i`` over its survivors
            with ``k_i = nearest_fan_in(target_i, ...)`` and passing ``carry_{i+1} = target_i - k_i *
            survivors_i`` on, starting from ``carry`` (the rounding of the layers before these).
        reducer: the layer-wide steps; ``None``: [`LocalReducer`][lightning_srigl.sparsity.reducer.LocalReducer].

    Returns:
        One [`SRigLUpdate`][lightning_srigl.sparsity.constant_fan_in.SRigLUpdate] per layer, masks shaped like
        its ``mask`` (this part's rows); ``ablated`` holds this part's row indices.
    """
    reducer = reducer if reducer is not None else LocalReducer()
    drop_fraction = check_drop_fraction(drop_fraction)
    if gamma_sal < 0:
        raise ValueError(f"gamma_sal must be >= 0 (0 disables ablation), got {gamma_sal}")
    if trim not in ("magnitude", "reference"):
        raise ValueError(f"trim must be 'magnitude' or 'reference', got {trim!r}")
    if min_active_neurons < 1:
        raise ValueError(f"min_active_neurons must be >= 1, got {min_active_neurons}")

    scored = [_score(layer) for layer in layers]
    totals = reducer.sum([count for _, counts in scored for count in counts])
    for i, ((scores, _), layer) in enumerate(zip(scored, layers)):
        rows, n_active, n_nonzero, n_anywhere = totals[4 * i : 4 * i + 4]
        cols = scores.active.shape[1]
        check_fan_in_budget((rows, *layer.mask.shape[1:]), layer.budget)
        scores.layer_shape = (rows, cols)
        if n_nonzero != n_anywhere:  # weights off the mask: score them below every active one
            scores.weight_score.masked_fill_(~scores.active, -1.0)
        # Otherwise inactive positions score 0, which the selections exclude just as they exclude -1.
        scores.n_prune, scores.n_keep = _drop_counts(n_active, n_nonzero, drop_fraction)
    layer_scores = [scores for scores, _ in scored]
    del scored

    rule = _AblationRule(gamma_sal, sparse_fan_in_denominator, min_active_neurons) if gamma_sal > 0 else None
    ablated, thresholds = _ablate(layers, layer_scores, rule, reducer)
    candidates = []
    for scores, dead in zip(layer_scores, ablated):
        scores.nonzero[dead] = False  # the candidates to keep: active, non-zero, not ablated
        candidates += [int(dead.count_nonzero()), int(scores.nonzero.count_nonzero())]
    candidates = reducer.sum(candidates)
    n_ablated, n_candidates = candidates[::2], candidates[1::2]
    kept = reducer.topk_masks(
        [Selection(s.weight_score, min(s.n_keep, n), s.nonzero) for s, n in zip(layer_scores, n_candidates)]
    )
    updates = []
    for i, (layer, scores, kept_here) in enumerate(zip(layers, layer_scores, kept)):
        scores.nonzero = torch.empty(0)  # used up: free each layer's temporaries as soon as it is done
        rows, cols = scores.layer_shape
        survivors = rows - n_ablated[i]
        if carry is None:
            fan_in = layer.budget // survivors
        else:
            target = layer.budget + carry
            fan_in = nearest_fan_in(target, survivors, cols - (survivors == rows))  # a sparse layer stays sparse
            carry = target - fan_in * survivors
        kept_here = _trim_rows(kept_here, scores.weight_score, fan_in, trim)
        scores.weight_score = kept[i] = torch.empty(0)
        updates.append(_grow(layer.mask, scores, kept_here, ablated[i], fan_in, thresholds[i]))
    return updates


def _ablate(
    layers: Sequence[LayerInputs],
    layer_scores: Sequence[_LayerScores],
    rule: _AblationRule | None,
    reducer: Reducer,
) -> tuple[list[Tensor], list[int | None]]:
    """Per layer the ``(O,)`` bool ablated rows of this part and the final threshold (``None``: no ablation)."""
    ablated = [torch.zeros(s.active.shape[0], dtype=torch.bool, device=s.active.device) for s in layer_scores]
    thresholds: list[int | None] = [None] * len(layers)
    if rule is None:
        return ablated, thresholds
    which = [i for i, layer in enumerate(layers) if layer.ablation]
    counts = _saliency_counts(
        [(s.weight_score, s.grad_score, s.n_keep, s.n_prune) for s in (layer_scores[i] for i in which)], reducer
    )
    found = _ablation_thresholds(
        [(c, layers[i].budget, layer_scores[i].layer_shape) for i, c in zip(which, counts)], rule, reducer
    )
    for i, c, threshold in zip(which, counts, found):
        ablated[i] = c < threshold
        thresholds[i] = threshold
    return ablated, thresholds


def _grow(
    mask: Tensor, scores: _LayerScores, kept: Tensor, ablated: Tensor, fan_in: int, threshold: int | None
) -> SRigLUpdate:
    """Grow each surviving row of ``kept`` back to ``fan_in`` by its top ``|grad|`` elsewhere."""
    new_mask = rowwise_topk_mask(scores.grad_score, torch.where(ablated, 0, fan_in), keep=kept)
    regrown = new_mask & ~kept
    return SRigLUpdate(
        mask=new_mask.reshape(mask.shape),
        grown=(regrown & ~scores.active).reshape(mask.shape),
        regrown=regrown.reshape(mask.shape),
        ablated=torch.nonzero(ablated).flatten(),
        fan_in=fan_in,
        n_prune=scores.n_prune,
        n_keep=scores.n_keep,
        saliency_threshold=threshold,
    )
