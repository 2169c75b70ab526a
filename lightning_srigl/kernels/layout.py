"""The condensed layout the ops take, built from a masked weight.

A masked weight whose non-empty rows all keep ``k`` inputs is stored as ``values (A, k)`` and
``indices (A, k)`` (each row's kept columns, increasing) for its ``A`` active rows, ``active_rows (A,)``.
Indices are int16 while every column fits (the kernels read half the bytes), else int32. A conv weight
``(out, in / groups, *kernel)`` is viewed as ``(out, in / groups * prod(kernel))``, and its indices are
taps over *all* ``in`` channels (``c * kh * kw + ky * kw + kx``), so the kernels need no notion of groups.
``kernels/validation.py`` checks a layout read back from a file.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_srigl.kernels.validation import INT16_MAX

__all__ = ["condense", "condense_conv", "index_dtype", "pad_fan_in"]

INT16_MAX_IN_FEATURES = INT16_MAX


def index_dtype(in_features: int) -> torch.dtype:
    """int16 while every column index fits (``in_features <= 32767``), else int32."""
    return torch.int16 if in_features <= INT16_MAX_IN_FEATURES else torch.int32


def condense(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a masked ``(out, in)`` weight into ``values (A, k)``, ``indices (A, k)``, ``active_rows (A,)``.

    Raises:
        ValueError: when shapes differ or the non-empty rows do not share one fan-in.
    """
    if weight.dim() != 2 or mask.shape != weight.shape:
        raise ValueError(
            f"weight must be (out, in) and mask the same shape; got {tuple(weight.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.to(device=weight.device, dtype=torch.bool)
    fan_in = mask.sum(dim=1)
    active_rows = torch.nonzero(fan_in > 0).flatten()
    active_fan_in = fan_in[active_rows]
    if active_rows.numel() and bool((active_fan_in != active_fan_in[0]).any()):
        raise ValueError(
            "CondensedLinear needs every non-empty mask row to keep the same number of inputs (constant "
            f"fan-in, as SRigL and N:M masks do); this mask has fan-ins from {int(active_fan_in.min())} to "
            f"{int(active_fan_in.max())}. Keep it dense, or use a CSR layer (weight.to_sparse_csr())."
        )
    k = int(active_fan_in[0]) if active_rows.numel() else 0
    active_mask = mask[active_rows]
    indices = torch.nonzero(active_mask)[:, 1].reshape(-1, k) if k else active_mask.new_zeros((0, 0), dtype=torch.long)
    values = weight.detach()[active_rows].gather(1, indices)
    return values.contiguous(), indices.to(index_dtype(weight.shape[1])).contiguous(), active_rows


def pad_fan_in(mask: Tensor) -> Tensor:
    """Give every non-empty row of ``mask (out, in)`` the largest fan-in by adding its first inactive columns.

    With the weight zero there, the layer is unchanged: this keeps a layer condensable after
    folding removed some of its input columns (which leaves rows with unequal fan-in).
    """
    fan_in = mask.sum(dim=1)
    missing = (fan_in.max() - fan_in) * (fan_in > 0) if mask.numel() else fan_in
    inactive = ~mask
    return mask | (inactive & (inactive.cumsum(dim=1) <= missing[:, None]))


def condense_conv(weight: Tensor, mask: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a masked conv weight ``(out, in / groups, *kernel)`` into ``values (A, k)``, ``indices (A, k)``
    (taps over all ``in`` channels, see the module docstring) and ``active_rows (A,)``.

    Raises:
        ValueError: shapes differ, ``out`` is not divisible by ``groups``, or the non-empty rows do not
            share one fan-in.
    """
    if mask.shape != weight.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the weight's shape {tuple(weight.shape)}")
    out, per_group = weight.shape[0], weight[0].numel()
    if out % groups:
        raise ValueError(f"out_channels={out} is not divisible by groups={groups}")
    values, local, rows = condense(weight.detach().reshape(out, per_group), mask.reshape(out, per_group))
    group = rows // (out // groups)
    taps = local.long() + (group * per_group)[:, None]
    return values, taps.to(index_dtype(per_group * groups)).contiguous(), rows
