"""Choosing each sparse layer's kernel: once per layer shape, only on a margin the noise supports, reusable.

`plan_acceleration` (used by ``accelerate()`` and ``AccelerateCallback``) builds every candidate
of each sparse layer, checks it against the masked dense layer and keeps one, such that the plan is
stable and explainable:

* **One timing per shape.** Layers with the same `layer_signature` (kind, configuration, fan-in,
  active neurons, input shapes and dtypes, threads) are timed once, on the first of them, and all get
  the same kernel; each layer's own candidate is still built from its own weights and checked exactly.
* **A margin the noise supports.** `choose` keeps ``"dense"`` (the exact reference) unless a
  candidate's fastest sample beats dense's by more than the relative spread of the samples
  (``median / min - 1`` of either, at least `MIN_MARGIN`, at most `MAX_MARGIN`); among
  candidates within that margin of the fastest it takes the first in the kind's candidate order, so
  two runs that time the same layer a few per cent apart choose the same kernel.
* **Reusable.** A `PlanCache` (a JSON file) stores the times of each signature on this CPU and
  kernel variant; a later plan on the same machine reuses them instead of timing again.

The timer is injectable (``timer=``): the tests give deterministic timings to check the mechanism.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.report import (
    AccelerationReport,
    LayerAcceleration,
)
from lightning_srigl.condensed.kinds.quantized import DEFAULT_ERROR_BUDGET, QUANTIZE_MODES, STATIC
from lightning_srigl.condensed.kinds.registry import (
    CANDIDATES,
    build_candidate,
    sparse_kind,
    sparse_layers,
)
from lightning_srigl.kernels.cpu.isa import cpu_model
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.int8_layout import calibration_range
from lightning_srigl.layer_call import LayerCall, outputs_close, relative_error
from lightning_srigl.masking import neuron_major
from lightning_srigl.timing import Timing, hot_times

__all__ = [
    "MAX_MARGIN",
    "MIN_MARGIN",
    "AccelerationPlan",
    "PlanCache",
    "Timer",
    "check_candidates",
    "check_quantize",
    "choose",
    "layer_signature",
    "machine_key",
    "plan_acceleration",
]

# A candidate replaces dense only when faster by more than this share, and more than the samples' spread...
MIN_MARGIN = 0.03
# ... which counts up to this share (a heavily loaded machine's spread would otherwise keep everything dense).
MAX_MARGIN = 0.15

# (calls by candidate name) -> their timings; the default is hot_times (interleaved rounds, min and median).
Timer = Callable[[Mapping[str, Callable[[], object]]], dict[str, Timing]]


@dataclass(frozen=True)
class AccelerationPlan:
    """What to install: the report, and per layer the module that was chosen (the one that was checked)."""

    report: AccelerationReport
    layers: dict[str, nn.Module]


def check_candidates(candidates: Sequence[str]) -> tuple[str, ...]:
    """``candidates`` as a tuple of known names that includes ``"dense"`` (the reference), else raise.

    Raises:
        TypeError: a bare string (``"dense"`` would be five one-letter names) or non-string items.
        ValueError: an unknown name, or ``"dense"`` missing.
    """
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise TypeError(
            f"candidates must be a list of candidate names such as ['dense', 'condensed'], got {candidates!r}"
        )
    chosen = tuple(candidates)
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown or "dense" not in chosen:
        raise ValueError(
            f"candidates must include 'dense' (the reference) and come from {CANDIDATES}; got {chosen}"
            + (f" ({unknown} unknown)" if unknown else "")
        )
    return chosen


def choose(timings: Mapping[str, Timing], order: Sequence[str] = CANDIDATES, reference: str = "dense") -> str:
    """The kernel to install given each exact candidate's timing (``reference``, by default ``"dense"``, among
    them).

    The margin is the larger relative spread (``median / min - 1``) of the reference and the fastest candidate,
    clamped to ``[MIN_MARGIN, MAX_MARGIN]``. The reference stays when it is within that margin of the fastest;
    otherwise the first candidate in ``order`` within the margin of the fastest is chosen.
    """
    fastest = min(timings, key=lambda name: timings[name].min)
    spread = max(_spread(timings[reference]), _spread(timings[fastest]))
    margin = min(max(spread, MIN_MARGIN), MAX_MARGIN)
    close = [name for name in timings if timings[name].min <= timings[fastest].min * (1 + margin)]
    if reference in close:
        return reference
    return min(close, key=lambda name: order.index(name) if name in order else len(order))


def _spread(timing: Timing) -> float:
    return timing.median / timing.min - 1 if timing.min > 0 else 0.0


def layer_signature(layer: nn.Module, mask: Tensor, call: LayerCall) -> str:
    """What a layer's kernel times depend on: its kind and configuration (``repr``), the mask's fan-in
    and active neurons, every tensor argument's shape, dtype and device, and the intra-op threads."""
    rows = neuron_major(layer, mask).flatten(1)  # (out, fan-in positions)
    fan_in = rows.sum(dim=1)
    tensors = [v for v in (*call.args, *call.kwargs.values()) if isinstance(v, Tensor)]
    inputs = ",".join(f"{tuple(t.shape)}:{t.dtype}:{t.device.type}" for t in tensors)
    others = {k: v for k, v in call.kwargs.items() if not isinstance(v, Tensor)}
    return (
        f"{' '.join(repr(layer).split())}|mask={tuple(mask.shape)} k={int(fan_in.max()) if fan_in.numel() else 0} "
        f"active={int((fan_in > 0).sum())}|in={inputs} {others}|threads={torch.get_num_threads()}"
    )


def machine_key() -> str:
    """The CPU model and kernel variant that a `PlanCache`'s times belong to."""
    kernel = load_extension()
    return f"{cpu_model()} {kernel.variant if kernel is not None else 'torch-fallback'}"


class PlanCache:
    """Candidate times per `layer_signature` on one machine, kept in a JSON file.

    The file maps ``"<machine>||<signature>"`` (machine: CPU model and kernel variant) to
    ``{candidate: [median, min]}`` seconds; `save` writes it back.
    """

    def __init__(self, path: str | Path, machine: str) -> None:
        self.path, self.machine = Path(path), machine
        self.entries: dict[str, dict[str, list[float]]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )

    def get(self, signature: str) -> dict[str, Timing] | None:
        """The stored timings of ``signature`` on this machine, or None."""
        entry = self.entries.get(f"{self.machine}||{signature}")
        return None if entry is None else {name: Timing(*values) for name, values in entry.items()}

    def put(self, signature: str, timings: Mapping[str, Timing]) -> None:
        self.entries[f"{self.machine}||{signature}"] = {name: [t.median, t.min] for name, t in timings.items()}

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        return self.path


def default_timer(warmup: int, repeats: int, device: torch.device) -> Timer:
    """`hot_times` on this process's threads: ``warmup`` calls, then
    interleaved rounds until each candidate has ``repeats`` ~1 ms samples."""
    return lambda calls: hot_times(
        calls,
        threads=torch.get_num_threads(),
        min_run_time=0.0,
        device=device,
        warmup=warmup,
        min_samples=repeats,
    )


def check_quantize(quantize: str | None, error_budget: float) -> tuple[str, ...]:
    """The quantized candidate names ``quantize`` adds (none for None), else raise ValueError."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None or one of {sorted(QUANTIZE_MODES)}, got {quantize!r}")
    if not (isinstance(error_budget, (int, float)) and error_budget >= 0):
        raise ValueError(f"error_budget must be a non-negative number (a relative L2 error), got {error_budget!r}")
    return QUANTIZE_MODES[quantize] if quantize is not None else ()


@dataclass
class _Checked:
    """A layer's candidates that passed their check, why the others were skipped, each quantized
    candidate's relative output error, and the calibrated activation range (None without static ones)."""

    built: dict[str, nn.Module]
    skipped: dict[str, str]
    errors: dict[str, float]
    input_range: tuple[float, int] | None


def _checked_candidates(
    layer: nn.Module,
    mask: Tensor,
    call: LayerCall,
    candidates: Sequence[str],
    quantized: Sequence[str] = (),
    error_budget: float = DEFAULT_ERROR_BUDGET,
) -> _Checked:
    """Build the candidates of ``layer``'s kind among ``candidates`` and ``quantized``; keep the exact
    ones that reproduce the masked dense output on ``call``, and the quantized ones (static ones
    calibrated on ``call``'s input) whose
    [`relative_error`][lightning_srigl.layer_call.relative_error] is at most ``error_budget``."""
    checked = _Checked({}, {}, {}, _calibrated(call.x) if set(quantized) & STATIC else None)
    tol = 1e-2 if call.x.dtype in (torch.float16, torch.bfloat16) else 1e-4
    reference = call(build_candidate("dense", layer, mask))
    kind = sparse_kind(layer)
    own = (*(c for c in candidates if c in kind.candidates), *(q for q in quantized if q in kind.quantized))
    for name in own:
        try:
            candidate = build_candidate(name, layer, mask, checked.input_range)
            out = call(candidate)
        except (ValueError, RuntimeError, NotImplementedError, ImportError) as err:
            checked.skipped[name] = f"{type(err).__name__}: {err}".splitlines()[0][:120]
            continue
        if name in quantized:
            checked.errors[name] = relative_error(out, reference)
            if checked.errors[name] > error_budget:
                checked.skipped[name] = f"relative error {checked.errors[name]:.3g} above the budget {error_budget:g}"
                continue
        elif not outputs_close(out, reference, tol):
            checked.skipped[name] = "inexact: output differs from the masked dense layer"
            continue
        checked.built[name] = candidate
    return checked


def _calibrated(x: Tensor) -> tuple[float, int] | None:
    """The activation range of ``x`` (None when it is not finite: the static candidates are then skipped)."""
    try:
        return calibration_range(x)
    except ValueError:
        return None


@torch.no_grad()
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
    timer: Timer | None = None,
    cache: PlanCache | None = None,
) -> AccelerationPlan:
    """Choose a kernel for each sparse layer in ``layer_inputs`` (see the module docstring).

    ``layer_inputs`` maps a layer name to its real input (``(..., in)`` for a linear layer) or, for
    layers called with more (attention), to the `LayerCall` it received. ``device`` defaults to the
    layer's own device; a layer timed elsewhere is moved back to its own device in the plan. ``timer``
    replaces the default (`default_timer` of ``warmup``, ``repeats``); ``cache`` supplies and
    records the timings per signature. ``quantize="int8"`` adds the quantized candidates; they count
    when their output error on the input is at most ``error_budget`` (see ``accelerate``). The model is
    not modified.
    """
    candidates = check_candidates(candidates)
    quantized = check_quantize(quantize, error_budget)
    sparse = sparse_layers(model)
    missing = sorted(set(layer_inputs) - set(sparse))
    if missing:
        raise ValueError(f"{missing} are not masked layers of a known kind; sparse layers: {sorted(sparse)}.")
    timed: dict[str, dict[str, Timing]] = {}  # signature -> timings, in this plan
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
        mask = mask.to(target)
        checked = _checked_candidates(layer, mask, call, candidates, quantized, error_budget)
        built = checked.built
        signature = layer_signature(layer, mask, call)
        timings = timed.get(signature) or (cache.get(signature) if cache is not None else None)
        if timings is None or not set(built) <= set(timings):
            calls = {c: functools.partial(call, module) for c, module in built.items()}
            timings = (timer or default_timer(warmup, repeats, target))(calls)
            if cache is not None:
                cache.put(signature, timings)
        timed[signature] = timings
        timings = {c: timings[c] for c in built}
        row = _layer_row(name, layer, mask, call.x, timings, checked)
        rows.append(row)
        layers[name] = built[row.chosen].to(home)
    return AccelerationPlan(AccelerationReport(rows), layers)


def _layer_row(
    name: str,
    layer: nn.Module,
    mask: Tensor,
    x: Tensor,
    timings: dict[str, Timing],
    checked: _Checked,
) -> LayerAcceleration:
    rows = neuron_major(layer, mask).flatten(1)  # (out, fan-in positions)
    images = isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    return LayerAcceleration(
        name=name,
        in_features=rows.shape[1],
        out_features=rows.shape[0],
        batch=x.shape[0] if images else x.numel() // x.shape[-1],
        density=float(mask.float().mean()),
        active_neurons=int(rows.any(dim=1).sum()),
        chosen=(chosen := choose(timings)),
        times={c: t.min for c, t in timings.items()},
        skipped=checked.skipped,
        errors=checked.errors,
        input_range=checked.input_range if chosen in STATIC else None,
    )
