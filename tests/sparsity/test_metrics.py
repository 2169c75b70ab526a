"""Topology metrics of masks."""

from __future__ import annotations

import pytest
import torch

from lightning_srigl.sparsity import (
    active_neurons,
    density,
    fan_in,
    is_constant_fan_in,
    itop_rate,
    mask_change,
)

MASK = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)


def test_density_fan_in_and_active_neurons() -> None:
    assert density(MASK) == pytest.approx(4 / 12)
    assert fan_in(MASK).tolist() == [2, 0, 2]
    assert fan_in(MASK).dtype == torch.long
    assert active_neurons(MASK) == 2


def test_conv_mask_rows_are_flattened_filters() -> None:
    conv = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    conv[0, 1, 1, 1] = conv[0, 0, 0, 0] = conv[2, 1, 0, 0] = True
    assert fan_in(conv).tolist() == [2, 0, 1]
    assert active_neurons(conv) == 2
    assert not is_constant_fan_in(conv)


def test_is_constant_fan_in_ignores_empty_rows() -> None:
    assert is_constant_fan_in(MASK)
    assert is_constant_fan_in(torch.zeros(3, 4, dtype=torch.bool))
    uneven = MASK.clone()
    uneven[2, 0] = True
    assert not is_constant_fan_in(uneven)


def test_mask_change_is_hamming_distance() -> None:
    new = MASK.clone()
    new[0, 0], new[1, 3] = False, True
    assert mask_change(MASK, new) == 2
    assert mask_change(MASK, MASK) == 0
    with pytest.raises(ValueError, match="same shape"):
        mask_change(MASK, MASK.T)


def test_itop_rate_is_fraction_ever_active() -> None:
    ever = MASK | torch.tensor([[0, 0, 1, 0]] * 3, dtype=torch.bool)
    assert itop_rate(ever) == pytest.approx(7 / 12)
