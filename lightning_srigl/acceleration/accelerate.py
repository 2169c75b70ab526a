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
4. ``swap_layers`` installs them (mask buffers leave with the old modules; ``fold.activation`` fuses ReLUs);
5. ``pack_dense_linears`` moves the dense ``nn.Linear`` layers no mask covers (GPT-2's tied ``lm_head``) to
   oneDNN's prepacked GEMM where that times faster than torch's (``PackedLinear``);
6. ``switch_attention`` puts the attention of Hugging Face models and ``ProjectedAttention`` layers on the
   ``lightning_srigl::attention`` op where that times faster than torch's ``scaled_dot_product_attention``.

The sparse layers are the masked modules the masking layer records
(``lightning_srigl.masking.masked_weights``) whose type is a kind of the registry.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.attention import attention_sites, switch_attention
from lightning_srigl.acceleration.dense_layers import dense_linears, pack_dense_linears
from lightning_srigl.acceleration.model_timing import dense_reference, whole_model_times
from lightning_srigl.acceleration.planning import (
    AccelerationPlan,
    PlanCache,
    Timer,
    check_candidates,
    check_quantize,
    machine_key,
    plan_acceleration,
)
from lightning_srigl.acceleration.report import AccelerationReport, LayerAcceleration
from lightning_srigl.acceleration.swap import replace_module
from lightning_srigl.condensed.fold.activation import fuse_relus, relu_pairs
from lightning_srigl.condensed.kinds.quantized import DEFAULT_ERROR_BUDGET
from lightning_srigl.condensed.kinds.registry import (
    CANDIDATES,
    build_candidate,
    mark_accelerated,
    sparse_kind,
    sparse_layers,
    tied_layers,
)
from lightning_srigl.kernels.compiled import check_compile_options, compile_in_place, eager_forward
from lightning_srigl.layer_call import LayerCall, record_calls

__all__ = [
    "CANDIDATES",
    "AccelerationPlan",
    "AccelerationReport",
    "LayerAcceleration",
    "LayerCall",
    "PlanCache",
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


def capture_layer_inputs(
    model: nn.Module, example_input: object, names: Sequence[str], *, tensor_first: bool = True
) -> dict[str, LayerCall]:
    """Run ``model(example_input)`` under ``no_grad`` and return each named layer's last call.

    ``example_input`` is passed as one positional argument (a tuple is unpacked). A layer that the
    forward never reaches is missing from the result. The last call (as ``AccelerateCallback`` keeps the
    latest input): a decoder that prefills its KV cache and then decodes is timed at the decode step.
    ``tensor_first=False`` also keeps calls without a tensor as first argument (`record_calls`).
    """
    captured: dict[str, LayerCall] = {}
    modules = dict(model.named_modules())
    handles = record_calls({name: modules[name] for name in names}, captured, tensor_first=tensor_first)
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return captured


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
    ([`replace_module`][lightning_srigl.acceleration.swap.replace_module]);
    [`restore_dense`][lightning_srigl.acceleration.swap.restore_dense] undoes it."""
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
    compile: bool = False,
    module_guards: bool = True,
    compile_options: dict[str, Any] | None = None,
    pack_dense: bool = True,
    fast_attention: bool = True,
    model_repeats: int = 3,
    plan_cache: str | Path | None = None,
    timer: Timer | None = None,
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
            (candidates are timed in interleaved rounds; layers of one shape once; a candidate replaces
            dense only on a margin the samples' spread supports:
            `planning`).
        fold: fold BatchNorms into the sparse convolutions before them, ablated neurons into the
            next layer, and a ReLU into the condensed convolution it alone follows, where provably exact.
        verbose: print the report as a rich table.
        quantize: ``"int8"`` also tries the int8 candidates of ``nn.Linear`` layers (int8 condensed with
            per-token or calibrated activations, torch's dynamic int8 dense; calibrated on
            ``example_input``); ``"int8-condensed"`` the int8 condensed ones only (a model holding
            torch's int8 dense layers cannot be saved with ``save_condensed``); None (default) keeps
            every layer exact.
        error_budget: the largest relative L2 error ``||y - y_fp32|| / ||y_fp32||`` of a quantized
            layer's output on ``example_input`` for it to be chosen (default 0.02); the fastest candidate
            within it wins.
        compile: compile the accelerated model in place into one graph (``torch.compile`` with inductor
            freezing, the condensed layers as opaque custom ops; `compiled`);
            the report gives the compile time. Later calls of ``model`` run the compiled graph.
        module_guards: with ``compile``, False leaves out the compiled graph's per-call checks of the model's
            modules and their weights (`lightning_srigl.kernels.compiled.compile_lazily`: many small steps, such
            as decoding, gain most); the model must then not change after ``accelerate`` (no layer swapped, cast
            or moved, no ``train()``).
        compile_options: with ``compile``, inductor options over the defaults (e.g. ``{"cpp_wrapper": True}``;
            `lightning_srigl.kernels.compiled.compile_lazily`).
        pack_dense: also time the dense ``nn.Linear`` layers that have no mask (fp32, CPU) against oneDNN's
            prepacked GEMM on their real input and swap in a ``PackedLinear`` (same parameters) where
            it is faster (`dense_layers`); the report's ``dense_layers`` says which.
        fast_attention: also time the attention of Hugging Face models (``attn_implementation="sdpa"``) and of
            ``ProjectedAttention`` layers on the calls ``example_input`` makes, torch's
            ``scaled_dot_product_attention`` against the ``lightning_srigl::attention`` op, and switch to the op
            where it is exact and faster (`attention`); the report's ``attention`` says which.
        model_repeats: samples of the whole model's time before (dense) and after (accelerated, and
            compiled) for the report; 0 skips that timing.
        plan_cache: a JSON file of candidate times per layer shape on this machine, read and updated
            (`PlanCache`): a second model with the same shapes
            is not timed again.
        timer: replaces the candidates' timer (``calls -> {name: Timing}``), e.g. in tests.

    Returns:
        The report: per layer its shape, density, active neurons, times and chosen kernel; the whole
        model's times and the compile time.
    """
    candidates = check_candidates(candidates)
    check_quantize(quantize, error_budget)
    compile_options = check_compile_options(compile_options, compile=compile)
    names = list(sparse_layers(model))
    if not names:
        raise ValueError(
            "No sparse layer found: a layer is sparse when it has a mask, installed by the sparsity callbacks, "
            "convert_to_structured or lightning_srigl.masking.bind_masks(model, {'<name>.weight': mask})."
        )
    tied = tied_layers(model)
    if tied:
        described = "; ".join(f"{name} (tied to {', '.join(others)})" for name, others in tied.items())
        warnings.warn(
            f"accelerate: {described} stay as they are: swapping a tied layer would break the tie", stacklevel=2
        )
    dense = dense_reference(model) if model_repeats > 0 else None
    inputs = capture_layer_inputs(model, example_input, names)
    if fold:
        fold_in_place(model)
        inputs = fit_inputs_to_layers(model, inputs)
    relus = relu_pairs(model) if fold else {}
    cache = None if plan_cache is None else PlanCache(plan_cache, machine_key())
    plan = plan_acceleration(
        model,
        inputs,
        candidates=candidates,
        device=device,
        warmup=warmup,
        repeats=repeats,
        quantize=quantize,
        error_budget=error_budget,
        timer=timer,
        cache=cache,
    )
    if cache is not None:
        cache.save()
    swap_layers(model, plan)
    fuse_relus(model, relus)
    report = plan.report
    if pack_dense:
        calls = capture_layer_inputs(model, example_input, dense_linears(model))
        report = report.with_dense_layers(pack_dense_linears(model, calls, timer=timer, warmup=warmup, repeats=repeats))
    if fast_attention:
        calls = capture_layer_inputs(model, example_input, list(attention_sites(model)), tensor_first=False)
        report = report.with_attention(switch_attention(model, calls, timer=timer, warmup=warmup, repeats=repeats))
    if compile:
        seconds = compile_in_place(model, example_input, module_guards=module_guards, options=compile_options)
        report = report.with_compile_seconds(seconds)
    if dense is not None:
        forms = {"dense": dense, "accelerated": eager_forward(model)} | ({"compiled": model} if compile else {})
        report = report.with_model_times(whole_model_times(forms, example_input, repeats=model_repeats))
    if verbose:
        report.print()
    return report
