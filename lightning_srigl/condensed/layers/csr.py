"""``CSRLinear``: the unstructured sparse baseline, a ``Linear`` whose weight is a torch sparse CSR matrix.

The matrix is kept as its three dense parts, ``crow_indices (out + 1,)``, ``col_indices (nnz,)`` and
``values (nnz,)`` buffers, so the layer saves, loads, deep-copies and moves like any module, and the
product is the custom op ``lightning_srigl::csr_linear`` (one opaque node for ``torch.export`` and
``torch.compile``, with dynamic batch sizes), which assembles the CSR tensor and calls torch's sparse
kernels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.condensed.layers.validation import check_bias, check_csr

__all__ = ["CSRLinear", "csr_linear", "csr_product", "to_csr"]

# torch warns once per process that CSR support is "in beta"; this layer uses it on purpose.
CSR_BETA_WARNING = "Sparse CSR tensor support is in beta state"


@contextmanager
def _csr_beta_warning_hidden() -> Iterator[None]:
    """Ignore torch's CSR beta warning inside the block only (no global filter)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CSR_BETA_WARNING, category=UserWarning)
        yield


def to_csr(weight: Tensor) -> Tensor:
    """``weight (out, in)`` as a torch sparse CSR tensor, without torch's CSR beta warning.

    torch raises that warning at most once per process, at the first CSR tensor built; the layers build
    theirs here or in :func:`_csr_tensor`, so the forward pass (which skips the filter: it costs ~3 us a
    call) does not raise it either.
    """
    with _csr_beta_warning_hidden():
        return weight.to_sparse_csr()


def _csr_tensor(crow_indices: Tensor, col_indices: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The ``shape`` CSR tensor of those parts (not validated), without torch's CSR beta warning."""
    with _csr_beta_warning_hidden():
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, shape, check_invariants=False)


def csr_product(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    """``(B, in) -> (B, out)`` with the CSR weight of those parts. Batch 1 uses ``F.linear(x, W_csr, b)``
    and larger batches ``addmm(b, W_csr, xᵀ)ᵀ``: the faster torch CSR call for each regime on CPU
    (measured with ``scripts/bench_condensed_cpu.py``). Under ``torch.inference_mode()`` batch 1 takes the ``addmm`` path too:
    torch's sparse ``F.linear`` raises "Cannot set version_counter for inference tensor" there."""
    out_features = crow_indices.shape[0] - 1
    weight = torch.sparse_csr_tensor(crow_indices, col_indices, values, (out_features, in_features), check_invariants=False)
    if x2d.shape[0] == 1 and not torch.is_inference_mode_enabled():
        return F.linear(x2d, weight, bias)
    if bias is None:
        return torch.mm(weight, x2d.t()).t().contiguous()
    return torch.addmm(bias[:, None], weight, x2d.t()).t().contiguous()


@torch.library.custom_op("lightning_srigl::csr_linear", mutates_args=())
def csr_linear(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    """:func:`csr_product` as one op, for tracing, compiling and exporting."""
    return csr_product(x2d, crow_indices, col_indices, values, bias, in_features)


@csr_linear.register_fake
def _csr_linear_fake(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    return x2d.new_empty((x2d.shape[0], crow_indices.shape[0] - 1))


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

    @property
    def weight(self) -> Tensor:
        """The ``(out, in)`` sparse CSR weight (a view of the buffers)."""
        return _csr_tensor(self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features))

    def spec_args(self) -> dict[str, int | bool]:
        """Plain constructor facts for :func:`~lightning_srigl.condensed.serialization.save_condensed`."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> CSRLinear:
        """Rebuild (validated) from :meth:`spec_args` and the layer's ``state_dict`` tensors."""
        shape = (args["out_features"], args["in_features"])
        weight = _csr_tensor(tensors["crow_indices"], tensors["col_indices"], tensors["values"], shape)
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
