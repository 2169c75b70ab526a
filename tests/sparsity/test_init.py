"""Sparse (gradient-flow) re-initialisation."""

from __future__ import annotations

import pytest
import torch

from lightning_srigl.sparsity import random_constant_fan_in_mask, sparse_init_


def _mask_with_fan_ins(fan_ins: list[int], cols: int) -> torch.Tensor:
    mask = torch.zeros(len(fan_ins), cols, dtype=torch.bool)
    for row, k in enumerate(fan_ins):
        mask[row, :k] = True
    return mask


@pytest.mark.parametrize("std_quirk", [False, True])
def test_sparse_init_std_follows_sparse_fan_in(std_quirk: bool) -> None:
    fan_ins = [8, 32, 128]
    mask = _mask_with_fan_ins(fan_ins, 20000)
    mask[:, 128:] = True  # many samples per row; fan-in counted below
    counts = mask.sum(dim=1).tolist()
    weight = torch.empty(mask.shape)
    sparse_init_(weight, mask, torch.Generator().manual_seed(0), std_quirk=std_quirk)
    for row, k in enumerate(counts):
        expected = 2 / k if std_quirk else (2 / k) ** 0.5
        assert weight[row][mask[row]].std().item() == pytest.approx(expected, rel=0.03)


def test_sparse_init_zeroes_inactive_and_empty_rows_and_is_deterministic() -> None:
    mask = _mask_with_fan_ins([3, 0, 5], 6)
    first = sparse_init_(torch.full((3, 6), 7.0), mask, torch.Generator().manual_seed(1))
    second = sparse_init_(torch.full((3, 6), 7.0), mask, torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert (first[~mask] == 0).all()
    assert (first[mask] != 0).all()


def test_sparse_init_works_in_place_on_conv_weights() -> None:
    weight = torch.ones(4, 3, 3, 3, dtype=torch.float64)
    mask = random_constant_fan_in_mask(weight.shape, 40, torch.Generator().manual_seed(0))
    out = sparse_init_(weight, mask)
    assert out is weight and weight.dtype == torch.float64
    assert torch.equal(weight != 0, mask)


def test_sparse_init_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="bool tensor shaped like weight"):
        sparse_init_(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))
