"""Triton kernel for the condensed convolution on GPUs (the same scheme as the CPU kernel, ``csrc/conv.h``).

The input is rearranged into stride phase planes (``(N, sample)`` floats: plane ``(py, px)`` of channel
``c`` holds ``x_padded[c, py::sh, px::sw]``), so that tap ``(c, ky, kx)`` of grid point
``q = oy * Wq + ox`` is element ``offsets[a, j] + q`` of its sample. One program computes a
``(BLOCK_N filters x BLOCK_Q grid points)`` tile of one sample: for each of the ``k`` taps it loads one
weight and one offset per filter and a ``(BLOCK_N, BLOCK_Q)`` block of activations, each row a
contiguous (coalesced) run; it accumulates in fp32 on CUDA cores and stores the points with
``ox < Wo`` to output channel ``rows[a]``. Channels without an active filter hold their bias.

Tested under the Triton interpreter (``TRITON_INTERPRET=1``) on CPU tensors with one fixed tile;
on a GPU the tiles are autotuned; ``scripts/gpu_check.sh`` runs the tests and the sweep on a GPU. GPU speed is
unmeasured in this release (docs/benchmarks.md, "GPU").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError as err:  # pragma: no cover - exercised only where triton is missing
    raise ImportError(
        "lightning_srigl's GPU convolution kernel needs Triton, an optional dependency. "
        "Install it with: pip install lightning-srigl[gpu]"
    ) from err

__all__ = ["condensed_conv2d_triton", "phase_planes", "tap_offsets"]

_INTERPRET_TILE = {"BLOCK_N": 16, "BLOCK_Q": 16}
_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_Q": q}, num_warps=w)
    for n, q, w in [(16, 64, 4), (32, 64, 4), (32, 128, 4), (64, 64, 4), (64, 128, 8), (16, 256, 4)]
]


@triton.jit
def _conv_kernel(
    buf_ptr, values_ptr, offsets_ptr, rows_ptr, bias_ptr, y_ptr,
    A, K, Q, Wq, Wo, HWo, sample, stride_yn, stride_va, stride_vk, stride_oa, stride_ok,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """Program (filter block, grid block, sample n): y[n, rows[filter block], grid block]."""
    pid_a = tl.program_id(0)
    pid_q = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_a = pid_a * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_a = offs_a < A
    mask_q = offs_q < Q
    mask = mask_a[:, None] & mask_q[None, :]
    base = buf_ptr + n * sample
    acc = tl.zeros((BLOCK_N, BLOCK_Q), dtype=tl.float32)
    for j in range(0, K):
        w = tl.load(values_ptr + offs_a * stride_va + j * stride_vk, mask=mask_a, other=0.0)
        off = tl.load(offsets_ptr + offs_a * stride_oa + j * stride_ok, mask=mask_a, other=0)
        xv = tl.load(base + off[:, None] + offs_q[None, :], mask=mask, other=0.0)
        acc += w.to(tl.float32)[:, None] * xv.to(tl.float32)
    rows = tl.load(rows_ptr + offs_a, mask=mask_a, other=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=mask_a, other=0.0).to(tl.float32)[:, None]
    oy = offs_q // Wq
    ox = offs_q % Wq
    valid = mask & (ox < Wo)[None, :]
    dst = y_ptr + n * stride_yn + rows[:, None] * HWo + (oy * Wo + ox)[None, :]
    tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=valid)


_INTERPRET = isinstance(_conv_kernel, InterpretedFunction)
_KERNEL = _conv_kernel if _INTERPRET else triton.autotune(_CONFIGS, key=["A", "K", "Q"])(_conv_kernel)


def _slots(kernel_size: list[int], stride: list[int], dilation: list[int]) -> dict[tuple[int, int], int]:
    """The phase planes some tap reads, ``(py, px) -> plane index``, in first-use order."""
    slots: dict[tuple[int, int], int] = {}
    for ky in range(kernel_size[0]):
        for kx in range(kernel_size[1]):
            slots.setdefault(((ky * dilation[0]) % stride[0], (kx * dilation[1]) % stride[1]), len(slots))
    return slots


def tap_offsets(
    channels: int,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    plane_shape: tuple[int, int],
    device: torch.device,
) -> Tensor:
    """``(C * kh * kw,)`` int64: the offset of each tap ``(c, ky, kx)`` in a sample of `phase_planes`."""
    (kh, kw), (hq, wq) = kernel_size, plane_shape
    slots = _slots(kernel_size, stride, dilation)
    ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
    ry, rx = (ky * dilation[0]).flatten(), (kx * dilation[1]).flatten()
    slot = torch.tensor([slots[(int(a) % stride[0], int(b) % stride[1])] for a, b in zip(ry, rx)])
    c = torch.arange(channels)[:, None]
    offsets = ((c * len(slots) + slot) * hq + ry // stride[0]) * wq + rx // stride[1]
    return offsets.flatten().to(device)


def phase_planes(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], slack: int
) -> tuple[Tensor, tuple[int, int]]:
    """``x (N, C, H, W)`` zero-padded and split into the phase planes its taps read.

    Returns:
        ``(N, C * P * Hq * Wq + slack)`` (plane ``p`` of channel ``c`` at ``(c * P + p) * Hq * Wq``; the
        trailing ``slack`` zeros let grid points past the last plane be read), and ``(Hq, Wq)``.
    """
    n, c = x.shape[:2]
    padded = F.pad(x, [padding[1], padding[1], padding[0], padding[0]])
    hq, wq = math.ceil(padded.shape[2] / stride[0]), math.ceil(padded.shape[3] / stride[1])
    slots = _slots(kernel_size, stride, dilation)
    planes = x.new_zeros(n, c, len(slots), hq, wq)
    for (py, px), s in slots.items():
        sub = padded[:, :, py :: stride[0], px :: stride[1]]
        planes[:, :, s, : sub.shape[2], : sub.shape[3]] = sub
    flat = planes.view(n, -1)
    return (torch.cat([flat, flat.new_zeros(n, slack)], dim=1) if slack else flat), (hq, wq)


def condensed_conv2d_triton(
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
) -> Tensor:
    """Condensed convolution ``(N, C, H, W) -> (N, out, Ho, Wo)`` (arguments as for
    ``lightning_srigl::condensed_conv2d``; ``groups`` is implied by the taps), fp32 / fp16 / bf16,
    accumulated in fp32."""
    if not (x.is_cuda or (_INTERPRET and x.device.type == "cpu")):
        raise ValueError(
            f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {x.device}"
        )
    n, c, h, w = x.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"the padded input {(h, w)} is smaller than the dilated kernel {tuple(kernel_size)}")
    if bias is not None and values.shape[0] < out_channels:
        y = bias.to(x.dtype).view(1, -1, 1, 1).expand(n, out_channels, ho, wo).contiguous()
    elif values.shape[0] < out_channels:
        y = x.new_zeros(n, out_channels, ho, wo)
    else:
        y = x.new_empty(n, out_channels, ho, wo)
    n_active, fan_in = values.shape
    if n_active == 0 or y.numel() == 0:
        return y
    plane_shape = _plane_shape(h, w, stride, padding)
    table = tap_offsets(c, kernel_size, stride, dilation, plane_shape, x.device)
    offsets = table[indices.long()]
    grid_points = ho * plane_shape[1]
    used = c * len(_slots(kernel_size, stride, dilation)) * plane_shape[0] * plane_shape[1]
    slack = max(0, int(offsets.max()) + grid_points - used)
    buf, _ = phase_planes(x.contiguous(), kernel_size, stride, padding, dilation, slack)
    if buf.shape[1] >= 2**31:
        raise ValueError("one sample's phase planes exceed 2^31 elements; split the image")
    offsets = offsets.to(torch.int32).t().contiguous().t()  # (k, A) storage: j-th taps of a filter block adjacent
    values_t = values.t().contiguous().t()
    meta = _INTERPRET_TILE if _INTERPRET else {}

    def grid(meta: dict[str, int]) -> tuple[int, int, int]:
        return triton.cdiv(n_active, meta["BLOCK_N"]), triton.cdiv(grid_points, meta["BLOCK_Q"]), n

    _KERNEL[grid](
        buf, values_t, offsets, rows, bias if bias is not None else values_t, y,
        n_active, fan_in, grid_points, plane_shape[1], wo, ho * wo, buf.shape[1], y.stride(0),
        *values_t.stride(), *offsets.stride(), HAS_BIAS=bias is not None, **meta,
    )  # fmt: skip
    return y


def _plane_shape(h: int, w: int, stride: list[int], padding: list[int]) -> tuple[int, int]:
    return math.ceil((h + 2 * padding[0]) / stride[0]), math.ceil((w + 2 * padding[1]) / stride[1])
