"""The dense linear layers no mask covers (GPT-2's tied ``lm_head``): each on the faster of torch's GEMM and
oneDNN's on a prepacked weight ([`PackedLinear`][lightning_srigl.condensed.layers.packed_linear.PackedLinear];
on AMD CPUs torch's fp32 GEMM is MKL's AVX2 path, 2-2.5x slower: `lightning_srigl.kernels.dense`)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from lightning_srigl.acceleration.planning import Timer, choose, default_timer
from lightning_srigl.acceleration.swap import replace_module
from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.kernels.dense import onednn_linear_available
from lightning_srigl.layer_call import LayerCall, outputs_close
from lightning_srigl.masking import masked_weights

__all__ = ["DENSE_CANDIDATES", "dense_linears", "pack_dense_linears"]

# The choice per dense linear layer: torch's own product (the reference), oneDNN on the packed weight.
DENSE_CANDIDATES = ("dense", "packed")


def dense_linears(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` modules (exact type) of ``model`` with an fp32 CPU weight and no mask,
    other than those acceleration installed (a sparse layer it kept dense): the layers sparsity did not touch."""
    skipped = {m.module_name for m in masked_weights(model)} | set(accelerated_layers(model))
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name not in skipped and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    ]  # fmt: skip


@torch.no_grad()
def pack_dense_linears(
    model: nn.Module, calls: dict[str, LayerCall], *, timer: Timer | None = None, warmup: int = 3, repeats: int = 10
) -> dict[str, str]:
    """Put a `PackedLinear` in place of each layer of ``calls`` (name -> its captured call) where it is exact and
    faster by the margin the noise supports (`choose`); returns name -> the candidate kept (`DENSE_CANDIDATES`).
    A weight and input shape is timed once (interleaved rounds); nothing changes without oneDNN."""
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
        key = (tuple(linear.weight.shape), linear.bias is not None, tuple(call.x.shape), torch.get_num_threads())
        if key not in timed:
            forms = {"dense": linear, "packed": packed}
            calls_of = {c: functools.partial(call, module) for c, module in forms.items()}
            timed[key] = choose(
                (timer or default_timer(warmup, repeats, linear.weight.device))(calls_of), DENSE_CANDIDATES
            )
        chosen[name] = timed[key]
        if chosen[name] == "packed":
            replace_module(model, name, packed)
    return chosen
