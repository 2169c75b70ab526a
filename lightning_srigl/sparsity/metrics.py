"""Topology metrics of masks: density, active neurons, fan-in, mask change (SAD) and ITOP rate.

Masks are weight-shaped bool tensors ``(O, *rest)``; a neuron is a row of the ``(O, F)`` view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_srigl.sparsity.topk import as_rows, row_counts

__all__ = ["active_neurons", "density", "fan_in", "is_constant_fan_in", "itop_rate", "mask_change"]


def density(mask: Tensor) -> float:
    """Fraction of active entries of ``mask`` (any shape)."""
    return float(torch.count_nonzero(mask)) / max(mask.numel(), 1)


def fan_in(mask: Tensor) -> Tensor:
    """``(O,)`` int64 number of active weights in each row of a ``(O, *rest)`` mask."""
    return row_counts(as_rows(mask).bool())


def active_neurons(mask: Tensor) -> int:
    """Number of rows of a ``(O, *rest)`` mask with at least one active weight."""
    return int((fan_in(mask) > 0).sum())  # row counts are one vectorised pass; any(dim=1) is not


def mask_change(old: Tensor, new: Tensor) -> int:
    """Hamming distance between two masks (the sparse-topology change, "SAD")."""
    if old.shape != new.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(old.shape)} and {tuple(new.shape)}")
    return int(torch.count_nonzero(old != new))


def itop_rate(ever_active: Tensor) -> float:
    """In-time over-parameterisation rate: fraction of positions that have ever been active."""
    return density(ever_active)


def is_constant_fan_in(mask: Tensor) -> bool:
    """True when every non-empty row of a ``(O, *rest)`` mask has the same number of weights."""
    counts = fan_in(mask)
    nonempty = counts[counts > 0]
    return bool(nonempty.numel() == 0 or (nonempty == nonempty[0]).all())
