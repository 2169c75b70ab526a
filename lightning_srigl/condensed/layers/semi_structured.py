"""2:4 semi-structured sparse ``Linear`` via ``torch.sparse.to_sparse_semi_structured`` (sparse tensor cores).

A 2:4 layer (at most 2 non-zeros in every group of 4 consecutive inputs) can run on the 2:4
sparse tensor cores of NVIDIA GPUs with compute capability >= 8.0, through PyTorch's
``SparseSemiStructuredTensor`` (cuSPARSELt, or CUTLASS on 8.x when the build has no cuSPARSELt).
Requirements (PyTorch's own, from ``torch.sparse.SparseSemiStructuredTensor``): a 2-D contiguous CUDA weight in
fp16/bf16 whose ``(out, in)`` are multiples of (and at least) the backend's minimum block, e.g.
32×64 for CUTLASS and 16×16 for cuSPARSELt in fp16/bf16. The input is padded by PyTorch.

:func:`semi_structured_supported` says whether a weight qualifies and, if not, why (on CPU, the
answer is always no); callers then keep the condensed or dense layer. Known limits: speedups
appear only for large layers and batches (pytorch/pytorch#111339), CUTLASS was never validated
on Hopper, and the layer is inference-only.

**Status: no GPU was available while this was written.** The CUDA path follows the PyTorch
documentation but has not been run; only the support checks and the 2:4 validation are tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.sparse import (
    SparseSemiStructuredTensor,
    SparseSemiStructuredTensorCUSPARSELT,
    SparseSemiStructuredTensorCUTLASS,
)

from lightning_srigl.kernels.validation import check_bias

__all__ = [
    "DeviceFacts",
    "SemiStructuredLinear",
    "check_semi_structured",
    "is_2_4",
    "semi_structured_supported",
    "to_semi_structured_linear",
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
    backend, reason = _backend(facts)
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


def _backend(facts: DeviceFacts) -> tuple[type[SparseSemiStructuredTensor] | None, str]:
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


class SemiStructuredLinear(nn.Module):
    """Inference ``Linear`` whose 2:4 weight is a ``SparseSemiStructuredTensor``.

    ``forward(x (..., in)) -> (..., out)`` equals the masked dense layer up to fp16/bf16 rounding.
    Build it with :meth:`from_linear`; :meth:`to_dense` returns the equivalent ``nn.Linear``.
    """

    def __init__(self, weight: SparseSemiStructuredTensor, bias: Tensor | None) -> None:
        super().__init__()
        if not isinstance(weight, SparseSemiStructuredTensor):
            raise ValueError(f"weight must be a SparseSemiStructuredTensor, got {type(weight).__name__}")
        check_bias(bias, weight.shape[0], weight)
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> SemiStructuredLinear:
        """Compress ``linear.weight * mask`` (``mask`` defaults to the non-zeros of the weight).

        Raises:
            ValueError: the mask is not 2:4 or this weight/device cannot use 2:4 kernels (the
                message gives the reason from :func:`semi_structured_supported`); keep another layer.
        """
        weight = linear.weight.detach()
        mask = weight != 0 if mask is None else mask.to(device=weight.device, dtype=torch.bool)
        if mask.shape != weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
        if not is_2_4(mask):
            raise ValueError(
                "the mask is not 2:4 (at most 2 non-zeros per 4 consecutive inputs, in_features % 4 == 0); "
                "train the layer with NMSparsityCallback(n=2, m=4) or convert it to 2:4 first"
            )
        ok, reason = semi_structured_supported(weight)
        if not ok:
            raise ValueError(f"cannot build a 2:4 semi-structured layer: {reason}")
        backend, _ = _backend(DeviceFacts.of(weight.device))
        sparse = backend.from_dense((weight * mask).contiguous())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(sparse, bias)

    @classmethod
    def from_masked(cls, linear: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
        """The 2:4 form of ``linear`` with ``weight * mask``; see :meth:`from_linear` for what it needs."""
        return cls.from_linear(linear, mask)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in)`` in the layer's dtype -> ``(..., out)``."""
        if x.dtype != self.weight.dtype:
            raise ValueError(f"input dtype {x.dtype} != layer dtype {self.weight.dtype}; cast the input or the model")
        return F.linear(x.contiguous(), self.weight, self.bias)

    def to_dense(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (masked weight), on the same device and dtype."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense = dense.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"


def to_semi_structured_linear(linear: nn.Linear, mask: Tensor | None = None) -> SemiStructuredLinear:
    """Functional form of :meth:`SemiStructuredLinear.from_linear`."""
    return SemiStructuredLinear.from_linear(linear, mask)
