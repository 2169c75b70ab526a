"""Keep optimizer state consistent with the masks.

Optimizers keep per-parameter state (SGD ``momentum_buffer``; Adam/AdamW ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``; ...). A weight that was inactive, or that has just been grown,
must start from zero state, otherwise stale momentum moves it on the next step. The state slots are
found generically: every tensor in ``optimizer.state[param]`` with the parameter's shape is treated
as element-wise state. Factored states with other shapes (e.g. Adafactor's row/column statistics)
are left untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_srigl.masking.sharding import local_part


@torch.no_grad()
def zero_optimizer_state_(optimizer: Optimizer, param: Tensor, positions: Tensor) -> int:
    """Zero, in place, every element-wise state tensor of ``param`` at ``positions``.

    Args:
        optimizer: the optimizer that updates ``param``.
        param: a parameter of shape ``S``.
        positions: ``BoolTensor(S)``, True where the state must be zeroed; for a parameter sharded by
            rows (a ``DTensor``), a mask of the same layout or this process's part of it.

    Returns:
        The number of state tensors that were zeroed (0 when the optimizer has no state yet).
    """
    positions, local = local_part(positions), local_part(param)
    if positions.shape != local.shape:
        raise ValueError(f"positions has shape {tuple(positions.shape)}, expected {tuple(local.shape)}")
    zeroed = 0
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            local_part(value).masked_fill_(positions.to(value.device), 0)
            zeroed += 1
    return zeroed
