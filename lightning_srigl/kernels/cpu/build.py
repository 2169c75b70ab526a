"""Loading a CPU kernel variant: the library built at install time, else a one-time JIT build.

``pip install --no-build-isolation .`` (or the wheel of ``make wheel``) puts one library per variant next
to this module (``_cpu_<variant>*.so``, see ``setup.py``). Each library records the hash of its sources
and the torch version and C++11 ABI flag it was compiled against (``csrc/ops.cpp``); one that does not
match the sources and the running torch is never loaded (a C++ library loaded into another torch can
crash). The variant is then compiled on first use with ``torch.utils.cpp_extension.load``, printing one
line first, into ``$LIGHTNING_SRIGL_CACHE`` (default ``~/.cache/lightning_srigl``) under a folder named by
the torch version, the variant and a hash of the sources and flags, so installs of different versions
never rebuild each other's kernels. Where that compilation fails (no compiler), `load_variant`
raises an error naming the mismatch, and ``kernel.py`` falls back to pure torch after one warning.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_srigl.kernels.cpu.variants import (
    Variant,
    library_record,
    source_hash,
    sources,
    torch_build,
)
from lightning_srigl.kernels.fakes import register_cpp_fakes

CACHE_ENV = "LIGHTNING_SRIGL_CACHE"
_PACKAGE_DIR = Path(__file__).resolve().parent

_lock = threading.Lock()
_loaded: dict[str, KernelOps] = {}


@dataclass(frozen=True)
class KernelOps:
    """The ops of one loaded variant (``torch.ops.lightning_srigl_<variant>``), resolved to overloads.

    Attributes:
        variant: the variant's name (``avx512``, ``avx2``, ``neon``, ``scalar``).
        library: the shared library the ops came from.
        condensed_linear: ``(x (B, in), values (A, k), indices (A, k), bias (A,) | None) -> (B, A)``.
        condensed_linear_rows: ``(x (B, in), values (A, k), indices (A, k), rows (A,), bias (out,) | None, out)
            -> (B, out)``: the product at the columns ``rows``, every other column its bias.
        batch1_layout: ``(values, indices, rows (A,), in, out) -> uint8 layout`` (empty where unsupported).
        batch1_forward: ``(x (1, in), layout, bias (out,) | None) -> (1, out)``.
        batch1_supported: whether the variant has the gather-free batch-1 kernel.
        condensed_conv2d: ``(x (N, C, H, W), values (A, k), indices (A, k), rows (A,), bias (out,) | None,
            out_channels, groups, kernel_size, stride, padding, dilation, block) -> (N, out, Ho, Wo)``
            (``csrc/conv.h``).
        sampled_product: ``(go (N, out), x (N, in), row_ptr (out + 1,) int64, cols (nnz,) int32) -> (out, in)``,
            ``go^T x`` at the listed positions and ``+0`` elsewhere (``csrc/sampled.h``).
        int8_condensed_linear: ``(x (B, in), weight (A, kp) int8, indices (A, kp), weight_sum (A,) int32,
            weight_scale (A,), rows (A,), bias (out,) | None, layout | None, out_features, input_scale | None,
            input_zero | None,
            mode) -> (B, out)`` (``csrc/int8.h``).
        int8_window_layout: ``(weight, indices, in_features) -> uint8 layout`` for the gather-free int8
            kernel (``csrc/int8_window.h``; empty where the variant or CPU has none).
        int8_path: ``(mode) -> str``, the int8 dot-product path that runs (``"avx512_vnni"``, ``"avx2"``, ...).
        attention: ``(query (B, H, Lq, D), key (B, H, Lk, D), value (B, H, Lk, D), attn_mask | None, scale,
            is_causal) -> (B, H, Lq, D)`` fp32 (``csrc/attention.h``).
    """

    variant: str
    library: Path
    condensed_linear: Callable[..., Tensor]
    condensed_linear_rows: Callable[..., Tensor]
    batch1_layout: Callable[..., Tensor]
    batch1_forward: Callable[..., Tensor]
    batch1_supported: bool
    condensed_conv2d: Callable[..., Tensor]
    sampled_product: Callable[..., Tensor]
    int8_condensed_linear: Callable[..., Tensor]
    int8_window_layout: Callable[..., Tensor]
    int8_path: Callable[..., Any]
    attention: Callable[..., Tensor]


def build_directory(variant: Variant) -> Path:
    """JIT cache folder of ``variant``: ``<cache>/<torch version>/<variant>-<source hash>``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lightning_srigl")
    return root / torch.__version__.replace("+", "_") / f"{variant.name}-{source_hash()}"


def running_torch_build() -> str:
    """The [`torch_build`][lightning_srigl.kernels.cpu.variants.torch_build] of the running torch."""
    return torch_build(torch.__version__, bool(torch._C._GLIBCXX_USE_CXX11_ABI))


def installed_library(variant: Variant) -> Path | None:
    """The library ``setup.py`` built for ``variant`` (in the package folder), or None."""
    found = sorted(_PACKAGE_DIR.glob(f"{variant.library}.*so")) + sorted(_PACKAGE_DIR.glob(f"{variant.library}.pyd"))
    return found[0] if found else None


def mismatch(library: Path) -> str | None:
    """Why ``library`` must not be loaded here, or None when it was built from the current sources against
    the running torch (same version, same C++11 ABI flag)."""
    record = library_record(library)
    if record.source_hash != source_hash():
        return (
            f"{library.name} was built from other kernel sources ({record.source_hash}, now {source_hash()}); "
            "`pip install --no-build-isolation -e .` rebuilds it in place"
        )
    if record.torch_build != running_torch_build():
        return (
            f"{library.name} was built against {record.torch_build or 'an unrecorded torch'}, but this is "
            f"{running_torch_build()}: loading it could crash"
        )
    return None


def jit_build(variant: Variant) -> Path:
    """Compile ``variant`` into its cache folder (once; later calls find it built) and return the library."""
    from torch.utils import cpp_extension

    directory = build_directory(variant)
    name = f"lightning_srigl_{variant.name}_{source_hash()}"
    library = directory / f"{name}.so"
    if not library.exists():
        print(
            f"lightning_srigl: building the CPU kernel once ({variant.name}) into {directory}; later runs reuse it",
            file=sys.stderr,
            flush=True,
        )
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(source) for source in sources()],
        extra_cflags=variant.build_flags(running_torch_build()),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )
    return library


def load_variant(variant: Variant) -> KernelOps:
    """Load ``variant``'s ops (the installed library when it matches the sources and torch, else a JIT
    build); cached per process.

    Raises:
        RuntimeError: no installed library matches and compiling the variant failed; the message names
            why the installed library was refused.
        OSError, ...: no installed library and compiling failed (no compiler).
    """
    if variant.name in _loaded:
        return _loaded[variant.name]
    with _lock:
        if variant.name not in _loaded:
            library = installed_library(variant)
            refused = mismatch(library) if library is not None else None
            if library is not None and refused is None:
                try:
                    torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
                except OSError as error:  # undefined symbols, a damaged file
                    refused = f"{library.name} does not load ({error})"
            if library is None or refused is not None:
                library = _rebuild(variant, refused)
            register_cpp_fakes(variant.namespace)
            _loaded[variant.name] = _resolve(variant.name, library)
    return _loaded[variant.name]


def _rebuild(variant: Variant, refused: str | None) -> Path:
    """Compile and load ``variant`` instead of an installed library that is missing or was ``refused``."""
    if refused is not None:
        print(f"lightning_srigl: {refused}; compiling the kernels from source instead", file=sys.stderr, flush=True)
    try:
        library = jit_build(variant)
        torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
    except Exception as error:
        if refused is None:
            raise
        raise RuntimeError(
            f"{refused}, and compiling them here failed ({type(error).__name__}: {str(error)[:200]}); install a "
            "C++ compiler with OpenMP, or lightning-srigl built against this torch"
        ) from error
    return library


def _resolve(variant: str, library: Path) -> KernelOps:
    ops = getattr(torch.ops, f"lightning_srigl_{variant}")
    # Overloads, not packets: calling `.default` skips the overload lookup on every call.
    return KernelOps(
        variant=variant,
        library=library,
        condensed_linear=ops.condensed_linear.default,
        condensed_linear_rows=ops.condensed_linear_rows.default,
        batch1_layout=ops.batch1_layout.default,
        batch1_forward=ops.batch1_forward.default,
        batch1_supported=bool(ops.batch1_supported()),
        condensed_conv2d=ops.condensed_conv2d.default,
        sampled_product=ops.sampled_product.default,
        int8_condensed_linear=ops.int8_condensed_linear.default,
        int8_window_layout=ops.int8_window_layout.default,
        int8_path=ops.int8_path.default,
        attention=ops.attention.default,
    )
