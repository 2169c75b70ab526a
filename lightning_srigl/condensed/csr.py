"""``CSRLinear``: the unstructured sparse baseline, a ``Linear`` whose weight is a torch sparse CSR tensor."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.condensed.validation import check_bias, check_csr

__all__ = ["CSRLinear", "to_csr"]

# torch warns once per process that CSR support is "in beta"; this layer uses it on purpose.
CSR_BETA_WARNING = "Sparse CSR tensor support is in beta state"


def to_csr(weight: Tensor) -> Tensor:
    """``weight (out, in)`` as a torch sparse CSR tensor, without torch's CSR beta warning.

    The warning filter applies to this call only (no global filter); torch itself raises the warning at
    most once per process.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CSR_BETA_WARNING, category=UserWarning)
        return weight.to_sparse_csr()


class CSRLinear(nn.Module):
    """A ``Linear`` whose weight is a torch sparse CSR tensor (the unstructured baseline).

    Batch 1 uses ``F.linear(x, W_csr, b)`` and larger batches ``addmm(b, W_csr, xᵀ)ᵀ``: the faster
    torch CSR call for each regime on CPU (``research/kernels.md`` §4).
    """

    def __init__(self, weight_csr: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        check_csr(weight_csr)
        check_bias(bias, weight_csr.shape[0], weight_csr)
        self.in_features = weight_csr.shape[1]
        self.out_features = weight_csr.shape[0]
        self.register_buffer("weight", weight_csr)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> CSRLinear:
        """Build from a dense layer; ``mask (out, in)`` bool, default: the non-zeros of the weight."""
        weight = linear.weight.detach()
        weight = weight * mask if mask is not None else weight
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(to_csr(weight), bias)

    @classmethod
    def from_masked(cls, linear: nn.Linear, mask: Tensor) -> CSRLinear:
        """The CSR form of ``linear`` with ``weight * mask`` (``mask (out, in)`` bool)."""
        return cls.from_linear(linear, mask)

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
        # torch 2.13's F.linear with a CSR weight made outside inference mode fails inside it
        # ("Cannot set version_counter for inference tensor"); addmm below does not.
        if x2d.shape[0] == 1 and not torch.is_inference_mode_enabled():
            y = F.linear(x2d, self.weight, self.bias)
        elif self.bias is None:
            y = torch.mm(self.weight, x2d.t()).t()
        else:
            y = torch.addmm(self.bias[:, None], self.weight, x2d.t()).t()
        return y.reshape(*x.shape[:-1], self.out_features)
