"""The MNIST-1D CNN: shapes, bad arguments, and the sparse fan-in its docs promise at 95 and 99 % (ERK)."""

from __future__ import annotations

import pytest
import torch

from example_projects.mnist1d_cnn.model import MNIST1DCNN, Conv1DNet
from lightning_srigl.sparsity import erk_densities, layer_budgets


def test_forward_takes_flat_or_channel_signals() -> None:
    net = MNIST1DCNN().net
    x = torch.randn(3, 40)
    logits = net(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(net(x.unsqueeze(1)), logits)
    assert [tuple(conv.weight.shape) for conv in net.convs] == [(64, 1, 11)] + [(64, 64, 11)] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 10}, r"kernel_size must be odd"),
        ({"depth": 0}, r"channels, depth and num_classes must be >= 1"),
    ],
)
def test_bad_shapes_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Conv1DNet(**kwargs)


@pytest.mark.parametrize(("sparsity", "fan_in"), [(0.95, 28), (0.99, 5)])
def test_erk_gives_the_inner_convolutions_the_documented_fan_in(sparsity: float, fan_in: int) -> None:
    """SRigL's constant fan-in of a 64 -> 64 convolution is its ERK budget over its 64 output channels."""
    net = MNIST1DCNN().net
    shapes = [tuple(layer.weight.shape) for layer in [*net.convs, net.head]]
    budgets = layer_budgets(shapes, erk_densities(shapes, sparsity))
    assert [budget // 64 for budget in budgets[1:4]] == [fan_in] * 3
