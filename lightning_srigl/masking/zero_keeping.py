"""Which optimizer steps keep masked weights at exactly zero, so that re-masking them can be skipped.

Suppose that before a step, at every inactive position ``i`` of a masked weight ``w``,

    (a) ``w_i = 0``, (b) ``g_i = 0`` (the gradient was masked) and (c) every element-wise state slot
    ``s_i = 0`` (zeroed at every topology update and at the start of fit, after a restore).

A step that, from (a)-(c), leaves ``w_i = 0`` and ``s_i = 0`` keeps the invariant, so by induction
inactive weights stay exactly zero for as long as gradients are masked before every step: the weights
need re-masking only where the invariant is (re)established. The derivations, with ``lr``, momentum
``mu``, dampening ``tau``, weight decay ``lam``, ``beta1``, ``beta2``, ``eps`` as in ``torch.optim``
(single-tensor, ``foreach`` and ``fused`` implementations compute the same expressions):

**SGD** (any momentum, dampening, weight decay, Nesterov, maximize)::

    d = g + lam * w             = 0 + lam * 0   = 0     (maximize: d = -g + lam * w = 0)
    b = mu * b + (1 - tau) * d  = 0                     (first step: b = d = 0)
    d = d + mu * b  or  d = b   = 0                     (Nesterov or not)
    w = w - lr * d              = 0 - lr * 0    = 0

**Adam** (L2 or decoupled weight decay, amsgrad, maximize)::

    g = g + lam * w                        = 0          (decoupled: w = w * (1 - lr * lam) = 0)
    m = beta1 * m + (1 - beta1) * g        = 0
    v = beta2 * v + (1 - beta2) * g * g    = 0          (amsgrad: v_max = max(v_max, v) = 0)
    w = w - lr / bc1 * m / (sqrt(v / bc2) + eps) = 0 - lr / bc1 * 0 / eps = 0

which needs ``eps > 0`` (``0 / 0`` is NaN). **AdamW** is Adam with decoupled weight decay.

Every product above is ``finite * 0``, so every hyperparameter must be finite (``inf * 0`` is NaN).
Gradient clipping keeps ``g_i = 0``: by value, ``clamp(0, -c, c) = 0``; by norm, ``g * c`` with
``c = min(1, max_norm / (norm + 1e-6))``, finite unless the norm is NaN, i.e. unless the gradients
already are. Gradient accumulation sums into ``g`` before the masking, which happens once per step.

Anything else keeps the re-mask: another optimizer class (a subclass too: its ``step`` may differ),
a ``capturable`` step (its ``lr = 0`` case divides by zero), step hooks on the optimizer (they may
move weights), hyperparameters that are not finite or cannot be read without a device sync.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim import optimizer as optimizer_module

from lightning_srigl.masking.masks import MaskedParameters
from lightning_srigl.masking.optim_state import zero_optimizer_state_

ZERO_KEEPING_OPTIMIZERS: tuple[type[Optimizer], ...] = (SGD, Adam, AdamW)

__all__ = ["ZERO_KEEPING_OPTIMIZERS", "establish_zeros_", "weight_remask_reason"]


def _non_finite_option(group: dict[str, Any]) -> str | None:
    """The first option of a param group that is not a finite number or cannot be read on the host."""
    for key, value in group.items():
        if key == "params" or value is None or isinstance(value, (bool, str)):
            continue
        values: Iterable[Any] = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, Tensor):
                if item.device.type != "cpu" or item.numel() != 1:
                    return f"{key} is a tensor on {item.device} (reading it would synchronise)"
                item = item.item()
            if isinstance(item, (int, float)) and not math.isfinite(item):
                return f"{key}={value!r} is not finite"
    return None


def weight_remask_reason(optimizer: Optimizer) -> str | None:
    """Why weights must be re-masked after ``optimizer.step()``, or ``None`` when the step keeps them zero.

    ``None`` means: given masked gradients and element-wise optimizer state that is zero at inactive
    positions, this step leaves every inactive weight at exactly zero (see the module's derivation).
    Read per step: learning-rate schedulers change the param groups.

    Args:
        optimizer: the optimizer that steps masked weights.

    Returns:
        A short reason such as ``"RMSprop is not one of SGD, Adam, AdamW"``, or ``None``.
    """
    name = type(optimizer).__name__
    if type(optimizer) not in ZERO_KEEPING_OPTIMIZERS:
        return f"{name} is not one of {', '.join(c.__name__ for c in ZERO_KEEPING_OPTIMIZERS)}"
    hooks = (
        getattr(optimizer, "_optimizer_step_pre_hooks", {}),
        getattr(optimizer, "_optimizer_step_post_hooks", {}),
        optimizer_module._global_optimizer_pre_hooks,
        optimizer_module._global_optimizer_post_hooks,
    )
    if any(hooks):
        return f"{name} has step hooks, which may move weights"
    for group in optimizer.param_groups:
        if group.get("capturable", False):
            return f"{name} is capturable"
        problem = _non_finite_option(group)
        if problem is not None:
            return f"{name}: {problem}"
        if isinstance(optimizer, Adam) and not float(group["eps"]) > 0:
            return f"{name}: eps={group['eps']!r} is not positive (0 / 0 is NaN)"
    return None


@torch.no_grad()
def establish_zeros_(masked: MaskedParameters, optimizers: Iterable[Optimizer]) -> None:
    """Zero every masked weight, and its element-wise state in ``optimizers``, at inactive positions.

    Establishes conditions (a) and (c) above, e.g. after a checkpoint was restored; (b) is the
    gradient masking before every step.
    """
    optimizers = list(optimizers)
    masked.apply_to_weights_()
    for fqn, mask in masked.masks().items():
        inactive = masked.local(fqn, mask).logical_not()
        for optimizer in optimizers:
            zero_optimizer_state_(optimizer, masked.param(fqn), inactive)
