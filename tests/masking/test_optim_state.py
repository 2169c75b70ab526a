"""Optimizer state is zeroed at the requested positions, generically by shape."""

import pytest
import torch
from torch import nn

from lightning_srigl.masking import zero_optimizer_state_


def _stepped(optimizer_cls, **kwargs) -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    optimizer = optimizer_cls(layer.parameters(), lr=0.1, **kwargs)
    layer(torch.randn(8, 4)).pow(2).sum().backward()
    optimizer.step()
    return layer, optimizer


@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs", "slots"),
    [
        (torch.optim.SGD, {"momentum": 0.9}, 1),
        (torch.optim.AdamW, {"amsgrad": True}, 3),
        (torch.optim.Adam, {}, 2),
    ],
)
def test_state_slots_shaped_like_the_param_are_zeroed(optimizer_cls, kwargs, slots) -> None:
    layer, optimizer = _stepped(optimizer_cls, **kwargs)
    positions = torch.zeros(3, 4, dtype=torch.bool)
    positions[0, 1] = positions[2, 3] = True
    assert zero_optimizer_state_(optimizer, layer.weight, positions) == slots
    state = optimizer.state[layer.weight]
    tensors = [v for v in state.values() if v.shape == layer.weight.shape]
    assert len(tensors) == slots
    for value in tensors:
        assert torch.all(value[positions] == 0) and torch.all(value[~positions] != 0)
    if "step" in state:
        assert float(state["step"]) == 1.0  # scalar state untouched


def test_no_state_yet_zeroes_nothing() -> None:
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(layer.parameters())
    assert zero_optimizer_state_(optimizer, layer.weight, torch.ones(3, 4, dtype=torch.bool)) == 0


def test_positions_of_the_wrong_shape_are_rejected() -> None:
    layer, optimizer = _stepped(torch.optim.SGD, momentum=0.9)
    with pytest.raises(ValueError, match="expected \\(3, 4\\)"):
        zero_optimizer_state_(optimizer, layer.weight, torch.ones(4, 3, dtype=torch.bool))
