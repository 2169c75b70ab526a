"""Dynamic N:M drop-and-grow: exact N:M after every update, drop by magnitude, grow by gradient."""

from __future__ import annotations

import pytest
import torch

from lightning_srigl.sparsity import is_nm
from lightning_srigl.sparsity.nm_dynamic import nm_drop_grow, random_nm_mask


def _layer(shape: tuple[int, ...], n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = random_nm_mask(shape, n, m, g)
    weight = torch.randn(shape, generator=g) * mask
    grad = torch.randn(shape, generator=g)
    return weight, mask, grad


CASES = [
    ((8, 16), 2, 4),
    ((8, 16), 1, 4),
    ((8, 16), 4, 8),
    ((6, 8, 3, 3), 2, 4),
    ((6, 8, 3, 3), 4, 8),
    ((4, 12, 5), 1, 4),
]


@pytest.mark.parametrize(("shape", "n", "m"), CASES)
@pytest.mark.parametrize("drop_fraction", [0.0, 0.3, 1.0])
def test_update_keeps_exact_nm(shape: tuple[int, ...], n: int, m: int, drop_fraction: float) -> None:
    weight, mask, grad = _layer(shape, n, m)
    update = nm_drop_grow(weight, mask, grad, n=n, m=m, drop_fraction=drop_fraction)
    assert is_nm(update.mask, n, m)
    assert update.n_prune == int(int(mask.sum()) * drop_fraction)
    assert not (update.grown & mask).any()
    assert torch.equal(update.grown, update.mask & ~mask)


def test_drops_smallest_magnitudes_and_grows_largest_gradients() -> None:
    # One row, two groups of 4, 2:4. Group 0 keeps {0, 1}, group 1 keeps {4, 5}.
    weight = torch.tensor([[5.0, 0.1, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0]])
    mask = weight != 0
    grad = torch.tensor([[0.0, 0.0, 0.2, 0.9, 0.0, 0.0, 0.5, 0.1]])
    update = nm_drop_grow(weight, mask, grad, n=2, m=4, drop_fraction=0.25)  # drops 1 of 4: |0.1| at index 1
    assert update.n_prune == 1
    expected = torch.tensor([[True, False, False, True, True, True, False, False]])
    assert torch.equal(update.mask, expected)  # group 0 regrows index 3 (largest |grad| 0.9)
    assert torch.equal(update.grown, torch.tensor([[False, False, False, True, False, False, False, False]]))


def test_dropped_position_can_be_regrown() -> None:
    weight = torch.tensor([[5.0, 0.1, 0.0, 0.0]])
    grad = torch.tensor([[0.0, 9.0, 0.2, 0.3]])
    update = nm_drop_grow(weight, weight != 0, grad, n=2, m=4, drop_fraction=0.5)
    assert torch.equal(update.mask, weight != 0)  # index 1 dropped, then regrown by its large gradient
    assert not update.grown.any()
    assert bool(update.regrown[0, 1])


def test_random_mask_is_deterministic_per_seed() -> None:
    a = random_nm_mask((16, 32), 2, 4, torch.Generator().manual_seed(3))
    b = random_nm_mask((16, 32), 2, 4, torch.Generator().manual_seed(3))
    c = random_nm_mask((16, 32), 2, 4, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert is_nm(a, 2, 4)


def test_bad_inputs_raise() -> None:
    weight, mask, grad = _layer((4, 8), 2, 4)
    with pytest.raises(ValueError, match="not divisible"):
        random_nm_mask((4, 6), 2, 4, None)
    with pytest.raises(ValueError, match="exactly 2:4"):
        nm_drop_grow(weight, torch.ones_like(mask), grad, n=2, m=4, drop_fraction=0.1)
    with pytest.raises(ValueError, match="drop_fraction"):
        nm_drop_grow(weight, mask, grad, n=2, m=4, drop_fraction=1.5)
    with pytest.raises(ValueError, match="same shape"):
        nm_drop_grow(weight, mask, grad[:, :4], n=2, m=4, drop_fraction=0.1)
