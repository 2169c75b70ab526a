"""The ``lightning_srigl::csr_linear`` op: ``(B, in) -> (B, out)`` with a weight given as the three dense
parts of a torch sparse CSR matrix (``crow_indices (out + 1,)``, ``col_indices (nnz,)``, ``values (nnz,)``),
assembled into a CSR tensor and multiplied with torch's sparse kernels. One opaque node for
``torch.export`` and ``torch.compile``, with dynamic batch sizes. The layer is
[`CSRLinear`][lightning_srigl.condensed.layers.csr.CSRLinear].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_srigl.kernels import fakes

__all__ = ["CSR_BETA_WARNING", "csr_linear", "csr_product", "csr_tensor", "to_csr"]

# torch warns once per process that CSR support is "in beta"; this op uses it on purpose.
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
    theirs here or in `csr_tensor`, so the forward pass (which skips the filter: it costs ~3 us a
    call) does not raise it either.
    """
    with _csr_beta_warning_hidden():
        return weight.to_sparse_csr()


def csr_tensor(crow_indices: Tensor, col_indices: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The ``shape`` CSR tensor of those parts (not validated), without torch's CSR beta warning."""
    with _csr_beta_warning_hidden():
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, shape, check_invariants=False)


def csr_product(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    """``(B, in) -> (B, out)`` with the CSR weight of those parts. Batch 1 uses ``F.linear(x, W_csr, b)``
    and larger batches ``addmm(b, W_csr, xᵀ)ᵀ``: the faster torch CSR call for each regime on CPU
    (measured with ``scripts/bench_condensed_cpu.py``). Under ``torch.inference_mode()`` batch 1 takes the ``addmm``
    path too:
    torch's sparse ``F.linear`` raises "Cannot set version_counter for inference tensor" there."""
    out_features = crow_indices.shape[0] - 1
    weight = torch.sparse_csr_tensor(
        crow_indices, col_indices, values, (out_features, in_features), check_invariants=False
    )
    if x2d.shape[0] == 1 and not torch.is_inference_mode_enabled():
        return F.linear(x2d, weight, bias)
    if bias is None:
        return torch.mm(weight, x2d.t()).t().contiguous()
    return torch.addmm(bias[:, None], weight, x2d.t()).t().contiguous()


@torch.library.custom_op("lightning_srigl::csr_linear", mutates_args=())
def csr_linear(
    x2d: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None, in_features: int
) -> Tensor:
    """`csr_product` as one op, for tracing, compiling and exporting."""
    return csr_product(x2d, crow_indices, col_indices, values, bias, in_features)


csr_linear.register_fake(fakes.csr_linear)
