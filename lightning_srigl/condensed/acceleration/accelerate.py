"""Swap each sparse layer of a model for the fastest exact inference layer on its device.

``accelerate(model, example_input)`` does four steps, also usable one by one:

1. ``capture_layer_inputs`` runs ``model(example_input)`` once with forward hooks and keeps the
   real input of every sparse layer (so kernels are timed at the user's batch size and shapes);
2. ``fold_in_place`` folds ablated neurons into the next layer where that is exact
   (``lightning_srigl.condensed.fold.neurons``);
3. ``plan_acceleration`` builds every candidate of each layer's kind (dense, condensed, CSR, 2:4
   semi-structured for ``nn.Linear``; ``lightning_srigl.condensed.kinds.registry``), checks it against the
   masked dense layer, times it and keeps the fastest: the plan holds the very modules it timed.
   With ``quantize="int8"`` the kind's quantized candidates (``lightning_srigl.condensed.kinds.quantized``)
   join them, calibrated on the captured input and kept when their output error stays in the budget;
4. ``swap_layers`` installs them (mask buffers leave with the old modules).

The sparse layers are the masked modules the masking layer records
(``lightning_srigl.masking.masked_weights``) whose type is a kind of the registry.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.acceleration.layer_call import LayerCall, outputs_close
from lightning_srigl.condensed.acceleration.report import (
    AccelerationReport,
    LayerAcceleration,
)
from lightning_srigl.condensed.acceleration.swap import replace_module
from lightning_srigl.condensed.kinds.quantized import DEFAULT_ERROR_BUDGET, QUANTIZE_MODES, STATIC, relative_error
from lightning_srigl.condensed.kinds.registry import (
    CANDIDATES,
    build_candidate,
    mark_accelerated,
    sparse_kind,
    sparse_layers,
    tied_layers,
)
from lightning_srigl.kernels.int8_layout import calibration_range
from lightning_srigl.masking import neuron_major
from lightning_srigl.timing import hot_times

__all__ = [
    "CANDIDATES",
    "AccelerationPlan",
    "AccelerationReport",
    "LayerAcceleration",
    "LayerCall",
    "accelerate",
    "capture_layer_inputs",
    "check_candidates",
    "check_quantize",
    "fit_inputs_to_layers",
    "fold_in_place",
    "plan_acceleration",
    "rebuild_plan",
    "restore_modules",
    "snapshot_modules",
    "swap_layers",
]


@dataclass(frozen=True)
class AccelerationPlan:
    """What to install: the report, and per layer the module that was chosen (the one that was timed)."""

    report: AccelerationReport
    layers: dict[str, nn.Module]


def check_candidates(candidates: Sequence[str]) -> tuple[str, ...]:
    """``candidates`` as a tuple of known names that includes ``"dense"`` (the reference), else raise.

    Raises:
        TypeError: a bare string (``"dense"`` would be five one-letter names) or non-string items.
        ValueError: an unknown name, or ``"dense"`` missing.
    """
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise TypeError(f"candidates must be a list of candidate names such as ['dense', 'condensed'], got {candidates!r}")
    chosen = tuple(candidates)
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown or "dense" not in chosen:
        raise ValueError(
            f"candidates must include 'dense' (the reference) and come from {CANDIDATES}; got {chosen}"
            + (f" ({unknown} unknown)" if unknown else "")
        )
    return chosen


def capture_layer_inputs(model: nn.Module, example_input: object, names: Sequence[str]) -> dict[str, LayerCall]:
    """Run ``model(example_input)`` under ``no_grad`` and return each named layer's first call.

    ``example_input`` is passed as one positional argument (a tuple is unpacked). A layer that the
    forward never reaches is missing from the result.
    """
    captured: dict[str, LayerCall] = {}
    modules = dict(model.named_modules())

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            if name not in captured and args and isinstance(args[0], Tensor):
                captured[name] = LayerCall(args, dict(kwargs)).map(Tensor.detach)

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name), with_kwargs=True) for name in names]
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _time_candidates(
    layer: nn.Module, mask: Tensor, call: LayerCall, candidates: Sequence[str], warmup: int, repeats: int,
    quantized: Sequence[str] = (), error_budget: float = DEFAULT_ERROR_BUDGET,
) -> tuple[dict[str, float], dict[str, str], dict[str, nn.Module], dict[str, float], tuple[float, int] | None]:
    """Build each candidate of ``layer``; time those that reproduce the masked dense output on ``call``.

    The exact candidates are timed together in interleaved rounds of ~1 ms samples (the benchmark's
    timer, [`hot_times`][lightning_srigl.timing.hot_times]: ``warmup`` calls, at least ``repeats``
    samples each) and ranked by their fastest sample, so other work on the machine cannot favour one.
    The ``quantized`` candidates (static ones calibrated on ``call``'s input) join them when their
    [`relative_error`][lightning_srigl.condensed.kinds.quantized.relative_error] is at most ``error_budget``.

    Returns ``(times, skipped, built, errors, input_range)``: seconds per kept candidate, why the others
    were skipped, the kept candidates themselves (the one chosen is installed as is), each quantized
    candidate's error, and the calibrated activation range (None without quantized candidates).
    """
    calls: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    built: dict[str, nn.Module] = {}
    errors: dict[str, float] = {}
    tol = 1e-2 if call.x.dtype in (torch.float16, torch.bfloat16) else 1e-4
    input_range = _calibrated(call.x) if set(quantized) & STATIC else None
    with torch.no_grad():
        reference = call(build_candidate("dense", layer, mask))
        kind = sparse_kind(layer)
        own = (*(c for c in candidates if c in kind.candidates), *(q for q in quantized if q in kind.quantized))
        for name in own:  # the kind's own candidates
            try:
                candidate = build_candidate(name, layer, mask, input_range)
                out = call(candidate)
            except (ValueError, RuntimeError, NotImplementedError, ImportError) as err:
                skipped[name] = f"{type(err).__name__}: {err}".splitlines()[0][:120]
                continue
            if name in quantized:
                errors[name] = relative_error(out, reference)
                if errors[name] > error_budget:
                    skipped[name] = f"relative error {errors[name]:.3g} above the budget {error_budget:g}"
                    continue
            elif not outputs_close(out, reference, tol):
                skipped[name] = "inexact: output differs from the masked dense layer"
                continue
            calls[name] = functools.partial(call, candidate)
            built[name] = candidate
        timings = hot_times(
            calls, threads=torch.get_num_threads(), min_run_time=0.0, device=call.x.device, warmup=warmup, min_samples=repeats
        )
    return {name: timing.min for name, timing in timings.items()}, skipped, built, errors, input_range


def _calibrated(x: Tensor) -> tuple[float, int] | None:
    """The activation range of ``x`` (None when it is not finite: the static candidates are then skipped)."""
    try:
        return calibration_range(x)
    except ValueError:
        return None


def check_quantize(quantize: str | None, error_budget: float) -> tuple[str, ...]:
    """The quantized candidate names ``quantize`` adds (none for None), else raise ValueError."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None or one of {sorted(QUANTIZE_MODES)}, got {quantize!r}")
    if not (isinstance(error_budget, (int, float)) and error_budget >= 0):
        raise ValueError(f"error_budget must be a non-negative number (a relative L2 error), got {error_budget!r}")
    return QUANTIZE_MODES[quantize] if quantize is not None else ()


def plan_acceleration(
    model: nn.Module,
    layer_inputs: Mapping[str, Tensor | LayerCall],
    *,
    candidates: Sequence[str] = CANDIDATES,
    device: torch.device | str | None = None,
    warmup: int = 3,
    repeats: int = 10,
    quantize: str | None = None,
    error_budget: float = DEFAULT_ERROR_BUDGET,
) -> AccelerationPlan:
    """Time the candidates of each sparse layer in ``layer_inputs`` and choose the fastest.

    ``quantize="int8"`` adds the quantized candidates; they count when their output error on the input
    is at most ``error_budget`` (see `accelerate`).

    ``layer_inputs`` maps a layer name to its real input (``(..., in)`` for a linear layer) or, for
    layers called with more (attention), to the `LayerCall` it received. ``device`` defaults to the
    layer's own device; a layer timed elsewhere is moved back to its own device in the plan. The
    model is not modified.
    """
    candidates = check_candidates(candidates)
    quantized = check_quantize(quantize, error_budget)
    sparse = sparse_layers(model)
    missing = sorted(set(layer_inputs) - set(sparse))
    if missing:
        raise ValueError(f"{missing} are not masked layers of a known kind; sparse layers: {sorted(sparse)}.")
    rows, layers = [], {}
    for name, value in layer_inputs.items():
        layer, mask, call = sparse[name].module, sparse[name].mask, LayerCall.of(value)
        home = sparse[name].weight.device
        target = torch.device(device) if device is not None else home
        if target != home:
            layer = copy.deepcopy(layer).to(target)
        # A call captured under autocast (bf16-mixed, 16-mixed) is in the autocast dtype; the candidates
        # compute in the layer's dtype, as they will at inference (CondensedLinear, CSRLinear cast to it).
        dtype = sparse[name].weight.dtype
        call = call.map(lambda t: t.to(device=target, dtype=dtype) if t.is_floating_point() else t.to(target))
        times, skipped, built, errors, input_range = _time_candidates(
            layer, mask.to(target), call, candidates, warmup, repeats, quantized, error_budget
        )
        row = _layer_row(name, layer, mask, call.x, times, skipped, errors, input_range)
        rows.append(row)
        layers[name] = built[row.chosen].to(home)
    return AccelerationPlan(AccelerationReport(rows), layers)


def _layer_row(
    name: str, layer: nn.Module, mask: Tensor, x: Tensor, times: dict[str, float], skipped: dict[str, str],
    errors: dict[str, float], input_range: tuple[float, int] | None,
) -> LayerAcceleration:
    rows = neuron_major(layer, mask).flatten(1)  # (out, fan-in positions)
    images = isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    chosen = min(times, key=times.__getitem__)
    return LayerAcceleration(
        name=name,
        in_features=rows.shape[1],
        out_features=rows.shape[0],
        batch=x.shape[0] if images else x.numel() // x.shape[-1],
        density=float(mask.float().mean()),
        active_neurons=int(rows.any(dim=1).sum()),
        chosen=chosen,
        times=times,
        skipped=skipped,
        errors=errors,
        input_range=input_range if chosen in STATIC else None,
    )


def rebuild_plan(model: nn.Module, report: AccelerationReport) -> AccelerationPlan:
    """The layers ``report`` chose, built from the model's current weights and masks (no timing).

    For a process that did not time (DDP ranks other than 0) and for re-accelerating after a
    checkpoint was loaded into the restored dense layers.
    """
    sparse = sparse_layers(model)
    missing = [row.name for row in report.rows if row.name not in sparse]
    if missing:
        raise ValueError(f"{missing} are not masked layers of a known kind: was the model already accelerated?")
    layers = {
        row.name: build_candidate(row.chosen, sparse[row.name].module, sparse[row.name].mask, row.input_range)
        for row in report.rows
    }
    return AccelerationPlan(report, layers)


def fold_in_place(model: nn.Module) -> list[str]:
    """Fold BatchNorms into the sparse convolutions they follow (`batchnorm_fold.fold_batchnorms`),
    then ablated neurons into the next layer (`fold.fold_ablated_neurons`), where exact.

    Runs in eval mode (dropout on a folding path must be off). Returns the names of the modules it
    changed; a model no part of which ``torch.fx`` can trace is left as is, with a warning.
    """
    from lightning_srigl.condensed.fold.batchnorm import fold_batchnorms
    from lightning_srigl.condensed.fold.neurons import fold_ablated_neurons

    modes = {module: module.training for module in model.modules()}  # each module's own, not the root's
    model.eval()
    replaced: list[str] = []
    try:
        replaced = list(fold_batchnorms(model))
        replaced += fold_ablated_neurons(model, inplace=True).replaced
    except ValueError as err:
        warnings.warn(f"accelerate: ablated neurons not folded: {err}", stacklevel=2)
    finally:
        for module in model.modules():
            module.training = modes.get(module, modes[model])  # a module folding made: the model's mode
    return list(dict.fromkeys(replaced))


def fit_inputs_to_layers(
    model: nn.Module, layer_inputs: Mapping[str, Tensor | LayerCall]
) -> dict[str, Tensor | LayerCall]:
    """Adapt captured inputs to layers whose inputs folding reduced (each kind's ``fit_input`` on the
    first argument)."""
    fitted: dict[str, Tensor | LayerCall] = {}
    for name, value in layer_inputs.items():
        module = model.get_submodule(name)
        fit = sparse_kind(module).fit_input
        fitted[name] = value.with_x(fit(module, value.x)) if isinstance(value, LayerCall) else fit(module, value)
    return fitted


def snapshot_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Shape-only (``meta`` device) copies of the named modules: ``to_empty`` + a checkpoint restores them."""
    return {name: copy.deepcopy(model.get_submodule(name)).to("meta") for name in names}


def swap_layers(model: nn.Module, plan: AccelerationPlan) -> None:
    """Install the plan's layers in place of the sparse layers (their masks leave with them), keeping each
    replaced layer's forward hooks and train/eval mode
    ([`replace_module`][lightning_srigl.condensed.acceleration.swap.replace_module]);
    [`restore_dense`][lightning_srigl.condensed.acceleration.swap.restore_dense] undoes it."""
    sparse = sparse_layers(model)
    for row in plan.report.rows:
        if row.name not in sparse:
            found = type(model.get_submodule(row.name)).__name__
            raise ValueError(f"{row.name} is {found}, not a masked layer of a known kind: was it already accelerated?")
        replace_module(model, row.name, mark_accelerated(plan.layers[row.name], row.chosen))


def restore_modules(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put modules back by name (e.g. the ``snapshot_modules`` copies, after ``to_empty``)."""
    for name, module in originals.items():
        model.set_submodule(name, module)


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
    quantize: str | None = None,
    error_budget: float = DEFAULT_ERROR_BUDGET,
) -> AccelerationReport:
    """Replace every sparse layer of ``model`` by its fastest exact inference layer, in place.

    Args:
        model: any ``nn.Module``; its sparse layers are its masked modules of a known kind
            (``lightning_srigl.condensed.kinds.registry.sparse_layers``).
        example_input: one real batch for ``model(example_input)`` (a tuple is unpacked); every
            layer is timed on the input it receives from this batch.
        candidates: kernels to try; ``"dense"`` is always needed as the reference.
        device: where to time (default: each layer's device).
        warmup, repeats: untimed calls before timing, and the fewest ~1 ms samples per candidate
            (candidates are timed in interleaved rounds and ranked by their fastest sample).
        fold: fold BatchNorms into the sparse convolutions before them and ablated neurons into the
            next layer, where provably exact.
        verbose: print the report as a rich table.
        quantize: ``"int8"`` also tries the int8 candidates of ``nn.Linear`` layers (int8 condensed with
            per-token or calibrated activations, torch's dynamic int8 dense; calibrated on
            ``example_input``); ``"int8-condensed"`` the int8 condensed ones only (a model holding
            torch's int8 dense layers cannot be saved with ``save_condensed``); None (default) keeps
            every layer exact.
        error_budget: the largest relative L2 error ``||y - y_fp32|| / ||y_fp32||`` of a quantized
            layer's output on ``example_input`` for it to be chosen (default 0.02); the fastest candidate
            within it wins.

    Returns:
        The report: per layer its shape, density, active neurons, times and chosen kernel.
    """
    candidates = check_candidates(candidates)
    check_quantize(quantize, error_budget)
    names = list(sparse_layers(model))
    if not names:
        raise ValueError(
            "No sparse layer found: a layer is sparse when it has a mask, installed by the sparsity callbacks, "
            "convert_to_structured or lightning_srigl.masking.bind_masks(model, {'<name>.weight': mask})."
        )
    tied = tied_layers(model)
    if tied:
        described = "; ".join(f"{name} (tied to {', '.join(others)})" for name, others in tied.items())
        warnings.warn(f"accelerate: {described} stay as they are: swapping a tied layer would break the tie", stacklevel=2)
    inputs = capture_layer_inputs(model, example_input, names)
    if fold:
        fold_in_place(model)
        inputs = fit_inputs_to_layers(model, inputs)
    plan = plan_acceleration(
        model, inputs, candidates=candidates, device=device, warmup=warmup, repeats=repeats, quantize=quantize,
        error_budget=error_budget,
    )  # fmt: skip
    swap_layers(model, plan)
    if verbose:
        plan.report.print()
    return plan.report
