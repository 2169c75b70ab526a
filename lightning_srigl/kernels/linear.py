"""The torch custom op ``lightning_srigl::condensed_linear`` and its autograd formula.

``condensed_linear(x2d, values, indices, bias_active) -> y (B, A)`` with
``y[b, a] = bias_active[a] + sum_j values[a, j] * x2d[b, indices[a, j]]``.

Registered with `torch.library.custom_op`, so ``torch.compile(fullgraph=True)`` and
``torch.export`` treat it as one opaque node (shapes come from the fake implementation).
Device dispatch: CPU -> C++ extension (pure-torch fallback), CUDA -> Triton
([`condensed_linear_triton`][lightning_srigl.kernels.triton.linear.condensed_linear_triton], imported lazily), any other
device -> the pure-torch reference.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from lightning_srigl.kernels import fakes
from lightning_srigl.kernels.cpu.loader import (
    condensed_linear_cpu,
    condensed_linear_torch,
)

OP_NAME = "lightning_srigl::condensed_linear"


def _check(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> None:
    """Raise a ValueError that says how to fix malformed inputs."""
    if x2d.dim() != 2 or values.dim() != 2:
        raise ValueError(f"condensed_linear expects x2d (B, in) and values (A, k); got {x2d.shape} and {values.shape}")
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} must have the shape of values {tuple(values.shape)}")
    if x2d.dtype != values.dtype:
        raise ValueError(
            f"input dtype {x2d.dtype} differs from the layer's dtype {values.dtype}; "
            "cast the input or call module.to(dtype)"
        )
    if bias_active is not None and bias_active.shape != values.shape[:1]:
        raise ValueError(f"bias_active must be ({values.shape[0]},), got {tuple(bias_active.shape)}")


@torch.library.custom_op(OP_NAME, mutates_args=())
def condensed_linear(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """Condensed product ``(B, in) -> (B, A)``; see the module docstring. Default (non-CUDA) kernel."""
    _check(x2d, values, indices, bias_active)
    if x2d.device.type == "cpu":
        return condensed_linear_cpu(x2d.contiguous(), values.contiguous(), indices.contiguous(), bias_active)
    return condensed_linear_torch(x2d, values, indices, bias_active)


@functools.cache
def triton_kernels() -> ModuleType | None:
    """The Triton kernel module ([`linear`][lightning_srigl.kernels.triton.linear]), or ``None`` (after one
    warning) when Triton is not installed. Imported on first use, so CPU-only installs never load Triton."""
    try:
        from lightning_srigl.kernels.triton import linear as triton_linear
    except ImportError as error:
        warnings.warn(f"{error} Using the exact (slower) PyTorch gather for condensed layers on CUDA.", stacklevel=3)
        return None
    return triton_linear


@condensed_linear.register_kernel("cuda")
def _condensed_linear_cuda(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """CUDA dispatch point: the Triton kernel, or the PyTorch gather where Triton is missing."""
    _check(x2d, values, indices, bias_active)
    kernels = triton_kernels()
    kernel = kernels.condensed_linear_triton if kernels is not None else condensed_linear_torch
    return kernel(x2d, values, indices, bias_active)


@condensed_linear.register_fake
def _condensed_linear_fake(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    _check(x2d, values, indices, bias_active)
    return fakes.condensed_linear(x2d, values, indices, bias_active)


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, Tensor | None], output: Tensor) -> None:
    x2d, values, indices, bias_active = inputs
    ctx.save_for_backward(x2d, values, indices)
    ctx.in_features = x2d.shape[1]
    ctx.has_bias = bias_active is not None


def product_grads(
    ctx: Any, grad: Tensor, x2d: Tensor, values: Tensor, indices: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx, dvalues)`` of the condensed product for ``grad (B, A)``, each None unless ``ctx.needs_input_grad``
    asks for it (positions 0 and 1): one dense scatter of the weights, ``dx = g @ W``, ``dvalues = (gᵀ x)[a,
    indices[a, j]]``; the dense ``(A, in)`` temporaries are the size of the original weight."""
    idx = indices.long()
    grad_x = grad_values = None
    if ctx.needs_input_grad[0]:
        dense = values.new_zeros(values.shape[0], ctx.in_features).scatter_(1, idx, values)
        grad_x = grad @ dense
    if ctx.needs_input_grad[1]:
        grad_values = (grad.transpose(0, 1) @ x2d).gather(1, idx)
    return grad_x, grad_values


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, Tensor | None]:
    """`product_grads`, and ``grad.sum(0)`` for the bias."""
    x2d, values, indices = ctx.saved_tensors
    grad_x, grad_values = product_grads(ctx, grad, x2d, values, indices)
    grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return grad_x, grad_values, None, grad_bias


condensed_linear.register_autograd(_backward, setup_context=_setup_context)
