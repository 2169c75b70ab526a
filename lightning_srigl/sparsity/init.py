"""Sparse re-initialisation of weights for their mask ("gradient-flow" init, Evci et al., 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_srigl.sparsity.topk import as_rows

__all__ = ["sparse_init_"]


@torch.no_grad()
def sparse_init_(
    weight: Tensor, mask: Tensor, generator: torch.Generator | None = None, std_quirk: bool = False
) -> Tensor:
    """Redraw ``weight`` in place from ``N(0, std_i^2)`` per neuron, scaled to its sparse fan-in.

    ``std_i = sqrt(2 / fan_in_i)`` with ``fan_in_i`` the number of active weights of row ``i``
    (Kaiming-normal for the sparse layer). The reference passes ``2 / fan_in_i`` as the std;
    ``std_quirk=True`` reproduces that. Inactive positions and empty rows are set to 0.

    Args:
        weight: ``(O, *rest)`` floating-point weights, overwritten.
        mask: ``(O, *rest)`` bool, True = active.
        generator: source of randomness; the noise is drawn on its device (CPU when ``None``,
            global RNG), then moved to ``weight``'s device.
        std_quirk: use the reference's std ``2 / fan_in`` instead of ``sqrt(2 / fan_in)``.

    Returns:
        ``weight``.
    """
    if mask.shape != weight.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor shaped like weight {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    fan_in = as_rows(mask).sum(dim=1).to(torch.float64)
    variance_or_std = 2.0 / fan_in.clamp(min=1)
    std = variance_or_std if std_quirk else variance_or_std.sqrt()
    device = generator.device if generator is not None else torch.device("cpu")
    values = torch.randn(as_rows(weight).shape, generator=generator, device=device, dtype=torch.float64)
    values.mul_(std.to(device).unsqueeze(1)).mul_(as_rows(mask).to(device))  # in place: no float64 temporaries
    weight.copy_(values.reshape(weight.shape))
    return weight
