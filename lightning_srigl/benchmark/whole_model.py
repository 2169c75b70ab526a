"""Whole-model benchmark: a sparse model accelerated end to end vs the same model dense, in one run.

For a model factory and an input factory, `benchmark_model`:

1. builds the model (seeded) and gives it SRigL masks (`srigl_masks`: the callbacks' layer
   selection, ERK or uniform densities, constant fan-in, a share of ablated neurons whose budget goes
   to the surviving ones, as SRigL redistributes it; the output layer keeps all its neurons);
2. per batch size, builds the variants from that one masked model: ``dense_fp32`` (the masked weights
   in the plain dense model), ``dense_channels_last`` (convolutional models), ``dense_bf16`` (only where
   the CPU computes bf16 natively) and ``accelerated``
   ([`accelerate`][lightning_srigl.acceleration.accelerate.accelerate]
   at that batch size, which keeps a dense layer wherever no sparse kernel is faster);
3. times them end to end in interleaved rounds ([`hot_times`][lightning_srigl.benchmark.timing.hot_times],
   minimum per call; at 1 thread the timing thread's CPU time, robust on a shared machine), and reports each variant's
   latency, its speedup over ``dense_fp32``, the max
   logit difference from ``dense_fp32`` and its weight bytes (parameters and buffers).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.benchmark.timing import hot_times
from lightning_srigl.masking import bind_masks, masked_weights, remove_masks_, select_parameters
from lightning_srigl.sparsity import erk_densities, layer_budgets, random_constant_fan_in_mask, uniform_densities

__all__ = ["ModelCase", "benchmark_model", "masked_model", "model_bytes", "native_bf16", "srigl_masks"]

Row = dict[str, Any]


@dataclass(frozen=True)
class ModelCase:
    """One model of the benchmark.

    Attributes:
        name: the row label.
        build: ``() -> nn.Module`` (called once, under a fixed seed).
        example: ``batch -> input`` (a tensor, or a tuple of positional inputs).
        distribution: ``"erk"`` or ``"uniform"`` (SRigL's choice: ERK for CNNs, uniform for transformers).
        ablated: share of each sparse layer's neurons that are ablated (not the output layer's).
        convolutional: also time the dense model in channels-last memory format.
        logits: ``model output -> logits tensor`` (e.g. ``lambda out: out.logits``).
    """

    name: str
    build: Callable[[], nn.Module]
    example: Callable[[int], Any]
    distribution: str = "erk"
    ablated: float = 0.1
    convolutional: bool = False
    logits: Callable[[Any], Tensor] = lambda out: out


def srigl_masks(
    model: nn.Module, sparsity: float, distribution: str, ablated: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """SRigL-style masks for ``model``'s default sparse selection: ``{fqn: BoolTensor(weight.shape)}``.

    Each layer's budget (``round(numel * density)``) is spread over its surviving neurons: ``ablated`` of
    them (rounded down; none in the last layer) get no weights, every other one ``budget // survivors``
    random inputs (at most its fan-in).
    """
    selected = select_parameters(model)
    shapes = [tuple(p.rows(p.weight).shape) for p in selected]
    allocate = erk_densities if distribution == "erk" else uniform_densities
    budgets = layer_budgets(shapes, allocate(shapes, sparsity))
    masks = {}
    for i, (param, shape, budget) in enumerate(zip(selected, shapes, budgets)):
        if budget >= torch.Size(shape).numel():
            continue  # dense layer
        out = shape[0]
        dropped = 0 if i == len(selected) - 1 else int(ablated * out)
        order = torch.randperm(out, generator=generator)
        survivors = order[dropped:].sort().values
        fan_in = torch.Size(shape[1:]).numel()
        budget = min(budget, len(survivors) * fan_in)
        rows = torch.zeros(shape, dtype=torch.bool)
        rows[survivors] = random_constant_fan_in_mask((len(survivors), *shape[1:]), budget, generator)
        masks[param.fqn] = param.rows(rows)
    return masks


def native_bf16() -> bool:
    """Whether this process computes bf16 natively on the CPU: AVX-512 with BF16 or AMX, and ATen not
    limited below AVX-512 (``ATEN_CPU_CAPABILITY``)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    has_bf16 = capabilities.get("avx512_bf16", False) or capabilities.get("amx_bf16", False)
    return bool(has_bf16) and torch.backends.cpu.get_cpu_capability() == "AVX512"


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (a tied parameter once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _convert(inputs: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to the floating-point tensors of ``inputs`` (one input or a tuple); others as they are."""

    def cast(value: Any) -> Any:
        return fn(value) if isinstance(value, Tensor) and value.is_floating_point() else value

    return tuple(map(cast, inputs)) if isinstance(inputs, tuple) else cast(inputs)


def _variants(
    case: ModelCase, masked: nn.Module, inputs: Any, *, repeats: int
) -> tuple[dict[str, tuple[nn.Module, Any]], str]:
    """Each variant's module and the inputs it takes (channels-last / bf16 copies where it needs them),
    and what acceleration chose (``"condensed:52 dense:1"``)."""
    dense = copy.deepcopy(masked)
    remove_masks_(dense)
    variants = {"dense_fp32": (dense, inputs)}
    if case.convolutional:
        last = copy.deepcopy(dense).to(memory_format=torch.channels_last)
        variants["dense_channels_last"] = (
            last,
            _convert(inputs, lambda t: t.contiguous(memory_format=torch.channels_last)),
        )
    if native_bf16():
        variants["dense_bf16"] = (copy.deepcopy(dense).to(torch.bfloat16), _convert(inputs, lambda t: t.bfloat16()))
    accelerated = copy.deepcopy(masked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folding or tie notes; the report lists what was chosen
        report = accelerate(accelerated, inputs, repeats=repeats, verbose=False, model_repeats=0)
    variants["accelerated"] = (accelerated, inputs)
    chosen = [row.chosen for row in report.rows]
    return variants, " ".join(f"{kind}:{chosen.count(kind)}" for kind in sorted(set(chosen)))


@torch.no_grad()
def masked_model(case: ModelCase, sparsity: float, seed: int) -> nn.Module:
    """``case``'s model (built under ``seed``, eval mode) with `srigl_masks` bound and applied: the same
    model in every process that calls this with the same arguments."""
    torch.manual_seed(seed)
    model = case.build().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tied weights stay dense (the warning is the selection's)
        masks = srigl_masks(model, sparsity, case.distribution, case.ablated, torch.Generator().manual_seed(seed))
    bind_masks(model, masks)
    for masked in masked_weights(model):
        masked.weight.mul_(masked.mask)
    return model


@torch.no_grad()
def benchmark_model(
    case: ModelCase,
    batches: Sequence[int],
    *,
    sparsity: float = 0.9,
    threads: int = 1,
    min_run_time: float = 2.0,
    seed: int = 0,
    accelerate_repeats: int = 10,
) -> list[Row]:
    """Time every variant of ``case`` at each batch size (see the module docstring); one row per variant.

    Args:
        case: the model.
        batches: batch sizes.
        sparsity: overall sparsity of the selected layers.
        threads: intra-op threads (``torch.set_num_threads``), for acceleration and timing.
        min_run_time: seconds of samples per variant and batch size (at least 7 samples each).
        seed: seeds the model, the masks and the inputs.
        accelerate_repeats: timed calls per candidate layer inside `accelerate`.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = masked_model(case, sparsity, seed)
        rows = []
        for batch in batches:
            torch.manual_seed(seed + batch)
            inputs = case.example(batch)
            variants, chosen = _variants(case, model, inputs, repeats=accelerate_repeats)
            rows += _measure(case, batch, variants, chosen, threads, min_run_time)
    finally:
        torch.set_num_threads(previous)
    return rows


def _measure(
    case: ModelCase,
    batch: int,
    variants: dict[str, tuple[nn.Module, Any]],
    chosen: str,
    threads: int,
    min_run_time: float,
) -> list[Row]:
    reference = case.logits(_call(variants["dense_fp32"][0], variants["dense_fp32"][1])).float()
    scale = float(reference.abs().max())
    calls = {name: (lambda m=module, x=inputs: _call(m, x)) for name, (module, inputs) in variants.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    timings = hot_times(calls, threads=threads, min_run_time=min_run_time, device=torch.device("cpu"))
    machine = machine_fields()
    rows = []
    for name, (module, inputs) in variants.items():
        logits = case.logits(_call(module, inputs)).float()
        rows.append({
            "model": case.name,
            "batch": batch,
            "variant": name,
            "latency_ms": round(timings[name].min * 1e3, 3),
            "median_ms": round(timings[name].median * 1e3, 3),
            "speedup": round(timings["dense_fp32"].min / timings[name].min, 3),
            "max_logit_diff": float((logits - reference).abs().max()),
            "logit_scale": scale,
            "weight_bytes": model_bytes(module),
            "chosen": chosen if name == "accelerated" else "",
            "threads": threads,
            "clock": "thread CPU time" if threads == 1 else "wall",  # what hot_times measures
            **machine,
            "load_average": round(load, 2),
        })  # fmt: skip
    return rows
