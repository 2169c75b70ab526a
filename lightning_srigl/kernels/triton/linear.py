"""Triton kernels for the condensed (constant fan-in) linear product on GPUs.

The product is ``y[b, a] = bias[a] + sum_j values[a, j] * x[b, indices[a, j]]`` for ``A`` active
neurons of fan-in ``k``. Two regimes, as on the CPU (``csrc/gather_dot.h``, ``csrc/panel.h``):

* **small batch** (``B <= SMALL_BATCH``), memory bound, GEMV-like "gather-dot": one program per
  block of ``BLOCK_N`` neurons and one batch row; each step loads a ``(BLOCK_K, BLOCK_N)`` tile of
  values/indices and gathers ``x[b, indices]`` from the (cache-resident) input row.
* **large batch**: one program per ``(BLOCK_B batch rows x BLOCK_N neurons)`` tile, reading ``x``
  in ``(in, B)`` layout so that every gathered ``x.T[indices[a, j], b0:b0 + BLOCK_B]`` is one
  contiguous segment (a coalesced load). The ``x.t().contiguous()`` transpose happens inside
  `condensed_linear_triton` and therefore counts in any timing of it.

Both accumulate in fp32 on CUDA cores (every neuron has its own index set, so there is no shared K
dimension for tensor cores) and accept fp32 / fp16 / bf16. Values and indices are read through
their strides; both kernels were designed for the layout of `prepare_triton_layout`, ``(A, k)``
views over ``(k, A)`` storage, in which a warp reads the ``j``-th entries of consecutive neurons
contiguously (coalesced). ``CondensedLinear`` builds that layout once per set of buffers and passes
it on every call; any other strides give the same result, only slower.

Entry points: `condensed_linear_triton` validates its arguments and picks the regime;
`gather_gemv` and `gather_tiled` launch one kernel each on validated tensors and write
into a caller-provided ``(B, A)`` output of any strides. `gather_tiled` takes the input as any
strided ``(in, B)`` operand, so a caller with its own layout (e.g. a condensed convolution whose
"batch" is the output pixels) can launch it without the ``x.t().contiguous()`` copy.

Testing and status: the kernels are exercised on CPU tensors by the Triton interpreter
(``TRITON_INTERPRET=1``, read by Triton when this module is imported), which uses one fixed tile
configuration; on a GPU the tile sizes are autotuned; ``scripts/gpu_check.sh`` runs the tests and the
sweep on a GPU. GPU speed is unmeasured in this release (docs/benchmarks.md, "GPU").

Triton is an optional dependency: importing this module without it raises an ``ImportError`` that
says how to install it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    import triton.testing
    from triton.runtime.interpreter import InterpretedFunction
except ImportError as err:  # pragma: no cover - exercised only where triton is missing
    raise ImportError(
        "lightning_srigl's GPU kernel needs Triton, an optional dependency. "
        "Install it with: pip install lightning-srigl[gpu]"
    ) from err

__all__ = [
    "INTERPRETER",
    "SMALL_BATCH",
    "condensed_linear_triton",
    "gather_gemv",
    "gather_tiled",
    "prepare_triton_layout",
    "triton_supported",
]

SMALL_BATCH = 16
"""Batch sizes up to this use the gather-dot (GEMV-like) kernel, larger ones the tiled kernel."""

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_INT32 = 2**31 - 1

# The interpreter cannot benchmark, so it runs one fixed (small) tile configuration.
_INTERPRET_GEMV = {"BLOCK_N": 32, "BLOCK_K": 16}
_INTERPRET_TILED = {"BLOCK_N": 16, "BLOCK_B": 16}
_GEMV_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": kk}, num_warps=w)
    for n, kk, w in [(64, 16, 4), (128, 16, 4), (128, 32, 4), (256, 16, 8), (256, 32, 8)]
]
_TILED_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_B": b}, num_warps=w)
    for n, b, w in [(32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 32, 8), (128, 64, 8)]
]


@triton.jit
def _gather_gemv_kernel(
    x_ptr, values_ptr, indices_ptr, bias_ptr, y_ptr,
    A, K,
    stride_xb, stride_xi, stride_va, stride_vk, stride_ia, stride_ik, stride_yb, stride_ya,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Program (neuron block n, batch row b): y[b, n-block] for row-major x (B, in)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < A
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k[:, None] < K) & mask_n[None, :]
        w = tl.load(values_ptr + offs_n[None, :] * stride_va + offs_k[:, None] * stride_vk, mask=mask, other=0.0)
        idx = tl.load(indices_ptr + offs_n[None, :] * stride_ia + offs_k[:, None] * stride_ik, mask=mask, other=0)
        xg = tl.load(x_ptr + b * stride_xb + idx.to(tl.int32) * stride_xi, mask=mask, other=0.0)
        acc += w.to(tl.float32) * xg.to(tl.float32)
    out = tl.sum(acc, axis=0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * stride_yb + offs_n * stride_ya, out.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _gather_tiled_kernel(
    xt_ptr, values_ptr, indices_ptr, bias_ptr, y_ptr,
    A, K, B,
    stride_xti, stride_xtb, stride_va, stride_vk, stride_ia, stride_ik, stride_yb, stride_ya,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """Program (neuron block n, batch block b): y[b-block, n-block] for x.T (in, B), coalesced when B is contiguous."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_n = offs_n < A
    mask_bn = (offs_b[:, None] < B) & mask_n[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for j in range(0, K):
        w = tl.load(values_ptr + offs_n * stride_va + j * stride_vk, mask=mask_n, other=0.0)
        idx = tl.load(indices_ptr + offs_n * stride_ia + j * stride_ik, mask=mask_n, other=0)
        xg = tl.load(
            xt_ptr + idx.to(tl.int32)[None, :] * stride_xti + offs_b[:, None] * stride_xtb, mask=mask_bn, other=0.0
        )
        acc += w.to(tl.float32)[None, :] * xg.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_offsets = offs_b[:, None] * stride_yb + offs_n[None, :] * stride_ya
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask_bn)


def _fitting_configs(configs: list[triton.Config], named_args: dict[str, Any], **_: object) -> list[triton.Config]:
    """The configs whose tiles do not exceed the problem by more than the smallest tile does.

    A block wider than the next power of two of ``A`` (or ``B``) only adds masked-off lanes, so small
    layers are autotuned (and compiled) over one or two configs instead of all of them.
    """

    def fits(config: triton.Config, block: str, size: int) -> bool:
        smallest = min(c.kwargs[block] for c in configs)
        return bool(config.kwargs[block] <= max(smallest, triton.next_power_of_2(size)))

    kept = [c for c in configs if fits(c, "BLOCK_N", named_args["A"])]
    if "BLOCK_B" in configs[0].kwargs:
        kept = [c for c in kept if fits(c, "BLOCK_B", named_args["B"])]
    return kept


def _bench(kernel_call: Callable[[], object], quantiles: tuple[float, ...]) -> list[float]:
    """Autotuning timer: Triton's ``do_bench`` with a 5 ms warm-up and 25 ms of repeats (default 25 / 100)."""
    times: list[float] = triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)
    return times


def _autotuned(kernel: triton.JITFunction, configs: list[triton.Config], key: list[str]) -> triton.JITFunction:
    return triton.autotune(
        configs, key=key, prune_configs_by={"early_config_prune": _fitting_configs}, do_bench=_bench
    )(kernel)


# triton.jit builds interpreter functions when TRITON_INTERPRET=1 at import time; they cannot be autotuned.
INTERPRETER = isinstance(_gather_gemv_kernel, InterpretedFunction)
"""True when the kernels run in Triton's interpreter (CPU tensors), i.e. TRITON_INTERPRET=1 was set at import."""
_GEMV = _gather_gemv_kernel if INTERPRETER else _autotuned(_gather_gemv_kernel, _GEMV_CONFIGS, ["A", "K"])
_TILED = _gather_tiled_kernel if INTERPRETER else _autotuned(_gather_tiled_kernel, _TILED_CONFIGS, ["A", "K", "B"])


def prepare_triton_layout(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``values`` and ``indices`` as ``(A, k)`` views over ``(k, A)`` contiguous storage.

    The kernels read the ``j``-th entries of a block of consecutive neurons at once; with this
    layout those entries are adjacent in memory (coalesced). The result has the same shapes,
    dtypes and contents as the inputs, so it can replace them anywhere (cache it once per layer).
    No padding is needed: the kernels mask the tails of both dimensions.

    Args:
        values: ``(A, k)`` condensed weights.
        indices: ``(A, k)`` int16/int32 input column of each weight.
    """
    _check_condensed(values, indices)
    return values.t().contiguous().t(), indices.t().contiguous().t()


def triton_supported(x2d: Tensor, values: Tensor) -> tuple[bool, str]:
    """Whether the Triton kernels can run on these tensors, and if not, why.

    Supported: CUDA tensors (or CPU tensors when ``TRITON_INTERPRET=1`` was set before this module
    was imported) in fp32 / fp16 / bf16.
    """
    if not (x2d.is_cuda or (INTERPRETER and x2d.device.type == "cpu")):
        return False, (
            f"Triton kernels run on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1), got {x2d.device}"
        )
    for name, t in (("x", x2d), ("values", values)):
        if t.dtype not in SUPPORTED_DTYPES:
            return False, f"{name} has dtype {t.dtype}; the Triton kernels support {SUPPORTED_DTYPES}"
    return True, "supported"


def condensed_linear_triton(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """Condensed product ``y = x2d @ W_c.T + bias_active`` with the gathered weights ``W_c``.

    Args:
        x2d: ``(B, in)`` input.
        values: ``(A, k)`` condensed weights (any strides; see `prepare_triton_layout`).
        indices: ``(A, k)`` int16/int32 input column of each weight, in ``[0, in)``.
        bias_active: ``(A,)`` bias of the active neurons, or ``None``.

    Returns:
        ``(B, A)`` in ``torch.promote_types(x2d.dtype, values.dtype)``, accumulated in fp32.
        For ``B > SMALL_BATCH`` the input is first transposed to ``(in, B)`` (included here).

    Unsupported device or dtype (see `triton_supported`): warns and computes the same
    product exactly with PyTorch (scatter to a dense ``(A, in)`` weight, then ``F.linear``).
    """
    _check_condensed(values, indices)
    if x2d.dim() != 2:
        raise ValueError(f"x2d must be a 2-D (batch, in_features) tensor, got shape {tuple(x2d.shape)}")
    if x2d.device != values.device:
        raise ValueError(f"x2d is on {x2d.device} but values on {values.device}; move the input or the layer")
    if bias_active is not None and bias_active.shape != (values.shape[0],):
        raise ValueError(f"bias_active must have shape ({values.shape[0]},), got {tuple(bias_active.shape)}")
    ok, reason = triton_supported(x2d, values)
    if not ok:
        warnings.warn(f"{reason}; using the exact PyTorch fallback for the condensed product.", stacklevel=2)
        return _condensed_linear_torch(x2d, values, indices, bias_active)

    out_dtype = torch.promote_types(x2d.dtype, values.dtype)
    y = torch.empty(x2d.shape[0], values.shape[0], dtype=out_dtype, device=x2d.device)
    if y.numel() == 0:
        return y
    rows = _max_rows_per_launch(x2d.shape[1], values.shape[0])
    for start in range(0, x2d.shape[0], rows):
        x_chunk, y_chunk = x2d[start : start + rows], y[start : start + rows]
        if x_chunk.shape[0] <= SMALL_BATCH:
            gather_gemv(x_chunk, values, indices, bias_active, y_chunk)
        else:  # (in, B): every gathered input row becomes one contiguous batch segment
            gather_tiled(x_chunk.t().contiguous(), values, indices, bias_active, y_chunk)
    return y


def gather_gemv(x2d: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, y: Tensor) -> None:
    """Small-batch kernel: ``y[b, a] = bias[a] + sum_j values[a, j] * x2d[b, indices[a, j]]``.

    Launches one program per (block of neurons, batch row) on validated tensors (no checks here).

    Args:
        x2d: ``(B, in)``, any strides.
        values, indices: ``(A, k)``; coalesced in the layout of `prepare_triton_layout`.
        bias: ``(A,)`` or None.
        y: ``(B, A)`` output, any strides; offsets must fit in int32.
    """
    (batch, _), (n_active, fan_in) = x2d.shape, values.shape
    meta = _INTERPRET_GEMV if INTERPRETER else {}

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(n_active, meta["BLOCK_N"]), batch

    _GEMV[grid](
        x2d, values, indices, bias if bias is not None else values, y, n_active, fan_in,
        *x2d.stride(), *values.stride(), *indices.stride(), *y.stride(),
        HAS_BIAS=bias is not None, **meta,
    )  # fmt: skip


def gather_tiled(xt: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, y: Tensor) -> None:
    """Large-batch kernel: ``y[b, a] = bias[a] + sum_j values[a, j] * xt[indices[a, j], b]``.

    Launches one program per (block of neurons, block of batch columns) on validated tensors.

    Args:
        xt: the input as an ``(in, B)`` operand of any strides; the gathered loads are coalesced
            when ``xt.stride(1) == 1`` (e.g. ``x2d.t().contiguous()``).
        values, indices: ``(A, k)``; coalesced in the layout of `prepare_triton_layout`.
        bias: ``(A,)`` or None.
        y: ``(B, A)`` output, any strides (e.g. a transposed view writing ``(A, B)`` storage).
    """
    batch, (n_active, fan_in) = xt.shape[1], values.shape
    meta = _INTERPRET_TILED if INTERPRETER else {}

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(n_active, meta["BLOCK_N"]), triton.cdiv(batch, meta["BLOCK_B"])

    _TILED[grid](
        xt, values, indices, bias if bias is not None else values, y, n_active, fan_in, batch,
        *xt.stride(), *values.stride(), *indices.stride(), *y.stride(),
        HAS_BIAS=bias is not None, **meta,
    )  # fmt: skip


def _max_rows_per_launch(in_features: int, n_active: int) -> int:
    """Largest batch chunk whose input and output offsets fit the kernels' int32 arithmetic."""
    return max(1, _MAX_INT32 // max(in_features, n_active, 1))


def _condensed_linear_torch(x2d: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None) -> Tensor:
    """Exact PyTorch reference: scatter ``values`` into a dense ``(A, in)`` weight, then ``F.linear``."""
    dtype = torch.promote_types(x2d.dtype, values.dtype)
    dense = torch.zeros(values.shape[0], x2d.shape[1], dtype=dtype, device=values.device)
    dense.scatter_add_(1, indices.long(), values.to(dtype))
    return torch.nn.functional.linear(x2d.to(dtype), dense, None if bias is None else bias.to(dtype))


def _check_condensed(values: Tensor, indices: Tensor) -> None:
    if values.dim() != 2 or values.shape != indices.shape:
        raise ValueError(
            f"values and indices must both be (active_out, fan_in); got {tuple(values.shape)} and "
            f"{tuple(indices.shape)}"
        )
    if indices.dtype not in (torch.int16, torch.int32):
        raise ValueError(f"indices must be int16 or int32, got {indices.dtype}; convert with indices.to(torch.int32)")
