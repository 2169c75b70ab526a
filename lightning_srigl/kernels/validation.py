"""Checks that the ops' inputs are well formed, run once when a layer is built or loaded (not per call).

The kernels index memory with the stored indices and trust them, so a layer never holds an index
outside its input width, a row outside its output width, or tensors whose shapes, dtypes or devices
disagree: a tampered or truncated file gets a ``ValueError`` here, never a segfault or garbage later.
The checks cost one pass over the indices (``O(nnz)``) and are not repeated per call.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

__all__ = ["check_bias", "check_condensed", "check_contiguous", "check_csr", "check_width"]

INDEX_DTYPES = (torch.int16, torch.int32)
INT16_MAX = 32767


def check_width(value: object, name: str) -> int:
    """``value`` as a positive ``int`` (a layer width), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_bias(bias: Tensor | None, out_features: int, like: Tensor) -> None:
    """``bias`` is ``None`` or an ``(out_features,)`` tensor of ``like``'s dtype and device."""
    if bias is None:
        return
    if not isinstance(bias, Tensor) or tuple(bias.shape) != (out_features,):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must be a ({out_features},) tensor or None, got {shape}")
    if bias.dtype != like.dtype or bias.device != like.device:
        raise ValueError(
            f"bias is {bias.dtype} on {bias.device} but the weights are {like.dtype} on {like.device}; "
            "move both with module.to(...)"
        )


def check_condensed(values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int, out_features: int) -> None:
    """Validate the buffers of a [`CondensedLinear`][lightning_srigl.condensed.layers.linear.CondensedLinear].

    Args:
        values: ``(A, k)`` floating weights of the ``A`` active neurons.
        indices: ``(A, k)`` int16 (``in_features <= 32767``) or int32 input columns, each row strictly
            increasing inside ``[0, in_features)``.
        active_rows: ``(A,)`` integer output rows, strictly increasing inside ``[0, out_features)``.
        in_features, out_features: the layer's widths.

    Raises:
        ValueError: naming the first tensor that does not fit and what was expected.
    """
    for name, tensor in (("values", values), ("indices", indices), ("active_rows", active_rows)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if values.dim() != 2 or not values.is_floating_point():
        raise ValueError(f"values must be a floating (A, k) tensor, got {values.dtype} of shape {tuple(values.shape)}")
    n_active = values.shape[0]
    if indices.shape != values.shape:
        raise ValueError(f"indices has shape {tuple(indices.shape)}, expected that of values {tuple(values.shape)}")
    if indices.dtype not in INDEX_DTYPES:
        raise ValueError(f"indices must be int16 or int32, got {indices.dtype}")
    if indices.dtype == torch.int16 and in_features > INT16_MAX:
        raise ValueError(f"int16 indices cannot address in_features={in_features} > {INT16_MAX}; store them as int32")
    if active_rows.shape != (n_active,) or active_rows.dtype.is_floating_point or active_rows.dtype == torch.bool:
        raise ValueError(
            f"active_rows must be an integer ({n_active},) tensor (one row per active neuron), got "
            f"{active_rows.dtype} of shape {tuple(active_rows.shape)}"
        )
    check_contiguous(values=values, indices=indices)
    if n_active > out_features:
        raise ValueError(f"{n_active} active neurons cannot fit out_features={out_features}")
    if values.shape[1] > in_features:
        raise ValueError(f"fan-in {values.shape[1]} exceeds in_features={in_features}")
    if len({values.device, indices.device, active_rows.device}) != 1:
        raise ValueError("values, indices and active_rows must be on one device; move the layer with module.to(...)")
    check_sorted_in_range(indices, "indices", in_features, "along each row (sorted, no repeated input)")
    check_sorted_in_range(active_rows, "active_rows", out_features, "(sorted, each output row once)")


def check_sorted_in_range(t: Tensor, name: str, limit: int, order: str) -> None:
    """Every entry of ``t`` in ``[0, limit)`` and its last dim strictly increasing, else ``ValueError``."""
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= limit):
        raise ValueError(
            f"{name} must lie in [0, {limit}), found values from {int(t.min())} to {int(t.max())}: the layer is corrupt"
        )
    if t.shape[-1] > 1 and not bool((t[..., 1:] > t[..., :-1]).all()):
        raise ValueError(f"{name} must increase strictly {order}")


def check_contiguous(**tensors: Tensor) -> None:
    """Each named tensor is contiguous (the kernels read it row by row), else ``ValueError``."""
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernels read it row by row); pass {name}.contiguous()")


def check_csr(weight: Tensor) -> None:
    """Validate a 2-D sparse CSR weight: layout, floating values and in-range, consistent indices."""
    if not isinstance(weight, Tensor) or weight.layout != torch.sparse_csr or weight.dim() != 2:
        raise ValueError("weight must be a 2-D torch.sparse_csr tensor (e.g. dense_weight.to_sparse_csr())")
    if not weight.is_floating_point():
        raise ValueError(f"weight values must be floating, got {weight.dtype}")
    try:
        torch._validate_sparse_csr_tensor_args(
            weight.crow_indices(), weight.col_indices(), weight.values(), weight.shape
        )
    except RuntimeError as error:
        raise ValueError(f"the CSR weight is corrupt: {error}") from None
