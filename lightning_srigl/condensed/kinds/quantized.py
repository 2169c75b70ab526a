"""Quantized candidates for ``accelerate(..., quantize="int8")``: inexact layers chosen within an error budget.

Each builder takes the masked module, its mask and the activation range ``(scale, zero)`` calibrated
on the example batch (``None`` where the candidate quantizes activations per call) and returns an
inference module; `lightning_srigl.layer_call.relative_error` measures it against the masked fp32 layer on that batch:

* ``"int8_condensed"`` — `Int8CondensedLinear` (of an ``nn.Linear`` or a Hugging Face ``Conv1D``),
  `Int8CondensedConv2d`/`1d`, or a `ProjectedAttention` whose masked projections are `Int8CondensedLinear`
  (``nn.MultiheadAttention``); activations quantized per row per call;
* ``"int8_condensed_static"`` — the same with the calibrated activation range (an attention's: the input
  projections' inputs are the captured query, calibrated; ``out_proj``'s input, the attended values,
  is not captured, so it stays dynamic);
* ``"int8_dense"`` — torch's dynamic int8 ``Linear`` of the masked dense weight (``torch.ao``), for
  comparison (CPU only). ``save_condensed`` cannot save it (torch's packed int8 weights neither
  rebuild from attributes nor export): ``quantize="int8-condensed"`` leaves it out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.kinds.candidates import hf_conv1d_condensed, masked_copy, projected_attention
from lightning_srigl.condensed.layers.int8_conv import Int8CondensedConv1d, Int8CondensedConv2d
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.masking import is_hf_conv1d

InputRange = tuple[float, int]
Quantizer = Callable[[nn.Module, Tensor, InputRange | None], nn.Module]

__all__ = ["DEFAULT_ERROR_BUDGET", "QUANTIZED_CONDENSED", "QUANTIZED_LINEAR", "QUANTIZE_MODES",
           "STATIC", "InputRange", "Quantizer"]  # fmt: skip

# Relative L2 error of a layer's output (against the masked fp32 layer, on the example batch) that a
# quantized candidate may have and still be chosen.
DEFAULT_ERROR_BUDGET = 0.02


def _int8_attention(attention: nn.MultiheadAttention, mask: Tensor, input_range: InputRange | None) -> nn.Module:
    """`projected_attention` with its condensed projections quantized; ``out_proj``'s activations stay dynamic."""
    projected = projected_attention(attention, mask)
    condensed = [name for name, proj in projected.named_children() if isinstance(proj, CondensedLinear)]
    for name in condensed:
        own_range = None if name == "out_proj" else input_range
        setattr(projected, name, Int8CondensedLinear.from_condensed(getattr(projected, name), own_range))
    return projected


def _int8_layer(module: nn.Module, mask: Tensor, input_range: InputRange | None) -> nn.Module:
    """The int8 condensed layer of ``module`` (activations in ``input_range``, or per row when None)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        conv = Int8CondensedConv1d if isinstance(module, nn.Conv1d) else Int8CondensedConv2d
        return conv.from_condensed(conv.condensed_class.from_masked(module, mask), input_range)
    if isinstance(module, nn.MultiheadAttention):
        return _int8_attention(module, mask, input_range)
    condensed = hf_conv1d_condensed(module, mask) if is_hf_conv1d(module) else CondensedLinear.from_masked(module, mask)
    return Int8CondensedLinear.from_condensed(condensed, input_range)


def _int8_condensed(module: nn.Module, mask: Tensor, input_range: InputRange | None) -> nn.Module:
    """Dynamic: a calibrated ``input_range`` (the planner has one when static candidates are tried) is not used."""
    return _int8_layer(module, mask, None)


def _int8_condensed_static(module: nn.Module, mask: Tensor, input_range: InputRange | None) -> nn.Module:
    if input_range is None:
        raise ValueError("int8_condensed_static needs the activation range calibrated on an example batch")
    return _int8_layer(module, mask, input_range)


def _int8_dense(linear: nn.Module, mask: Tensor, input_range: InputRange | None) -> nn.Module:
    """torch's dynamic int8 ``Linear`` (per-tensor int8 weight, activations quantized per call) of ``weight * mask``."""
    if linear.weight.device.type != "cpu":
        raise NotImplementedError("torch's dynamic int8 Linear runs on the CPU only")
    dense = masked_copy(linear, mask)
    dense.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao announces its move to torchao; the module still works
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.nn.quantized.dynamic.Linear.from_float(dense)


# Quantized candidates of nn.Linear, by name.
QUANTIZED_LINEAR: Mapping[str, Quantizer] = {
    "int8_condensed": _int8_condensed,
    "int8_condensed_static": _int8_condensed_static,
    "int8_dense": _int8_dense,
}
# The candidates each ``quantize=`` mode adds, and those that use the calibrated range.
QUANTIZE_MODES: Mapping[str, tuple[str, ...]] = {
    "int8": tuple(QUANTIZED_LINEAR),
    "int8-condensed": ("int8_condensed", "int8_condensed_static"),
}
STATIC = frozenset({"int8_condensed_static"})
# Quantized candidates of nn.Conv1d and nn.Conv2d (groups=1; other convolutions fail to build and are skipped),
# nn.MultiheadAttention (its masked projections) and Hugging Face's Conv1D: the int8 condensed ones.
QUANTIZED_CONDENSED: Mapping[str, Quantizer] = {n: QUANTIZED_LINEAR[n] for n in QUANTIZE_MODES["int8-condensed"]}
