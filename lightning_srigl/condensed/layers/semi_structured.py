"""2:4 semi-structured sparse ``Linear`` via ``torch.sparse.to_sparse_semi_structured`` (sparse tensor cores).

A 2:4 layer (at most 2 non-zeros in every group of 4 consecutive inputs) runs on the 2:4 sparse tensor
cores of NVIDIA GPUs with compute capability >= 8.0, through PyTorch's ``SparseSemiStructuredTensor``;
which weights and devices qualify is decided in [`kernels.semi_structured`][lightning_srigl.kernels.semi_structured]
(callers keep the condensed or dense layer otherwise). The input is padded by PyTorch. Known limits:
speedups appear only for large layers and batches (pytorch/pytorch#111339), CUTLASS was never validated
on Hopper, and the layer is inference-only. The CUDA path follows the PyTorch documentation; the tests
on CPU cover the support checks and the 2:4 validation, and ``scripts/gpu_check.sh`` runs it on a GPU
(GPU speed is unmeasured: docs/benchmarks.md).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.sparse import SparseSemiStructuredTensor

from lightning_srigl.condensed.layers.contract import dense_linear, own_mask, renamed_constructor
from lightning_srigl.kernels.semi_structured import (
    DeviceFacts,
    check_semi_structured,
    is_2_4,
    semi_structured_backend,
    semi_structured_supported,
)
from lightning_srigl.kernels.validation import check_bias

__all__ = [
    "DeviceFacts",
    "SemiStructuredLinear",
    "check_semi_structured",
    "is_2_4",
    "semi_structured_supported",
]


class SemiStructuredLinear(nn.Module):
    """Inference ``Linear`` whose 2:4 weight is a ``SparseSemiStructuredTensor``.

    ``forward(x (..., in)) -> (..., out)`` equals the masked dense layer up to fp16/bf16 rounding.
    Build it with `from_masked`; `to_dense` returns the equivalent ``nn.Linear``.
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
    def from_masked(cls, linear: nn.Linear, mask: Tensor | None = None) -> SemiStructuredLinear:
        """The 2:4 form of ``linear`` with ``weight * mask``, compressed (``mask (out, in)`` bool; ``None``: the
        layer's own mask, `own_mask`: the installed mask, else ``weight != 0``).

        Raises:
            ValueError: the mask is not 2:4 or this weight/device cannot use 2:4 kernels (the
                message gives the reason from `semi_structured_supported`); keep another layer.
        """
        weight = linear.weight.detach()
        mask = own_mask(linear, mask)
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
        backend, _ = semi_structured_backend(DeviceFacts.of(weight.device))
        sparse = backend.from_dense((weight * mask).contiguous())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(sparse, bias)

    from_linear = renamed_constructor("from_linear", "from_masked")

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in)`` in the layer's dtype -> ``(..., out)``."""
        if x.dtype != self.weight.dtype:
            raise ValueError(f"input dtype {x.dtype} != layer dtype {self.weight.dtype}; cast the input or the model")
        return F.linear(x.contiguous(), self.weight, self.bias)

    def to_dense(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (masked weight), on the same device and dtype."""
        return dense_linear(self.weight.to_dense(), self.bias, frozen=False)

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": (out, in) bool}``: the weight's non-zeros (the compressed form keeps no other record
        of its 2:4 positions, so a kept weight that is exactly zero reads as inactive)."""
        return {"weight": self.weight.to_dense() != 0}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"
