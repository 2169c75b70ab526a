"""Masked convolutions with constant fan-in and ablated filters, shared by the CPU and Triton conv tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (N, C, H, W, out, kernel, stride, padding, dilation, groups): 3x3 with and without padding, strided,
# 1x1 (read in place) and strided 1x1, patchify (kernel = stride = 16), dilated, grouped and depthwise,
# non-square kernels and images, an image smaller than a block, odd sizes, ResNet's 7x7/2 stem (a tap panel,
# csrc/conv.h), a strided 3x3 with more taps than a panel holds at blocks of 32 and 64.
GEOMETRIES = [
    (1, 8, 10, 10, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 6, 9, 7, 12, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (1, 16, 14, 14, 32, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 16, 13, 11, 24, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (1, 3, 32, 48, 8, (16, 16), (16, 16), (0, 0), (1, 1), 1),
    (1, 8, 11, 13, 8, (3, 3), (1, 1), (2, 2), (2, 2), 2),
    (2, 8, 12, 12, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8),
    (3, 5, 7, 9, 9, (5, 3), (3, 2), (2, 1), (2, 1), 1),
    (1, 4, 2, 2, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (1, 6, 5, 5, 6, (3, 3), (1, 1), (0, 0), (1, 1), 3),
    (2, 3, 32, 30, 16, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    (1, 48, 12, 12, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),
]


def masked_conv(
    geometry: tuple, density: float = 0.3, ablated: float = 0.25, bias: bool = True, seed: int = 0
) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    """An ``nn.Conv2d`` with the weight zero outside a constant-fan-in mask with ablated filters, that
    mask, and an input ``(N, C, H, W)``."""
    n, c, h, w, out, kernel, stride, padding, dilation, groups = geometry
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, out, kernel, stride, padding, dilation, groups, bias=bias)
    per_group = conv.weight[0].numel()
    fan_in = max(1, round(density * per_group))
    order = torch.argsort(torch.rand(out, per_group), dim=1)[:, :fan_in]
    mask = torch.zeros(out, per_group, dtype=torch.bool).scatter_(1, order, True)
    mask[torch.rand(out) < ablated] = False
    mask = mask.view_as(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(mask)
        if bias:
            conv.bias.normal_()
    return conv, mask, torch.randn(n, c, h, w)


@torch.no_grad()
def reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The masked dense convolution in float64."""
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Max abs difference at most ``tolerance`` times the output scale (its max abs value); empty outputs (batch 0)
    need equal shapes only."""
    assert actual.shape == expected.shape
    if expected.numel() == 0:
        return
    scale = max(float(expected.abs().max()), 1e-6)
    error = float((actual.double() - expected.double()).abs().max())
    assert error <= tolerance * scale, f"max abs diff {error:.3g} > {tolerance} x output scale {scale:.3g}"
