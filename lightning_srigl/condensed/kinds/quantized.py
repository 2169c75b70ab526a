"""Quantized candidates for ``accelerate(..., quantize="int8")``: inexact layers chosen within an error budget.

Each builder takes the masked module, its mask and the activation range ``(scale, zero)`` calibrated
on the example batch (``None`` where the candidate quantizes activations per call) and returns an
inference module; `relative_error` measures it against the masked fp32 layer on that batch:

* ``"int8_condensed"`` — `Int8CondensedLinear`, `Int8CondensedConv2d`/`1d`; activations quantized per row per call;
* ``"int8_condensed_static"`` — the same with the calibrated activation range;
* ``"int8_dense"`` — torch's dynamic int8 ``Linear`` of the masked dense weight (``torch.ao``), for
  comparison (CPU only). ``save_condensed`` cannot save it (torch's packed int8 weights neither
  rebuild from attributes nor export): ``quantize="int8-condensed"`` leaves it out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.kinds.candidates import masked_copy
from lightning_srigl.condensed.layers.int8_conv import Int8CondensedConv1d, Int8CondensedConv2d
from lightning_srigl.condensed.layers.int8_linear import Int8Condensed, Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear

InputRange = tuple[float, int]
Quantizer = Callable[[nn.Module, Tensor, InputRange | None], nn.Module]

__all__ = ["DEFAULT_ERROR_BUDGET", "QUANTIZED_CONV", "QUANTIZED_LINEAR", "QUANTIZE_MODES",
           "STATIC", "InputRange", "Quantizer", "relative_error"]  # fmt: skip

# Relative L2 error of a layer's output (against the masked fp32 layer, on the example batch) that a
# quantized candidate may have and still be chosen.
DEFAULT_ERROR_BUDGET = 0.02


def _int8_condensed(module: nn.Module, mask: Tensor, input_range: InputRange | None) -> Int8Condensed:
    if isinstance(module, nn.Linear):
        return Int8CondensedLinear.from_condensed(CondensedLinear.from_masked(module, mask), input_range)
    conv = Int8CondensedConv1d if isinstance(module, nn.Conv1d) else Int8CondensedConv2d
    return conv.from_condensed(conv.condensed_class.from_masked(module, mask), input_range)


def _int8_condensed_static(module: nn.Module, mask: Tensor, input_range: InputRange | None) -> Int8Condensed:
    if input_range is None:
        raise ValueError("int8_condensed_static needs the activation range calibrated on an example batch")
    return _int8_condensed(module, mask, input_range)


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
# Quantized candidates of nn.Conv1d and nn.Conv2d (groups=1; other convolutions fail to build and are skipped).
QUANTIZED_CONV: Mapping[str, Quantizer] = {name: QUANTIZED_LINEAR[name] for name in QUANTIZE_MODES["int8-condensed"]}


def relative_error(out: Tensor, reference: Tensor) -> float:
    """``||out - reference|| / ||reference||`` (L2 over every element; inf for other shapes, NaN or inf)."""
    if not isinstance(out, Tensor) or out.shape != reference.shape:
        return math.inf
    norm = float(reference.float().norm())
    error = float((out.float() - reference.float()).norm())
    ratio = error / norm if norm > 0 else (0.0 if error == 0 else math.inf)
    return ratio if math.isfinite(ratio) else math.inf
