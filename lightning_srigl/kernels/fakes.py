"""Fake (shape-only) kernels: each op's output for inputs that carry shapes and dtypes but no data, so
``torch.compile``, ``torch.export`` and ``FakeTensorMode`` trace calls through the ops.

One function per op. The Python custom ops (``torch.ops.lightning_srigl.*``) register theirs where they
are defined; `register_cpp_fakes` gives each C++ variant's ops (``torch.ops.lightning_srigl_<variant>``,
`CPP_FAKES`) theirs when the variant loads. Outputs whose size the data decides (the batch-1 layout)
get an unbacked size from ``torch.library.get_ctx()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CPP_FAKES",
    "attention",
    "batch1_forward",
    "batch1_layout",
    "condensed_conv2d",
    "condensed_linear",
    "condensed_linear_rows",
    "conv_output_size",
    "csr_linear",
    "int8_condensed_linear",
    "int8_window_layout",
    "register_cpp_fakes",
    "sampled_product",
]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of one spatial axis (as ``nn.Conv2d`` computes it); works on symbolic sizes."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def condensed_linear(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """``x2d (B, in)``, ``values (A, k)`` -> ``(B, A)``."""
    return x2d.new_empty((x2d.shape[0], values.shape[0]))


def condensed_linear_rows(
    x2d: Tensor, values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None, out_features: int
) -> Tensor:
    """``x2d (B, in)`` -> ``(B, out_features)``."""
    return x2d.new_empty((x2d.shape[0], out_features))


def condensed_conv2d(
    x: Tensor,
    values: Tensor,
    indices: Tensor,
    rows: Tensor,
    bias: Tensor | None,
    out_channels: int,
    groups: int,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    block: int = 0,
    relu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``x (N, C, H, W)`` -> ``(N, out_channels, Ho, Wo)`` (``block`` is the C++ op's test-only knob)."""
    sizes = [conv_output_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2)]
    return x.new_empty((x.shape[0], out_channels, *sizes))


def csr_linear(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    """``x2d (B, in)``, ``crow_indices (out + 1,)`` -> ``(B, out)``."""
    return x2d.new_empty((x2d.shape[0], crow_indices.shape[0] - 1))


def sampled_product(go: Tensor, x: Tensor, row_ptr: Tensor, cols: Tensor) -> Tensor:
    """``go (N, out)``, ``x (N, in)`` -> ``(out, in)``."""
    return go.new_empty((go.shape[1], x.shape[1]))


def batch1_layout(values: Tensor, indices: Tensor, rows: Tensor, in_features: int, out_features: int) -> Tensor:
    """A uint8 layout whose length the weights decide (an unbacked size)."""
    return values.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.uint8)


def batch1_forward(x: Tensor, layout: Tensor, bias: Tensor | None) -> Tensor:
    """``x (1, in)`` -> ``(1, out)``; ``out`` is the bias's length, else read from the layout (unbacked)."""
    out = bias.shape[0] if bias is not None else torch.library.get_ctx().new_dynamic_size()
    return x.new_empty((1, out))


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
    mode: int = 0,
) -> Tensor:
    """``x2d (B, in)`` -> ``(B, out_features)`` fp32 (``mode`` is the C++ op's test-only knob)."""
    return x2d.new_empty((x2d.shape[0], out_features))


def int8_window_layout(weight: Tensor, indices: Tensor, in_features: int) -> Tensor:
    """A uint8 layout whose length the weights decide (an unbacked size; 0 where the CPU has no window kernel)."""
    return weight.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.uint8)


def attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    """``query (B, H, Lq, D)`` -> ``(B, H, Lq, D)`` with the strides of a ``(B, Lq, H, D)`` tensor."""
    batch, heads, length, dim = query.shape
    return query.new_empty((batch, length, heads, dim)).transpose(1, 2)


# The C++ ops of csrc/ (schemas in ops.cpp; all but batch1_supported and int8_path, which take no
# tensor) and their fakes.
CPP_FAKES: dict[str, Callable[..., Tensor]] = {
    "condensed_linear": condensed_linear,
    "condensed_linear_rows": condensed_linear_rows,
    "batch1_layout": batch1_layout,
    "batch1_forward": batch1_forward,
    "condensed_conv2d": condensed_conv2d,
    "sampled_product": sampled_product,
    "int8_condensed_linear": int8_condensed_linear,
    "int8_window_layout": int8_window_layout,
    "attention": attention,
}


def register_cpp_fakes(namespace: str) -> None:
    """Register `CPP_FAKES` for the ops of ``torch.ops.<namespace>`` (a loaded variant), once."""
    for name, fake in CPP_FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)
