"""The dense linear layers acceleration leaves dense: each on the faster of torch's GEMM and oneDNN's prepacked one.

A sparse model keeps dense layers the masks do not cover (GPT-2's ``lm_head``, tied to the token
embedding: 50257x768, a third of the dense model's FLOPs and most of the accelerated model's time). On
CPUs where torch's fp32 GEMM is MKL's AVX2 path (AMD), oneDNN's GEMM on a prepacked weight is 2-2.5x
faster (`lightning_srigl.kernels.dense`). `pack_dense_linears` times both on each such layer's real
input, in interleaved rounds, and installs [`PackedLinear`][lightning_srigl.condensed.layers.packed_linear.PackedLinear]
where it wins by the margin the noise supports (`choose`), else leaves the layer as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from lightning_srigl.condensed.acceleration.layer_call import LayerCall, outputs_close
from lightning_srigl.condensed.acceleration.planning import Timer, choose, default_timer
from lightning_srigl.condensed.acceleration.swap import replace_module
from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.kernels.dense import onednn_linear_available
from lightning_srigl.masking import masked_weights

__all__ = ["DENSE_CANDIDATES", "dense_linears", "pack_dense_linears"]

# The choice per dense linear layer: torch's own product (the reference), oneDNN on the packed weight.
DENSE_CANDIDATES = ("dense", "packed")


def dense_linears(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` modules (exact type) of ``model`` with an fp32 CPU weight and no mask,
    other than those acceleration installed (a sparse layer it kept dense): the layers sparsity did not touch."""
    masked = {m.module_name for m in masked_weights(model)} | set(accelerated_layers(model))
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and name not in masked
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    ]


@torch.no_grad()
def pack_dense_linears(
    model: nn.Module,
    calls: dict[str, LayerCall],
    *,
    timer: Timer | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, str]:
    """Put a `PackedLinear` in place of each layer of ``calls`` (name -> its captured call, from
    `dense_linears`) where it is exact and faster; returns name -> the candidate kept (`DENSE_CANDIDATES`).

    Layers of one shape and input shape are timed once. Nothing changes where oneDNN is not available.
    """
    if not onednn_linear_available():
        return {name: "dense" for name in calls}
    chosen: dict[str, str] = {}
    timed: dict[tuple[object, ...], str] = {}
    for name, call in calls.items():
        linear = model.get_submodule(name)
        packed = PackedLinear.from_linear(linear)
        if not outputs_close(call(packed), call(linear), 1e-4):
            chosen[name] = "dense"
            continue
        key = (tuple(linear.weight.shape), linear.bias is not None, *_shapes(call.args), torch.get_num_threads())
        if key not in timed:
            forms = {"dense": linear, "packed": packed}
            timings = (timer or default_timer(warmup, repeats, linear.weight.device))(
                {c: functools.partial(call, module) for c, module in forms.items()}
            )
            timed[key] = choose(timings, DENSE_CANDIDATES)
        chosen[name] = timed[key]
        if chosen[name] == "packed":
            replace_module(model, name, packed)
    return chosen


def _shapes(args: Sequence[object]) -> tuple[object, ...]:
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
