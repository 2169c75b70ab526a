"""The product ``go^T x`` evaluated only at a bool mask's positions, zero elsewhere.

For a linear layer ``y = x W^T`` with a masked weight this is the weight's gradient, ``dL/dW =
go^T x`` (``go = dL/dy``), computed at the active positions only: the dense product's flops times the
density. The kernel is ``csrc/sampled.h``, compiled with the condensed kernels (one library per
instruction set, see `loader`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_srigl.kernels.cpu.loader import load_extension

__all__ = ["SampledLayout", "sampled_product", "sampled_product_available"]


@dataclass(frozen=True, eq=False)
class SampledLayout:
    """A 2-D bool mask's positions in compressed-row form, the kernel's input.

    Attributes:
        row_ptr: ``(out + 1,)`` int64; row ``i``'s positions are ``cols[row_ptr[i]:row_ptr[i + 1]]``.
        cols: ``(nnz,)`` int32 column of each position, ascending within a row.
        shape: ``(out, in)``, the mask's shape.
    """

    row_ptr: Tensor
    cols: Tensor
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        """Check what the kernel relies on (it writes ``grad[i, cols[p]]`` unchecked), once per layout."""
        out, inp = self.shape
        row_ptr, cols = self.row_ptr, self.cols
        if row_ptr.dtype != torch.int64 or row_ptr.shape != (out + 1,) or cols.dtype != torch.int32 or cols.dim() != 1:
            raise ValueError(
                f"SampledLayout of shape {self.shape} needs row_ptr int64 ({out + 1},) and cols int32 (nnz,); "
                f"got {row_ptr.dtype} {tuple(row_ptr.shape)} and {cols.dtype} {tuple(cols.shape)}"
            )
        if (
            row_ptr.device.type != "cpu"
            or cols.device.type != "cpu"
            or not (row_ptr.is_contiguous() and cols.is_contiguous())
        ):
            raise ValueError("SampledLayout: row_ptr and cols must be contiguous CPU tensors")
        if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != cols.numel() or bool((row_ptr.diff() < 0).any()):
            raise ValueError(f"SampledLayout: row_ptr must rise from 0 to nnz = {cols.numel()}")
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= inp):
            raise ValueError(f"SampledLayout: every column must lie in [0, {inp})")
        rows = torch.repeat_interleave(torch.arange(out), row_ptr.diff())
        if cols.numel() > 1 and not bool(((rows * inp + cols).diff() > 0).all()):
            raise ValueError("SampledLayout: the columns of a row must strictly ascend")

    @classmethod
    def from_mask(cls, mask: Tensor) -> SampledLayout:
        """The layout of ``mask``: ``BoolTensor(out, in)`` on the CPU."""
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"SampledLayout needs a 2-D bool mask, got {mask.dtype} {tuple(mask.shape)}")
        if mask.shape[1] >= 2**31:
            raise ValueError(f"SampledLayout: at most 2**31 - 1 columns, got {mask.shape[1]}")
        mask = mask.cpu()
        row_ptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(mask.sum(dim=1, dtype=torch.int64), dim=0, out=row_ptr[1:])
        cols = mask.nonzero()[:, 1].to(torch.int32).contiguous()
        return cls(row_ptr, cols, (int(mask.shape[0]), int(mask.shape[1])))


def sampled_product_available() -> bool:
    """Whether the C++ kernel is loaded or can be (it is built with the package's CPU kernels)."""
    return load_extension() is not None


def sampled_product(go: Tensor, x: Tensor, layout: SampledLayout) -> Tensor:
    """``go^T x`` at ``layout``'s positions, ``+0`` elsewhere.

    Args:
        go: ``(N, out)`` fp32 on the CPU.
        x: ``(N, in)`` fp32 on the CPU.
        layout: the positions, `SampledLayout.from_mask` of an ``(out, in)`` mask.

    Returns:
        ``(out, in)`` fp32: ``sum_n go[n, i] * x[n, c]`` where the mask is True, ``+0`` where it is False.

    Raises:
        RuntimeError: the C++ kernels are not available (see `sampled_product_available`).
        ValueError: shapes that do not fit ``layout``.
    """
    kernel = load_extension()
    if kernel is None:
        raise RuntimeError(
            "sampled_product needs the C++ CPU kernels; reinstall with `pip install --no-build-isolation .`"
        )
    if go.dim() != 2 or x.dim() != 2 or go.shape[0] != x.shape[0] or (go.shape[1], x.shape[1]) != layout.shape:
        raise ValueError(
            f"sampled_product: go {tuple(go.shape)} and x {tuple(x.shape)} do not fit a layout of shape {layout.shape}"
        )
    return kernel.sampled_product(go.contiguous(), x.contiguous(), layout.row_ptr, layout.cols)
