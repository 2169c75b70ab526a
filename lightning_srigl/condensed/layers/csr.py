"""``CSRLinear``: the unstructured sparse baseline, a ``Linear`` whose weight is a torch sparse CSR matrix.

The matrix is kept as its three dense parts, ``crow_indices (out + 1,)``, ``col_indices (nnz,)`` and
``values (nnz,)`` buffers, so the layer saves, loads, deep-copies and moves like any module, and the
product is the custom op ``lightning_srigl::csr_linear`` of
[`kernels.csr`][lightning_srigl.kernels.csr] (one opaque node for ``torch.export`` and ``torch.compile``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import dense_linear, own_mask, renamed_constructor
from lightning_srigl.kernels.csr import csr_linear, csr_product, csr_tensor, to_csr
from lightning_srigl.kernels.validation import check_bias, check_csr

__all__ = ["CSRLinear", "csr_linear", "csr_product", "to_csr"]


class CSRLinear(nn.Module):
    """A ``Linear`` whose weight is sparse CSR, ``(..., in) -> (..., out)`` (see the module docstring).

    Args:
        weight_csr: ``(out, in)`` ``torch.sparse_csr`` weight (validated).
        bias: ``(out,)`` or None.
    """

    def __init__(self, weight_csr: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        check_csr(weight_csr)
        check_bias(bias, weight_csr.shape[0], weight_csr)
        self.in_features = weight_csr.shape[1]
        self.out_features = weight_csr.shape[0]
        self.register_buffer("crow_indices", weight_csr.crow_indices().clone())
        self.register_buffer("col_indices", weight_csr.col_indices().clone())
        self.register_buffer("values", weight_csr.values().clone())
        self.register_buffer("bias", bias)

    @classmethod
    def from_masked(cls, linear: nn.Linear, mask: Tensor | None = None) -> CSRLinear:
        """The CSR form of ``linear`` with ``weight * mask`` (``mask (out, in)`` bool; ``None``: the layer's own
        mask, `own_mask`: the installed mask, else ``weight != 0``)."""
        weight = linear.weight.detach() * own_mask(linear, mask)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(to_csr(weight), bias)

    from_linear = renamed_constructor("from_linear", "from_masked")

    @property
    def weight(self) -> Tensor:
        """The ``(out, in)`` sparse CSR weight (a view of the buffers)."""
        return csr_tensor(self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features))

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the dense weight and the bias."""
        return dense_linear(self.weight.to_dense(), self.bias, frozen=False)

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": (out, in) bool}``: the stored positions (explicit zeros included)."""
        ones = torch.ones_like(self.values, dtype=torch.bool)
        return {
            "weight": csr_tensor(
                self.crow_indices, self.col_indices, ones, (self.out_features, self.in_features)
            ).to_dense()
        }

    def spec_args(self) -> dict[str, int | bool]:
        """Plain constructor facts for [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed]."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> CSRLinear:
        """Rebuild (validated) from `spec_args` and the layer's ``state_dict`` tensors."""
        shape = (args["out_features"], args["in_features"])
        weight = csr_tensor(tensors["crow_indices"], tensors["col_indices"], tensors["values"], shape)
        return cls(weight, tensors.get("bias"))  # validated here

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in) -> (..., out)``; under autocast the product runs in the weight's dtype.

        (torch's sparse CSR products have no bf16/fp16 kernels on CPU, so autocast's casts would fail.)
        """
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._product(x.to(self.weight.dtype))
        return self._product(x)

    def _product(self, x: Tensor) -> Tensor:
        x2d = x.reshape(-1, self.in_features)
        eager = type(x2d) is Tensor and not torch.compiler.is_compiling()
        product = csr_product if eager else csr_linear  # eager calls skip the dispatcher (~15 us)
        y = product(x2d, self.crow_indices, self.col_indices, self.values, self.bias, self.in_features)
        return y.reshape(*x.shape[:-1], self.out_features)
