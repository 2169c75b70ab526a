"""The int8 layout the ``int8_condensed_linear`` op takes, built from a condensed layout, and its checks.

``int8_layout(values, indices)`` quantizes ``values (A, k)`` per row, symmetric (``scale = max |w| / 127``,
1 for an all-zero row; ``int8 = clamp(round(w / scale), -127, 127)``), pads the fan-in with zero weights
(index 0) to a multiple of [`INT8_PAD`][lightning_srigl.kernels.int8.INT8_PAD] and adds the row sums the
activations' zero point needs. `calibration_range` fixes one activation ``(scale, zero)`` from real
inputs; `check_int8` validates a layout (run when a layer is built or loaded, so the op trusts it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_srigl.kernels.int8 import INT8_MAX_FAN_IN, INT8_PAD
from lightning_srigl.kernels.validation import INDEX_DTYPES, INT16_MAX, check_bias, check_sorted_in_range

__all__ = ["calibration_range", "check_int8", "int8_layout", "quantize_weights"]


def quantize_weights(values: Tensor) -> tuple[Tensor, Tensor]:
    """``values (A, k)`` float -> ``(int8 (A, k) in [-127, 127], scale (A,) fp32)``, symmetric per row."""
    values = values.detach().float()
    scale = values.abs().amax(dim=1) / 127.0 if values.shape[1] else values.new_ones(values.shape[0])
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(values / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def int8_layout(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(weight (A, kp) int8, indices (A, kp), weight_sum (A,) int32, weight_scale (A,) fp32)`` of a
    condensed ``values (A, k)``, ``indices (A, k)``.

    Raises:
        ValueError: the fan-in exceeds `INT8_MAX_FAN_IN` (int32 sums could overflow).
    """
    if values.shape[1] > INT8_MAX_FAN_IN:
        raise ValueError(f"int8 layers take a fan-in of at most {INT8_MAX_FAN_IN}, got {values.shape[1]}")
    weight, scale = quantize_weights(values)
    width = -(-max(values.shape[1], 1) // INT8_PAD) * INT8_PAD
    weight, indices = (F.pad(t, (0, width - values.shape[1])).contiguous() for t in (weight, indices))
    return weight, indices, weight.sum(dim=1, dtype=torch.int32), scale


def calibration_range(inputs: Tensor) -> tuple[float, int]:
    """One u8 ``(scale, zero)`` covering every value of the calibration ``inputs (..., in)`` (and 0).

    Raises:
        ValueError: ``inputs`` is empty or not finite.
    """
    if inputs.numel() == 0 or not bool(torch.isfinite(inputs).all()):
        raise ValueError("calibration inputs must be a non-empty finite tensor (run real batches through the model)")
    lo, hi = min(float(inputs.min()), 0.0), max(float(inputs.max()), 0.0)
    scale = float(torch.tensor((hi - lo) / 255.0, dtype=torch.float32)) or 1.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def check_int8(
    weight: Tensor,
    indices: Tensor,
    weight_sum: Tensor,
    weight_scale: Tensor,
    active_rows: Tensor,
    bias: Tensor | None,
    in_features: int,
    out_features: int,
) -> None:
    """Validate an int8 layout (shapes, dtypes, ranges, row sums), else raise ``ValueError`` naming the tensor."""
    if weight.dtype != torch.int8 or weight.dim() != 2 or weight.shape[1] % INT8_PAD:
        raise ValueError(f"weight must be int8 (A, kp), kp a multiple of {INT8_PAD}; got {weight.dtype} "
                         f"{tuple(weight.shape)}")  # fmt: skip
    if weight.shape[1] > INT8_MAX_FAN_IN or bool((weight == -128).any()):
        raise ValueError(f"weight must lie in [-127, 127] with a fan-in of at most {INT8_MAX_FAN_IN}")
    rows = weight.shape[0]
    if (
        indices.shape != weight.shape
        or indices.dtype not in INDEX_DTYPES
        or (indices.dtype == torch.int16 and in_features > INT16_MAX)
    ):
        raise ValueError(f"indices must be int16 (in_features <= {INT16_MAX}) or int32 of weight's shape "
                         f"{tuple(weight.shape)}; got {indices.dtype} {tuple(indices.shape)}")  # fmt: skip
    # Padding columns repeat index 0, so the rows are checked for range only (not order).
    check_sorted_in_range(indices.reshape(-1, 1), "indices", in_features, "")
    if active_rows.shape != (rows,) or rows > out_features:
        raise ValueError(f"active_rows must be ({rows},) with at most out_features={out_features} rows")
    check_sorted_in_range(active_rows, "active_rows", out_features, "(sorted, each output row once)")
    if len({weight.device, indices.device, active_rows.device, weight_scale.device}) != 1:
        raise ValueError("the int8 layer's buffers must be on one device; move it with module.to(...)")
    if weight_sum.dtype != torch.int32 or not torch.equal(weight_sum, weight.sum(dim=1, dtype=torch.int32)):
        raise ValueError("weight_sum must be the int32 row sums of weight")
    finite_positive = bool(torch.isfinite(weight_scale).all() and (weight_scale > 0).all())
    if weight_scale.dtype != torch.float32 or weight_scale.shape != (rows,) or not finite_positive:
        raise ValueError(f"weight_scale must be finite positive fp32 ({rows},)")
    check_bias(bias, out_features, weight_scale)
