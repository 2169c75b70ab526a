"""CPU kernel for the condensed product: the chosen C++ variant, and the pure-torch fallback.

`load_extension` returns the ops of the variant [`isa`][lightning_srigl.kernels.cpu.isa] picks
for this CPU (``LIGHTNING_SRIGL_CPU_ISA`` forces one), loaded by [`build`][lightning_srigl.kernels.cpu.build]
(the library built at install time, else a one-time JIT build). Where neither exists (no compiler),
`condensed_linear_cpu` falls back to `condensed_linear_torch` after one warning: it is
several times slower than a dense ``nn.Linear``, so ``accelerate()``, which times every candidate, keeps
dense layers then. ``LIGHTNING_SRIGL_DISABLE_CPP=1`` forces the fallback.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch
from torch import Tensor

from lightning_srigl.kernels.cpu.build import (
    CACHE_ENV,
    KernelOps,
    build_directory,
    load_variant,
)
from lightning_srigl.kernels.cpu.isa import (
    ISA_ENV,
    all_variants,
    host_variants,
    requested_variant,
)

__all__ = [
    "CACHE_ENV",
    "DISABLE_ENV",
    "ISA_ENV",
    "KernelOps",
    "batch1_forward",
    "batch1_layout",
    "build_directory",
    "condensed_linear_cpu",
    "condensed_linear_rows_cpu",
    "condensed_linear_rows_torch",
    "scatter_columns",
    "condensed_linear_torch",
    "host_variants",
    "load_extension",
    "load_variant_by_name",
]

DISABLE_ENV = "LIGHTNING_SRIGL_DISABLE_CPP"
_KERNEL_DTYPES = frozenset((torch.float32, torch.bfloat16, torch.float16))
# Upper bound on the (B, rows, k) gather temporary of the fallback, in elements.
_FALLBACK_CHUNK_ELEMENTS = 1 << 22
# Window starts of the batch-1 layout are 16-bit and a window spans at most 32 features.
BATCH1_MAX_IN_FEATURES = 65535 - 32

_lock = threading.Lock()
_extension: KernelOps | None = None
_build_failed = False


def cpp_disabled() -> bool:
    """True when ``LIGHTNING_SRIGL_DISABLE_CPP=1`` asks for the pure-torch fallback."""
    return os.environ.get(DISABLE_ENV, "") == "1"


def load_variant_by_name(name: str) -> KernelOps:
    """The ops of variant ``name`` (one of `host_variants`), loading or building it; for tests and
    benchmarks that compare variants in one process.

    Raises:
        ValueError: unknown variant, or one this CPU cannot execute.
    """
    if name not in host_variants():
        raise ValueError(f"CPU kernel variant {name!r} cannot run here; this CPU runs {host_variants()}.")
    return load_variant(all_variants()[name])


def _build() -> KernelOps:
    return load_variant(all_variants()[requested_variant()])


def load_extension() -> KernelOps | None:
    """The chosen variant's ops, loading (or building) them on the first call; None when disabled or
    when no library could be loaded or built (then one warning).

    Raises:
        ValueError: ``LIGHTNING_SRIGL_CPU_ISA`` names a variant this CPU cannot execute.
    """
    global _extension, _build_failed
    if cpp_disabled():
        return None
    if _extension is not None or _build_failed:
        return _extension
    with _lock:
        if _extension is None and not _build_failed:
            forced = bool(os.environ.get(ISA_ENV, "").strip())
            try:
                _extension = _build()
            except ValueError:
                raise
            except Exception as error:  # no compiler, missing headers, linker errors, ...
                if forced:
                    raise RuntimeError(
                        f"{ISA_ENV} asks for a CPU kernel variant that is neither installed nor buildable here "
                        f"({type(error).__name__}: {str(error)[:300]}); reinstall with "
                        "`pip install --no-build-isolation .` or unset it."
                    ) from error
                _build_failed = True
                warnings.warn(
                    "lightning_srigl: no condensed C++ CPU kernel could be loaded or built "
                    f"({type(error).__name__}: {str(error)[:300]}). CondensedLinear uses the pure-torch "
                    "fallback, which is 3-20x SLOWER than a dense nn.Linear: accelerate() and "
                    "AccelerateCallback time every candidate and keep dense layers then. Install a C++ "
                    "compiler with OpenMP (e.g. g++) and reinstall with `pip install --no-build-isolation "
                    f"lightning-srigl`, or set {DISABLE_ENV}=1 to silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _extension


def condensed_linear_torch(
    x2d: Tensor,
    values: Tensor,
    indices: Tensor,
    bias_active: Tensor | None,
    chunk_elements: int = _FALLBACK_CHUNK_ELEMENTS,
) -> Tensor:
    """Pure-torch reference: ``y[b, a] = bias[a] + sum_j values[a, j] * x[b, indices[a, j]]``.

    Args:
        x2d: ``(B, in)``.
        values: ``(A, k)``, same dtype as ``x2d``.
        indices: ``(A, k)`` int16/int32/int64 column indices into ``in``.
        bias_active: ``(A,)`` or None.
        chunk_elements: rows are processed in chunks so the ``(B, rows, k)`` gather stays below this.

    Returns:
        ``(B, A)`` in ``x2d``'s dtype; half types accumulate in float32. Differentiable.
    """
    compute = torch.float32 if x2d.dtype in (torch.float16, torch.bfloat16) else x2d.dtype
    batch, (rows, k) = x2d.shape[0], values.shape
    xc = x2d.to(compute)
    idx = indices.long()
    step = max(1, chunk_elements // max(1, batch * k))
    chunks = [(xc[:, idx[a : a + step]] * values[a : a + step].to(compute)).sum(-1) for a in range(0, rows, step)]
    y = torch.cat(chunks, dim=1) if chunks else xc.new_zeros(batch, 0)
    if bias_active is not None:
        y = y + bias_active.to(compute)
    return y.to(x2d.dtype)


def batch1_layout(
    values: Tensor, indices: Tensor, rows: Tensor, in_features: int, out_features: int, kernel: KernelOps | None = None
) -> Tensor | None:
    """Layout for the gather-free batch-1 kernel (``csrc/batch1.h``), or None where it does not apply.

    Args:
        values: ``(A, k)`` fp32 condensed weights.
        indices: ``(A, k)`` int16/int32 input columns.
        rows: ``(A,)`` int64 output row of each active neuron (the others output their bias).
        in_features, out_features: the layer's widths.
        kernel: the variant to build it for (default: `load_extension`'s).

    Returns:
        One uint8 tensor (the weights in step order, ``A * k`` floats, plus 1-2 bytes per weight of lane
        and step data), or None for non-fp32, empty, non-CPU or very wide (> 65503 inputs) layers and
        for variants without the kernel (scalar, NEON). Pass it to `batch1_forward`.
    """
    kernel = kernel or load_extension()
    if kernel is None or not kernel.batch1_supported:
        return None
    if values.dtype != torch.float32 or values.device.type != "cpu" or values.numel() == 0:
        return None
    if in_features > BATCH1_MAX_IN_FEATURES:
        return None
    return kernel.batch1_layout(
        values.contiguous(), indices.contiguous(), rows.long().contiguous(), in_features, out_features
    )


def batch1_forward(x: Tensor, layout: Tensor, bias: Tensor | None) -> Tensor:
    """``(1, in) -> (1, out)`` fp32 through the batch-1 kernel; ``bias`` is the full ``(out,)`` bias or None.

    ``layout`` exists only when the extension was loaded (see `batch1_layout`), so this is one call.
    """
    if _extension is None:
        raise RuntimeError("batch1_forward needs a layout from batch1_layout(), which loads the extension")
    return _extension.batch1_forward(x, layout, bias)


def condensed_linear_cpu(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """``(B, A)`` condensed product on the CPU: the C++ kernel for fp32/bf16/fp16, else the fallback.

    The common case (extension loaded, not disabled) takes one global read and one environment lookup
    before the kernel call.
    """
    extension = _extension if _extension is not None and os.environ.get(DISABLE_ENV) != "1" else load_extension()
    if extension is None or x2d.dtype not in _KERNEL_DTYPES:
        return condensed_linear_torch(x2d, values, indices, bias_active)
    return extension.condensed_linear(x2d, values, indices, bias_active)


def condensed_linear_rows_torch(
    x2d: Tensor, values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None, out_features: int
) -> Tensor:
    """Pure-torch reference of ``condensed_linear_rows``: `condensed_linear_torch` at the columns ``rows (A,)`` of a
    ``(B, out_features)`` output whose other columns hold ``bias (out_features,)`` (or 0). Differentiable."""
    return scatter_columns(condensed_linear_torch(x2d, values, indices, None), rows, bias, out_features)


def scatter_columns(y: Tensor, rows: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``y (B, A)`` placed at the columns ``rows (A,)`` of a ``(B, out_features)`` output that holds ``bias
    (out_features,)`` (or 0) in every column: active columns get ``bias + y``, the others the bias alone."""
    batch = y.shape[0]
    full = y.new_zeros(batch, out_features) if bias is None else bias.expand(batch, out_features).contiguous()
    return full.index_add(1, rows, y.to(full.dtype))


def condensed_linear_rows_cpu(
    x2d: Tensor, values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None, out_features: int
) -> Tensor:
    """``(B, out_features)`` on the CPU: the C++ kernel, which stores each active row's output at its column
    (no ``(B, A)`` temporary, no scatter), for fp32/bf16/fp16; else `condensed_linear_rows_torch`."""
    extension = _extension if _extension is not None and os.environ.get(DISABLE_ENV) != "1" else load_extension()
    if extension is None or x2d.dtype not in _KERNEL_DTYPES:
        return condensed_linear_rows_torch(x2d, values, indices, rows, bias, out_features)
    return extension.condensed_linear_rows(x2d, values, indices, rows, bias, out_features)
