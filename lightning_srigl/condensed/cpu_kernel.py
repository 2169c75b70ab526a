"""CPU kernel for the condensed product: build/load of the C++ extension, and the pure-torch fallback.

The extension (``csrc/condensed_cpu.cpp``) is compiled on first use with
``torch.utils.cpp_extension.load`` (``-O3 -march=native -fopenmp``) into a cache folder keyed by the
torch version and the CPU's feature flags, so a cached load takes milliseconds. Where no compiler is
available, or the build fails, :func:`condensed_linear_cpu` falls back to :func:`condensed_linear_torch`
and warns once. ``LIGHTNING_SRIGL_DISABLE_CPP=1`` forces the fallback.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

DISABLE_ENV = "LIGHTNING_SRIGL_DISABLE_CPP"
CACHE_ENV = "LIGHTNING_SRIGL_CACHE"
_SOURCES = [Path(__file__).resolve().parent / "csrc" / name for name in ("condensed_cpu.cpp", "permute_b1.cpp")]
_KERNEL_DTYPES = frozenset((torch.float32, torch.bfloat16, torch.float16))
# Upper bound on the (B, rows, k) gather temporary of the fallback, in elements.
_FALLBACK_CHUNK_ELEMENTS = 1 << 22
# Window starts of the batch-1 layout are 16-bit and a window spans 32 features.
PERMUTE_MAX_IN_FEATURES = 65535 - 32

_lock = threading.Lock()
_extension: ModuleType | None = None
_build_failed = False


def cpp_disabled() -> bool:
    """True when ``LIGHTNING_SRIGL_DISABLE_CPP=1`` asks for the pure-torch fallback."""
    return os.environ.get(DISABLE_ENV, "") == "1"


def _cpu_flags() -> str:
    """The CPU feature string that ``-march=native`` depends on (Linux: the ``flags`` line)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build_directory() -> Path:
    """Cache folder: ``$LIGHTNING_SRIGL_CACHE`` or ``~/.cache/lightning_srigl``, then ``<torch>/<cpu hash>``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lightning_srigl")
    cpu_hash = hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]
    return root / torch.__version__.replace("+", "_") / cpu_hash


def _compile_flags() -> list[str]:
    """Optimisation flags; 512-bit vectors are preferred on x86 (AVX-512 gathers when the CPU has them)."""
    flags = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]  # fuse a * b + c into FMAs
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")
    return flags


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name="lightning_srigl_condensed_cpu",
        sources=[str(source) for source in _SOURCES],
        extra_cflags=_compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )


def load_extension() -> ModuleType | None:
    """The compiled extension, building it on the first call; None when disabled or unavailable.

    Thread-safe; a failed build is not retried in this process and warns exactly once.
    """
    global _extension, _build_failed
    if cpp_disabled():
        return None
    if _extension is not None or _build_failed:
        return _extension
    with _lock:
        if _extension is None and not _build_failed:
            try:
                _extension = _build()
            except Exception as error:  # no compiler, missing headers, linker errors, ...
                _build_failed = True
                warnings.warn(
                    "lightning_srigl: could not build the condensed C++ CPU kernel "
                    f"({type(error).__name__}: {str(error)[:300]}); using the slower pure-torch "
                    f"fallback. Install a C++ compiler with OpenMP (e.g. g++) or set {DISABLE_ENV}=1 "
                    "to silence this.",
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
    chunks = [
        (xc[:, idx[a : a + step]] * values[a : a + step].to(compute)).sum(-1) for a in range(0, rows, step)
    ]
    y = torch.cat(chunks, dim=1) if chunks else xc.new_zeros(batch, 0)
    if bias_active is not None:
        y = y + bias_active.to(compute)
    return y.to(x2d.dtype)


def permute_layout(values: Tensor, indices: Tensor, rows: Tensor, in_features: int, out_features: int) -> Tensor | None:
    """Layout for the gather-free batch-1 kernel (``csrc/permute_b1.cpp``), or None where it does not apply.

    Args:
        values: ``(A, k)`` fp32 condensed weights.
        indices: ``(A, k)`` int16/int32 input columns.
        rows: ``(A,)`` int64 output row of each active neuron (the others output their bias).
        in_features, out_features: the layer's widths.

    Returns:
        One uint8 tensor (the weights in step order, ``A * k`` floats, plus about 1.8 bytes per weight of
        lane and step data), or None for non-fp32, empty, non-CPU or very wide (> 65503 inputs) layers
        and when the extension lacks AVX-512. Pass it to :func:`permute_forward`.
    """
    extension = load_extension()
    if extension is None or not extension.permute_supported():
        return None
    if values.dtype != torch.float32 or values.device.type != "cpu" or values.numel() == 0:
        return None
    if in_features > PERMUTE_MAX_IN_FEATURES:
        return None
    return extension.permute_layout(
        values.contiguous(), indices.contiguous(), rows.long().contiguous(), in_features, out_features
    )


def permute_forward(x: Tensor, layout: Tensor, bias: Tensor | None) -> Tensor:
    """``(1, in) -> (1, out)`` fp32 through the batch-1 kernel; ``bias`` is the full ``(out,)`` bias or None.

    ``layout`` exists only when the extension was loaded (see :func:`permute_layout`), so this is one call.
    """
    if _extension is None:
        raise RuntimeError("permute_forward needs a layout from permute_layout(), which loads the extension")
    return _extension.permute_forward(x, layout, bias)


def condensed_linear_cpu(x2d: Tensor, values: Tensor, indices: Tensor, bias_active: Tensor | None) -> Tensor:
    """``(B, A)`` condensed product on the CPU: the C++ kernel for fp32/bf16/fp16, else the fallback.

    The common case (extension built, not disabled) takes one global read and one environment lookup
    before the kernel call.
    """
    extension = _extension if _extension is not None and os.environ.get(DISABLE_ENV) != "1" else load_extension()
    if extension is None or x2d.dtype not in _KERNEL_DTYPES:
        return condensed_linear_torch(x2d, values, indices, bias_active)
    return extension.forward(x2d, values, indices, bias_active)
