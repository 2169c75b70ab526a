"""The torch custom op ``lightning_srigl::condensed_linear_rows``: a condensed product written at its output columns.

``condensed_linear_rows(x2d, values, indices, rows, bias, out_features) -> y (B, out_features)`` with
``y[b, rows[a]] = bias[rows[a]] + sum_j values[a, j] * x2d[b, indices[a, j]]`` and ``y[b, r] = bias[r]`` (or 0)
for every column ``r`` not in ``rows`` (an ablated neuron). ``rows (A,)`` is strictly increasing, ``bias`` the
full ``(out_features,)`` bias. It is `condensed_linear` followed by the scatter into the full width
(`scatter_columns`), in one pass: on the CPU the C++ kernels store each output at its column,
so a compiled graph holds no ``(B, A)`` temporary and no ``index_add`` (which inductor turns into a scalar
loop). Other devices run the reference (`condensed_linear` and an ``index_add``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_srigl.kernels import fakes
from lightning_srigl.kernels.cpu.loader import condensed_linear_rows_cpu, scatter_columns
from lightning_srigl.kernels.linear import condensed_linear, product_grads

OP_NAME = "lightning_srigl::condensed_linear_rows"


def _check(values: Tensor, rows: Tensor, bias: Tensor | None, out_features: int) -> None:
    """Raise a ValueError that says how to fix malformed inputs (the product's own checks are `condensed_linear`'s)."""
    if rows.dim() != 1 or rows.shape[0] != values.shape[0] or rows.dtype != torch.int64:
        raise ValueError(f"rows must be int64 ({values.shape[0]},), one output column per row of values; got "
                         f"{rows.dtype} {tuple(rows.shape)}")  # fmt: skip
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"bias must be the full ({out_features},) bias, got {tuple(bias.shape)}")


@torch.library.custom_op(OP_NAME, mutates_args=())
def condensed_linear_rows(
    x2d: Tensor, values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None, out_features: int
) -> Tensor:
    """Condensed product ``(B, in) -> (B, out_features)`` at the columns ``rows``; see the module docstring."""
    _check(values, rows, bias, out_features)
    if x2d.device.type == "cpu":
        return condensed_linear_rows_cpu(x2d.contiguous(), values.contiguous(), indices.contiguous(), rows, bias,
                                         out_features)  # fmt: skip
    return scatter_columns(condensed_linear(x2d, values, indices, None), rows, bias, out_features)


@condensed_linear_rows.register_fake
def _fake(x2d: Tensor, values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    _check(values, rows, bias, out_features)
    return fakes.condensed_linear_rows(x2d, values, indices, rows, bias, out_features)


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, int], output: Tensor) -> None:
    x2d, values, indices, rows, bias, _ = inputs
    ctx.save_for_backward(x2d, values, indices, rows)
    ctx.in_features = x2d.shape[1]
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, Tensor | None, None]:
    """`product_grads` on the active columns ``grad[:, rows]``; the bias gets ``grad.sum(0)``."""
    x2d, values, indices, rows = ctx.saved_tensors
    grad_x, grad_values = product_grads(ctx, grad.index_select(1, rows), x2d, values, indices)
    grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
    return grad_x, grad_values, None, None, grad_bias, None


condensed_linear_rows.register_autograd(_backward, setup_context=_setup_context)
