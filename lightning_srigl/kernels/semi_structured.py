"""Which of PyTorch's 2:4 semi-structured kernels (sparse tensor cores) a CUDA device runs, and which
weights they take.

PyTorch's ``SparseSemiStructuredTensor`` runs on NVIDIA GPUs with compute capability >= 8.0 through
cuSPARSELt, or CUTLASS on 8.x when the build has no cuSPARSELt. Requirements (PyTorch's own): a 2-D
contiguous CUDA weight in fp16/bf16 whose ``(out, in)`` are multiples of (and at least) the backend's
minimum block, e.g. 32×64 for CUTLASS and 16×16 for cuSPARSELt. :func:`semi_structured_supported` says
whether a weight qualifies and, if not, why (on CPU, the answer is always no). The layer is
[`SemiStructuredLinear`][lightning_srigl.condensed.layers.semi_structured.SemiStructuredLinear].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.sparse import (
    SparseSemiStructuredTensor,
    SparseSemiStructuredTensorCUSPARSELT,
    SparseSemiStructuredTensorCUTLASS,
)

__all__ = [
    "SEMI_STRUCTURED_DTYPES",
    "DeviceFacts",
    "check_semi_structured",
    "is_2_4",
    "semi_structured_backend",
    "semi_structured_supported",
]

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
_HOPPER_MIN_CUSPARSELT = 600  # cuSPARSELt >= 0.6 (torch reports 0.6.2 as 602) supports compute capability 9.x


@dataclass(frozen=True)
class DeviceFacts:
    """What decides 2:4 support on a CUDA device: its compute capability and the cuSPARSELt version."""

    capability: tuple[int, int]
    cusparselt_version: int | None  # None: this PyTorch build has no cuSPARSELt

    @classmethod
    def of(cls, device: torch.device) -> DeviceFacts:
        available = torch.backends.cusparselt.is_available()
        return cls(torch.cuda.get_device_capability(device), torch.backends.cusparselt.version() if available else None)


def is_2_4(mask: Tensor) -> bool:
    """Whether a ``(out, in)`` mask keeps at most 2 of every 4 consecutive inputs (``in % 4 == 0``).

    "At most" rather than "exactly": an ablated (all-zero) row is still a valid 2:4 row.
    """
    if mask.dim() != 2 or mask.shape[1] % 4 != 0:
        return False
    return bool(((mask != 0).view(mask.shape[0], -1, 4).sum(dim=-1) <= 2).all())


def semi_structured_supported(weight: Tensor) -> tuple[bool, str]:
    """Whether ``weight`` (``(out, in)``) can become a 2:4 semi-structured tensor here, and why (not).

    Checks device (CUDA), dtype, compute capability, backend and shape; not the 2:4 pattern itself
    (see :func:`is_2_4`).
    """
    if not weight.is_cuda:
        return False, f"2:4 semi-structured sparsity needs a CUDA GPU; the weight is on {weight.device}"
    return check_semi_structured(tuple(weight.shape), weight.dtype, DeviceFacts.of(weight.device))


def check_semi_structured(shape: tuple[int, ...], dtype: torch.dtype, facts: DeviceFacts) -> tuple[bool, str]:
    """The support decision of :func:`semi_structured_supported` for a CUDA weight, from plain facts."""
    backend, reason = semi_structured_backend(facts)
    if backend is None:
        return False, reason
    if len(shape) != 2:
        return False, f"only 2-D (Linear) weights are supported, got shape {shape}"
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return False, f"dtype {dtype} is not supported; convert the layer to one of {SEMI_STRUCTURED_DTYPES}"
    limits = backend._DTYPE_SHAPE_CONSTRAINTS[dtype]  # PyTorch's per-backend minimum block
    rows, cols = limits.sparse_min_rows, limits.sparse_min_cols
    if any(size < block or size % block for size, block in zip(shape, (rows, cols))):
        return False, f"shape {shape} is not a positive multiple of {reason}'s {rows}x{cols} block for {dtype}"
    return True, f"supported ({reason})"


def semi_structured_backend(facts: DeviceFacts) -> tuple[type[SparseSemiStructuredTensor] | None, str]:
    """The PyTorch 2:4 backend class for a device, or None and why there is none."""
    major, minor = facts.capability
    if major < 8:
        return None, f"compute capability {major}.{minor} < 8.0: 2:4 sparse tensor cores need Ampere or newer"
    if facts.cusparselt_version is not None:
        if major == 9 and facts.cusparselt_version < _HOPPER_MIN_CUSPARSELT:
            return None, f"cuSPARSELt {facts.cusparselt_version} lacks compute capability 9.x; it needs >= 0.6"
        return SparseSemiStructuredTensorCUSPARSELT, "cuSPARSELt"
    if major == 8:
        return SparseSemiStructuredTensorCUTLASS, "CUTLASS"
    return None, f"this PyTorch build has no cuSPARSELt, and the CUTLASS 2:4 kernels support only 8.x, not {major}.x"
