"""``lightning_srigl::packed_linear``: a dense linear product through oneDNN, its weight prepacked once.

``packed_linear(x, weight, bias) -> y (..., out)`` equals ``F.linear(x, weight, bias)`` (fp32, up to the
order of the sums). On CPUs where torch's fp32 GEMM (MKL) does not use the CPU's widest vectors (MKL
takes its AVX2 paths on AMD CPUs) oneDNN's GEMM on a weight reordered into its blocked layout is
2-2.5x faster: ``scripts/bench_dense_linear.py`` measures both. The reordered weight (oneDNN's opaque
tensor, as large as the weight) is built on the first call and kept per weight tensor (`packed_weight`)
until the weight is replaced, changed in place (its version counter moves) or edited past the counter
(``.data``, a numpy view: a checksum of ``LAYOUT_CHECK_WORDS`` strided words changes, as for the
condensed layers' derived layouts; `lightning_srigl.derived_cache`).

Registered with `torch.library.custom_op`, so ``torch.compile(fullgraph=True)`` and ``torch.export``
see one opaque node (inductor's own freezing pass would pack the weight for MKL instead, which is the
slow GEMM above). No autograd: callers use ``F.linear`` when a gradient is tracked.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from lightning_srigl.derived_cache import LAYOUT_CHECK_WORDS, checksum, checksum_view

OP_NAME = "lightning_srigl::packed_linear"

__all__ = ["onednn_linear_available", "packed_linear", "packed_linear_cpu", "packed_weight"]


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's prepacked linear (``torch.ops.mkldnn._linear_pointwise``) on the CPU."""
    return bool(torch._C._has_mkldnn and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _Packed(NamedTuple):
    version: int | None  # the weight's version counter (None for an inference tensor, which has none)
    fingerprint: object  # checksum of LAYOUT_CHECK_WORDS strided words
    packed: Tensor  # oneDNN's reordered weight


# weight tensor -> its packed copy; an entry leaves with its weight (the value holds no reference to it).
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packed_weight(weight: Tensor) -> Tensor:
    """oneDNN's reordered copy of ``weight (out, in)`` (fp32, CPU), rebuilt when ``weight`` changes (see the
    module docstring)."""
    try:
        version: int | None = weight._version
    except RuntimeError:  # an inference tensor: the checksum alone sees changes
        version = None
    fingerprint = checksum(checksum_view(weight, LAYOUT_CHECK_WORDS))
    entry = cast("_Packed | None", _PACKED.get(weight))  # type: ignore[no-untyped-call]
    if entry is None or entry.version != version or entry.fingerprint != fingerprint:
        entry = _Packed(version, fingerprint, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        _PACKED[weight] = entry
    return entry.packed


def _packable(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """fp32 CPU tensors of a linear product that oneDNN's prepacked linear takes."""
    return (
        onednn_linear_available()
        and x.is_cpu
        and weight.is_cpu
        and x.dtype == weight.dtype == torch.float32
        and weight.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == weight.shape[1]
        and (bias is None or (bias.dtype == torch.float32 and bias.shape == weight.shape[:1]))
    )


def packed_linear_cpu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN on the packed weight where `_packable`, else ``F.linear``:
    ``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` -> ``(..., out)``."""
    if not _packable(x, weight, bias):
        return F.linear(x, weight, bias)
    bias = None if bias is None else bias.detach().contiguous()
    return cast(Tensor, torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed_weight(weight), bias, "none", [], ""))


@torch.library.custom_op(OP_NAME, mutates_args=())
def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN on the packed weight on the CPU (see the module docstring)."""
    return packed_linear_cpu(x, weight, bias)


@packed_linear.register_fake
def _packed_linear_fake(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
