"""Unstructured RigL: initial mask and the drop/grow update."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_srigl.sparsity import random_unstructured_mask, rigl_update


def test_random_unstructured_mask_count_and_determinism() -> None:
    mask = random_unstructured_mask((16, 8, 3, 3), 115, torch.Generator().manual_seed(0))
    assert mask.shape == (16, 8, 3, 3) and int(mask.sum()) == 115
    assert torch.equal(mask, random_unstructured_mask((16, 8, 3, 3), 115, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"budget must be in \[0, 1152\]"):
        random_unstructured_mask((16, 8, 3, 3), 2000, None)


def test_rigl_update_drops_smallest_and_grows_largest_gradients() -> None:
    mask = torch.tensor([[True, True, True, True, False, False, False, False]])
    weight = torch.tensor([[4.0, -3.0, 0.2, -0.1, 0, 0, 0, 0]])
    grad = torch.tensor([[0.0, 0.0, 0.0, 7.0, 0.5, 9.0, 0.1, 0.5]])
    update = rigl_update(weight, mask, grad, drop_fraction=0.5)
    assert (update.n_prune, update.n_keep) == (2, 2)
    # kept: |4|, |-3|; grow the top-2 |grad| among the rest: position 5 and the dropped position 3.
    assert update.mask.tolist() == [[True, True, False, True, False, True, False, False]]
    assert update.regrown.tolist() == [[False, False, False, True, False, True, False, False]]
    assert update.grown.tolist() == [[False, False, False, False, False, True, False, False]]
    assert (weight * update.mask)[0, 3] == -0.1  # dropped-and-regrown keeps its value


def test_rigl_update_prefers_active_zero_weights_when_few_are_nonzero() -> None:
    mask = torch.tensor([[False, True, True, False]])
    weight = torch.tensor([[0.0, 0.0, 2.0, 0.0]])  # position 1 was just grown (value 0)
    update = rigl_update(weight, mask, torch.zeros(1, 4), drop_fraction=0.0)
    assert torch.equal(update.mask, mask)


@settings(settings.get_profile("sparsity"))
@given(
    rows=st.integers(1, 10),
    cols=st.integers(1, 16),
    density=st.floats(0.0, 1.0),
    drop_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_rigl_update_keeps_layer_nnz(rows: int, cols: int, density: float, drop_fraction: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = random_unstructured_mask((rows, cols), round(density * rows * cols), generator)
    weight = torch.randn(rows, cols, generator=generator) * mask
    grad = torch.randn(rows, cols, generator=generator)
    update = rigl_update(weight, mask, grad, drop_fraction=drop_fraction)
    assert int(update.mask.sum()) == int(mask.sum())
    assert update.n_prune == int(int(mask.sum()) * drop_fraction)
    kept = update.mask & ~update.regrown
    assert int(kept.sum()) == update.n_keep and not (kept & ~mask).any()
    assert torch.equal(update.grown, update.regrown & ~mask)
