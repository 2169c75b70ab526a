"""Argument checks shared by the sparsity math, with errors that say how to fix the input."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_drop_fraction", "check_sparsity", "check_update_inputs"]


def check_sparsity(s: float, name: str = "sparsity") -> float:
    """Return ``s`` as a float if it is a valid sparsity in ``[0, 1)``, else raise ``ValueError``."""
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise ValueError(
            f"{name} must be a number in [0, 1) (the fraction of weights that are zero, "
            f"e.g. 0.9 keeps 10%), got {s!r}"
        )
    return float(s)


def check_drop_fraction(f: float) -> float:
    """Return ``f`` as a float if it is a valid drop fraction in ``[0, 1]``, else raise."""
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
        raise ValueError(
            f"drop_fraction must be in [0, 1] (fraction of active weights replaced), got {f!r}; "
            "compute it with cosine_drop_fraction(step, t_end, alpha)"
        )
    return float(f)


def check_update_inputs(weight: Tensor, mask: Tensor, dense_grad: Tensor) -> None:
    """Check that a topology update gets a weight, a bool mask and a dense gradient of one shape."""
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have shape (out, in, ...) with at least 2 dims, got {tuple(weight.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a torch.bool tensor (True = active), got dtype {mask.dtype}")
    if mask.shape != weight.shape or dense_grad.shape != weight.shape:
        raise ValueError(
            "weight, mask and dense_grad must have the same shape, got "
            f"{tuple(weight.shape)}, {tuple(mask.shape)} and {tuple(dense_grad.shape)}"
        )
    if not dense_grad.is_floating_point() or not dense_grad.isfinite().all():
        raise ValueError(
            "dense_grad contains non-finite values (inf/NaN); skip this topology update "
            "(e.g. an AMP overflow step) instead of scoring with it"
        )

