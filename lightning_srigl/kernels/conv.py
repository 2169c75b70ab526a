"""The torch custom op ``lightning_srigl::condensed_conv2d`` and the exact pure-torch reference.

``condensed_conv2d(x, values, indices, rows, bias, out_channels, groups, kernel_size, stride, padding,
dilation, relu=False, residual=None) -> y (N, out, Ho, Wo)`` is the convolution of ``x (N, C, H, W)`` with the
dense weight whose row ``rows[a]`` holds ``values[a, j]`` at tap ``indices[a, j]`` (taps over all ``C`` channels,
see [`conv`][lightning_srigl.condensed.layers.conv]); channels without an active row output their bias. A
``residual`` of the output's shape is added (a ResNet block's shortcut, which the compiled graph fuses in:
[`compiled`][lightning_srigl.kernels.compiled]); with ``relu`` the output is then ``max(0, y)``. Both happen in
the CPU kernel's epilogue (one pass over the output). Registered
with `torch.library.custom_op` so ``torch.compile`` and ``torch.export`` (with dynamic batch and
image sizes) see one node. Device dispatch: CPU -> the C++ variant (fp32) or the reference, CUDA -> the
Triton kernel ([`conv`][lightning_srigl.kernels.triton.conv], imported lazily) or the reference.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_srigl.kernels import fakes
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.fakes import conv_output_size

OP_NAME = "lightning_srigl::condensed_conv2d"

__all__ = ["OP_NAME", "check_padding", "condensed_conv2d", "conv2d_reference", "conv_output_size", "im2col_rows",
           "pad_input", "triton_conv"]  # fmt: skip


def conv2d_reference(
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
    relu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``F.conv2d`` (plus ``residual``, then ``relu``) with the dense weight rebuilt from ``values``: exact, and
    differentiable in ``x`` and ``values``. Shapes as for `condensed_conv2d`."""
    kh, kw = kernel_size
    per_group = x.shape[1] // groups * kh * kw
    group = rows // (out_channels // groups)
    local = indices.long() - (group * per_group)[:, None]
    filters = values.new_zeros(values.shape[0], per_group).scatter(1, local, values)
    weight = values.new_zeros(out_channels, per_group).index_copy(0, rows, filters)
    weight = weight.view(out_channels, x.shape[1] // groups, kh, kw)
    y = F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)
    y = y if residual is None else y + residual
    return F.relu(y) if relu else y


@torch.library.custom_op(OP_NAME, mutates_args=())
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
    relu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """Condensed convolution ``(N, C, H, W) -> (N, out, Ho, Wo)``; see the module docstring. CPU kernel."""
    kernel = load_extension() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if kernel is None:
        return conv2d_reference(
            x, values, indices, rows, bias, out_channels, groups, kernel_size, stride, padding, dilation, relu, residual
        )
    return kernel.condensed_conv2d(
        x.contiguous(), values.contiguous(), indices.contiguous(), rows.contiguous(), bias, out_channels, groups,
        kernel_size, stride, padding, dilation, 0, relu, None if residual is None else residual.contiguous(),
    )  # fmt: skip


@functools.cache
def triton_conv() -> ModuleType | None:
    """[`conv`][lightning_srigl.kernels.triton.conv], or ``None`` (after one warning) without Triton."""
    try:
        from lightning_srigl.kernels.triton import conv as module
    except ImportError as error:
        warnings.warn(f"{error} Using the exact PyTorch convolution for condensed convolutions.", stacklevel=3)
        return None
    return module


@condensed_conv2d.register_kernel("cuda")
def _condensed_conv2d_cuda(
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
    relu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """CUDA dispatch point: the Triton kernel (then ``residual`` and ``relu`` as further passes), or the
    reference where Triton is missing."""
    args = (x, values, indices, rows, bias, out_channels, groups, kernel_size, stride, padding, dilation)
    module = triton_conv()
    if module is None:
        return conv2d_reference(*args, relu, residual)
    y: Tensor = module.condensed_conv2d_triton(*args)
    y = y if residual is None else y.add_(residual)
    return y.relu_() if relu else y


condensed_conv2d.register_fake(fakes.condensed_conv2d)


def pad_input(
    x: Tensor,
    padding: tuple[int, int] | str,
    padding_mode: str,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, tuple[int, int]]:
    """``x (N, C, H, W)`` padded ahead of the kernel where the kernel cannot pad (non-zero modes, asymmetric
    ``"same"``), and the symmetric zero padding left for the kernel (``nn.Conv2d``'s arguments)."""
    if padding == "valid":
        return x, (0, 0)
    if isinstance(padding, str):  # "same"
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        if padding_mode == "zeros" and all(t % 2 == 0 for t in totals):
            return x, (totals[0] // 2, totals[1] // 2)
        pads = [totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2]
    elif padding_mode == "zeros":
        return x, padding
    else:
        pads = [padding[1], padding[1], padding[0], padding[0]]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(x, pads, mode=mode), (0, 0)


def im2col_rows(
    x: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, list[int]]:
    """``x (N, C, H, W)`` -> its im2col rows ``(N * Ho * Wo, C * kh * kw)`` (contiguous; a row is one output
    position's taps ``c * kh * kw + ky * kw + kx``, ``F.unfold``'s order) and ``[Ho, Wo]``."""
    sizes = [
        conv_output_size(s, k, st, p, d) for s, k, st, p, d in zip(x.shape[2:], kernel_size, stride, padding, dilation)
    ]
    cols = F.unfold(x, kernel_size, dilation, padding, stride)  # (N, C * kh * kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).contiguous(), sizes


def check_padding(padding: int | tuple[int, ...] | str, padding_mode: str) -> None:
    """Raise ``ValueError`` unless ``padding`` (ints, ``"valid"``, ``"same"``) and ``padding_mode`` are
    ``nn.Conv2d``'s."""
    if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        raise ValueError(f"padding_mode must be zeros, reflect, replicate or circular, got {padding_mode!r}")
    if isinstance(padding, str) and padding not in ("valid", "same"):
        raise ValueError(f"padding must be ints, 'valid' or 'same', got {padding!r}")
