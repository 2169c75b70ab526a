"""The torch custom op ``lightning_srigl::int8_condensed_linear`` and its exact pure-torch reference.

``int8_condensed_linear(x2d, weight, indices, weight_sum, weight_scale, rows, bias, layout, out_features,
input_scale, input_zero) -> y (B, out)`` computes, with ``q`` the activations quantized to u8 per row,

    y[b, rows[a]] = float(sum_j weight[a, j] * q[b, indices[a, j]] - zero[b] * weight_sum[a])
                    * (scale[b] * weight_scale[a]) + bias[rows[a]]

and ``bias`` (or 0) at the other outputs. ``weight (A, kp)`` is int8 in ``[-127, 127]`` with the fan-in
padded to a multiple of `INT8_PAD` by zero weights; ``q = clamp(round(x / scale) + zero, 0, 255)``
with ``(scale, zero)`` per row from its range (dynamic: `dynamic_input_quantization`) or one
calibrated pair (``input_scale``, ``input_zero``). ``layout`` (`window_layout`; may be empty) lets
the AVX-512 (VBMI + VNNI) and AVX2 variants skip the gathers; it changes the order of the integer sums only. The
C++ kernels (``csrc/int8.h``, ``csrc/int8_window.h``) and `int8_linear_reference` do the same integer sums and
the same fp32 operations in the same order, so they agree bit for bit. Registered with
`torch.library.custom_op` (with a fake kernel), so ``torch.compile(fullgraph=True)`` and ``torch.export`` see
one node. Inference only (no autograd).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from lightning_srigl.kernels import fakes
from lightning_srigl.kernels.cpu.loader import load_extension

OP_NAME = "lightning_srigl::int8_condensed_linear"
# Fan-in padding of the int8 layout (one AVX-512 VNNI step) and the largest fan-in whose int32 sums
# cannot overflow (|w * (q - zero)| <= 127 * 255): csrc/int8.h's kInt8Pad and kInt8MaxFanIn.
INT8_PAD = 64
INT8_MAX_FAN_IN = 65536

__all__ = [
    "INT8_MAX_FAN_IN",
    "INT8_PAD",
    "OP_NAME",
    "dynamic_input_quantization",
    "int8_condensed_linear",
    "int8_linear_reference",
    "quantize_input",
    "window_layout",
]


def dynamic_input_quantization(x2d: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row ``(scale (B,) fp32, zero (B,) int32)`` of ``x2d (B, in)`` for u8 activations.

    ``scale = (max(x, 0) - min(x, 0)) / 255`` (1 for an all-zero row), ``zero = clamp(round(-min(x, 0) /
    scale), 0, 255)``. A row holding a NaN or inf, or whose range exceeds fp32, gets a non-finite scale.
    """
    lo = x2d.amin(dim=1).clamp(max=0) if x2d.shape[1] else x2d.new_zeros(x2d.shape[0])
    hi = x2d.amax(dim=1).clamp(min=0) if x2d.shape[1] else x2d.new_zeros(x2d.shape[0])
    scale = (hi - lo) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    finite = torch.isfinite(scale)
    zero = torch.round(-lo / torch.where(finite, scale, torch.ones_like(scale))).clamp(0, 255)
    return scale, torch.where(finite, zero, torch.zeros_like(zero)).to(torch.int32)


def quantize_input(x2d: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """``clamp(round(x / scale) + zero, 0, 255)`` as int32 ``(B, in)``; ``scale``, ``zero`` ``(B,)``; rows
    with a non-finite scale are 0."""
    finite = torch.isfinite(scale)[:, None]
    q = (torch.round(x2d / scale[:, None]) + zero[:, None].to(x2d.dtype)).clamp(0, 255)
    return torch.where(finite, q, torch.zeros_like(q)).to(torch.int32)


def int8_linear_reference(
    x2d: Tensor,
    weight: Tensor,
    indices: Tensor,
    weight_sum: Tensor,
    weight_scale: Tensor,
    rows: Tensor,
    bias: Tensor | None,
    out_features: int,
    input_scale: float | None = None,
    input_zero: int | None = None,
) -> Tensor:
    """The int32 reference of the kernels' arithmetic (module docstring): ``(B, in) -> (B, out)`` fp32.

    Exact integer sums in int64 (the kernels' int32 cannot overflow for fan-ins up to
    `INT8_MAX_FAN_IN`), then ``float(sum) * (scale * weight_scale)`` and ``+ bias`` as two fp32
    operations. Memory ``O(B * A * kp)``: for tests and devices without the kernels, not for speed.
    """
    scale, zero = dynamic_input_quantization(x2d)
    if input_scale is not None:
        finite = torch.isfinite(scale)
        scale = torch.where(finite, torch.full_like(scale, input_scale), scale)
        zero = torch.where(finite, torch.full_like(zero, int(cast(int, input_zero))), zero)
    q = quantize_input(x2d, scale, zero).long()
    sums = (q[:, indices.long()] * weight.long()).sum(-1) - zero.long()[:, None] * weight_sum.long()  # (B, A)
    product = sums.to(torch.float32) * (scale[:, None] * weight_scale[None, :])
    product = torch.where(torch.isfinite(scale)[:, None], product, torch.full_like(product, float("nan")))
    y = x2d.new_zeros(x2d.shape[0], out_features) if bias is None else bias.expand(x2d.shape[0], -1).clone()
    active = product + y[:, rows] if bias is not None else product
    y[:, rows] = active
    return y


def _check(x2d: Tensor, weight: Tensor, indices: Tensor, out_features: int) -> None:
    """Raise a ValueError that says how to fix malformed inputs (the kernels check the rest)."""
    if x2d.dim() != 2 or x2d.dtype != torch.float32:
        raise ValueError(f"int8_condensed_linear expects fp32 x2d (B, in); got {x2d.dtype} {tuple(x2d.shape)}")
    if weight.dim() != 2 or indices.shape != weight.shape or weight.shape[0] > out_features:
        raise ValueError(
            f"weight (A, kp) and indices must share a shape with A <= out_features={out_features}; got "
            f"{tuple(weight.shape)} and {tuple(indices.shape)}"
        )


@torch.library.custom_op(OP_NAME, mutates_args=())
def int8_condensed_linear(
    x2d: Tensor,
    weight: Tensor,
    indices: Tensor,
    weight_sum: Tensor,
    weight_scale: Tensor,
    rows: Tensor,
    bias: Tensor | None,
    layout: Tensor | None,
    out_features: int,
    input_scale: float | None,
    input_zero: int | None,
) -> Tensor:
    """``(B, in) -> (B, out)`` fp32; see the module docstring. CPU: the C++ variant, else the reference."""
    _check(x2d, weight, indices, out_features)
    kernel = load_extension() if x2d.device.type == "cpu" else None
    if kernel is None:
        return int8_linear_reference(
            x2d, weight, indices, weight_sum, weight_scale, rows, bias, out_features, input_scale, input_zero
        )
    return kernel.int8_condensed_linear(
        x2d.contiguous(), weight, indices, weight_sum, weight_scale, rows, bias, layout, out_features, input_scale,
        input_zero, 0,
    )  # fmt: skip


def window_layout(weight: Tensor, indices: Tensor, in_features: int) -> Tensor:
    """The gather-free kernel's layout of ``weight (A, kp)`` int8 and ``indices (A, kp)`` (``csrc/int8_window.h``:
    about 2 bytes per non-zero weight), or an empty uint8 tensor where the loaded variant or the CPU has no
    such kernel (the AVX-512 variant on a CPU with VBMI and VNNI, and the AVX2 variant, have one), for non-CPU
    tensors and without the C++ kernels."""
    kernel = load_extension() if weight.device.type == "cpu" else None
    if kernel is None or weight.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=weight.device)
    return kernel.int8_window_layout(weight, indices, in_features)


@int8_condensed_linear.register_fake
def _int8_condensed_linear_fake(
    x2d: Tensor,
    weight: Tensor,
    indices: Tensor,
    weight_sum: Tensor,
    weight_scale: Tensor,
    rows: Tensor,
    bias: Tensor | None,
    layout: Tensor | None,
    out_features: int,
    input_scale: float | None,
    input_zero: int | None,
) -> Tensor:
    _check(x2d, weight, indices, out_features)
    return fakes.int8_condensed_linear(
        x2d, weight, indices, weight_sum, weight_scale, rows, bias, layout, out_features, input_scale, input_zero
    )
