"""Swap each sparse ``nn.Linear`` of a model for the fastest exact inference layer on its device.

``accelerate(model, example_input)`` does three steps, also usable one by one:

1. ``capture_layer_inputs`` runs ``model(example_input)`` once with forward hooks and keeps the
   real input of every sparse ``Linear`` (so kernels are timed at the user's batch size and shapes);
2. ``plan_acceleration`` builds every exact candidate (dense, condensed, CSR, 2:4
   semi-structured), checks it against the masked dense layer, times it and picks the fastest;
3. ``swap_layers`` swaps the chosen layers in (mask buffers leave with the old modules).

Before step 2, ``fold_in_place`` folds ablated neurons into the next layer where that is exact
(``lightning_srigl.condensed.fold``).

A sparse ``Linear`` is one with a ``weight_mask`` buffer (what the training callbacks install) or,
without one, a weight whose non-zero rows all share one fan-in.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.condensed.acceleration_report import CANDIDATES, AccelerationReport, LayerAcceleration
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear

__all__ = [
    "CANDIDATES",
    "AccelerationReport",
    "CSRLinear",
    "LayerAcceleration",
    "accelerate",
    "capture_layer_inputs",
    "find_sparse_linears",
    "fit_inputs_to_layers",
    "fold_in_place",
    "layer_mask",
    "make_candidate",
    "median_time",
    "pad_fan_in",
    "plan_acceleration",
    "restore_modules",
    "snapshot_modules",
    "swap_layers",
]


def layer_mask(linear: nn.Linear) -> Tensor | None:
    """The boolean ``(out, in)`` mask of a sparse ``Linear``, or ``None`` when it is not sparse.

    The ``weight_mask`` buffer wins; otherwise the non-zeros count when every non-empty row has the
    same count and at least one weight is zero (a condensed layer's defining property).
    """
    mask = getattr(linear, "weight_mask", None)
    if isinstance(mask, Tensor):
        return mask.bool()
    nonzero = linear.weight.detach() != 0
    fan_in = nonzero.sum(dim=1)
    active = fan_in[fan_in > 0]
    if active.numel() == 0 or bool(nonzero.all()) or bool((active != active[0]).any()):
        return None
    return nonzero


def find_sparse_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Fully-qualified name -> every sparse ``nn.Linear`` of ``model`` (see ``layer_mask``)."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is nn.Linear and layer_mask(module) is not None
    }


def capture_layer_inputs(model: nn.Module, example_input: object, names: Sequence[str]) -> dict[str, Tensor]:
    """Run ``model(example_input)`` under ``no_grad`` and return each named layer's input tensor.

    ``example_input`` is passed as one positional argument (a tuple is unpacked). A layer that the
    forward never reaches is missing from the result.
    """
    captured: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def hook_for(name: str) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def hook(_: nn.Module, args: tuple[object, ...]) -> None:
            if name not in captured and args and isinstance(args[0], Tensor):
                captured[name] = args[0].detach()

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def pad_fan_in(mask: Tensor) -> Tensor:
    """Give every non-empty row of ``mask (out, in)`` the largest fan-in by adding its first inactive columns.

    With the weight zero there, the layer is unchanged: this keeps a layer condensable after
    folding removed some of its input columns (which leaves rows with unequal fan-in).
    """
    fan_in = mask.sum(dim=1)
    missing = (fan_in.max() - fan_in) * (fan_in > 0)
    inactive = ~mask
    return mask | (inactive & (inactive.cumsum(dim=1) <= missing[:, None]))


def make_candidate(kind: str, linear: nn.Linear, mask: Tensor) -> nn.Module:
    """Build the inference layer ``kind`` equal to ``linear`` with ``weight * mask``.

    Raises ``ValueError``/``RuntimeError``/``NotImplementedError`` when ``kind`` cannot represent
    this layer on this device or dtype (e.g. condensed without constant fan-in, 2:4 on CPU).
    """
    if kind == "dense":
        dense = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
        dense = dense.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(linear.weight * mask)
            if linear.bias is not None:
                dense.bias.copy_(linear.bias)
        return dense.requires_grad_(False)
    if kind == "condensed":
        weight = linear.weight.detach() * mask
        return CondensedLinear.from_weight_mask(weight, pad_fan_in(mask), linear.bias)
    if kind == "csr":
        return CSRLinear.from_linear(linear, mask)
    if kind == "semi_structured":
        if linear.weight.device.type != "cuda":
            raise NotImplementedError("2:4 semi-structured kernels need a CUDA GPU")
        from lightning_srigl.condensed.semi_structured import SemiStructuredLinear

        return SemiStructuredLinear.from_linear(linear, mask)
    raise ValueError(f"Unknown candidate {kind!r}; choose from {CANDIDATES}.")


def median_time(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of one call of ``fn`` in seconds, after ``warmup`` calls (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(repeats, 1)):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _time_candidates(
    linear: nn.Linear, mask: Tensor, x: Tensor, candidates: Sequence[str], warmup: int, repeats: int
) -> tuple[dict[str, float], dict[str, str]]:
    """Times of the candidates that build and reproduce the masked dense output on ``x``, and why
    the others were skipped."""
    times: dict[str, float] = {}
    skipped: dict[str, str] = {}
    tol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-4
    with torch.no_grad():
        reference = F.linear(x, linear.weight * mask, linear.bias)
        for kind in candidates:
            try:
                layer = make_candidate(kind, linear, mask)
                out = layer(x)
            except (ValueError, RuntimeError, NotImplementedError, ImportError) as err:
                skipped[kind] = f"{type(err).__name__}: {err}".splitlines()[0][:120]
                continue
            if not torch.allclose(out.float(), reference.float(), rtol=tol, atol=tol):
                skipped[kind] = "inexact: output differs from the masked dense layer"
                continue
            times[kind] = median_time(lambda: layer(x), x.device, warmup, repeats)
    return times, skipped


def plan_acceleration(
    model: nn.Module,
    layer_inputs: dict[str, Tensor],
    *,
    candidates: Sequence[str] = CANDIDATES,
    device: torch.device | str | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> AccelerationReport:
    """Time the candidates of each sparse layer in ``layer_inputs`` and choose the fastest.

    ``layer_inputs`` maps a layer name to its real input ``(..., in)``. ``device`` defaults to the
    layer's own device; the model is not modified.
    """
    unknown = set(candidates) - set(CANDIDATES)
    if unknown or "dense" not in candidates:
        raise ValueError(f"candidates must include 'dense' and come from {CANDIDATES}; got {tuple(candidates)}.")
    sparse = find_sparse_linears(model)
    missing = sorted(set(layer_inputs) - set(sparse))
    if missing:
        raise ValueError(f"{missing} are not sparse nn.Linear layers of the model; sparse layers: {sorted(sparse)}.")
    rows = []
    for name, x in layer_inputs.items():
        linear, mask = sparse[name], layer_mask(sparse[name])
        target = torch.device(device) if device is not None else linear.weight.device
        if target != linear.weight.device:
            linear = copy.deepcopy(linear).to(target)
        times, skipped = _time_candidates(linear, mask.to(target), x.to(target), candidates, warmup, repeats)
        rows.append(_layer_row(name, linear, mask, x, times, skipped))
    return AccelerationReport(rows)


def _layer_row(
    name: str, linear: nn.Linear, mask: Tensor, x: Tensor, times: dict[str, float], skipped: dict[str, str]
) -> LayerAcceleration:
    return LayerAcceleration(
        name=name,
        in_features=linear.in_features,
        out_features=linear.out_features,
        batch=x.numel() // x.shape[-1],
        density=float(mask.float().mean()),
        active_neurons=int(mask.any(dim=1).sum()),
        chosen=min(times, key=times.__getitem__),
        times=times,
        skipped=skipped,
    )


def fold_in_place(model: nn.Module) -> list[str]:
    """Fold ablated neurons into the next layer where exact (``fold.fold_ablated_neurons``).

    Runs in eval mode (dropout on a folding path must be off). Returns the names of the modules it
    changed; a model whose ``forward`` ``torch.fx`` cannot trace is left as is, with a warning.
    """
    from lightning_srigl.condensed.fold import fold_ablated_neurons

    was_training = model.training
    model.eval()
    try:
        report = fold_ablated_neurons(model, inplace=True)
    except ValueError as err:
        warnings.warn(f"accelerate: ablated neurons not folded: {err}", stacklevel=2)
        return []
    finally:
        model.train(was_training)
    return list(report.replaced)


def fit_inputs_to_layers(model: nn.Module, layer_inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut captured inputs ``(..., in)`` to layers whose ``in_features`` folding reduced.

    Timing depends on shapes and dtypes only, so the first ``in_features`` columns stand in for the
    folded layer's real input.
    """
    return {
        name: x[..., : model.get_submodule(name).in_features].contiguous() for name, x in layer_inputs.items()
    }


def snapshot_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Shape-only (``meta`` device) copies of the named modules: ``to_empty`` + a checkpoint restores them."""
    return {name: copy.deepcopy(model.get_submodule(name)).to("meta") for name in names}


def swap_layers(model: nn.Module, report: AccelerationReport) -> None:
    """Replace each layer of ``report`` by its chosen kernel (its ``weight_mask`` leaves with it)."""
    for row in report.rows:
        original = model.get_submodule(row.name)
        if type(original) is not nn.Linear:
            raise ValueError(f"{row.name} is {type(original).__name__}, not nn.Linear: was it already accelerated?")
        _set_submodule(model, row.name, make_candidate(row.chosen, original, layer_mask(original)))


def restore_modules(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put modules back by name (e.g. the ``snapshot_modules`` copies, after ``to_empty``)."""
    for name, module in originals.items():
        _set_submodule(model, name, module)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def accelerate(
    model: nn.Module,
    example_input: object,
    *,
    candidates: Sequence[str] = CANDIDATES,
    device: torch.device | str | None = None,
    warmup: int = 3,
    repeats: int = 10,
    fold: bool = True,
    verbose: bool = True,
) -> AccelerationReport:
    """Replace every sparse ``Linear`` of ``model`` by its fastest exact inference layer, in place.

    Args:
        model: any ``nn.Module``; sparse layers are found with ``find_sparse_linears``.
        example_input: one real batch for ``model(example_input)`` (a tuple is unpacked); every
            layer is timed on the input it receives from this batch.
        candidates: kernels to try; ``"dense"`` is always needed as the reference.
        device: where to time (default: each layer's device).
        warmup, repeats: calls before timing and timed calls (median) per candidate.
        fold: fold ablated neurons into the next layer where provably exact.
        verbose: print the report as a rich table.

    Returns:
        The report: per layer its shape, density, active neurons, times and chosen kernel.
    """
    names = list(find_sparse_linears(model))
    if not names:
        raise ValueError(
            "No sparse nn.Linear found: a layer needs a `weight_mask` buffer (installed by the sparsity "
            "callbacks) or zero weights with the same fan-in in every non-empty row."
        )
    inputs = capture_layer_inputs(model, example_input, names)
    if fold:
        fold_in_place(model)
        inputs = fit_inputs_to_layers(model, inputs)
    report = plan_acceleration(model, inputs, candidates=candidates, device=device, warmup=warmup, repeats=repeats)
    swap_layers(model, report)
    if verbose:
        report.print()
    return report
