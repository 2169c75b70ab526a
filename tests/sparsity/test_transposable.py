"""Transposable N:M masks: exact solvers (pattern enumeration, LP) and the greedy 2-approximation."""

import itertools
import sys

import pytest
import torch

from lightning_srigl.sparsity.diversity import count_transposable_patterns
from lightning_srigl.sparsity.nm import is_nm
from lightning_srigl.sparsity.transposable import (
    is_transposable_nm,
    tile_view,
    transposable_nm_mask,
    transposable_patterns,
    untile_view,
)


def random_scores(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).abs()


def kept_per_tile(scores: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    return (tile_view(scores, m) * tile_view(mask, m)).sum(dim=(1, 2))


def test_tile_view_uses_out_by_in_tiles_and_round_trips() -> None:
    linear = torch.arange(8 * 12).reshape(8, 12)
    tiles = tile_view(linear, 4)
    assert tiles.shape == (6, 4, 4)
    assert torch.equal(tiles[1], linear[0:4, 4:8])
    assert torch.equal(tiles[3], linear[4:8, 0:4])
    conv = torch.arange(4 * 8 * 2 * 3).reshape(4, 8, 2, 3)
    conv_tiles = tile_view(conv, 4)
    assert conv_tiles.shape == (12, 4, 4)
    assert torch.equal(conv_tiles[0], conv[:, 0:4, 0, 0])
    assert torch.equal(conv_tiles[1], conv[:, 4:8, 0, 0])
    assert torch.equal(conv_tiles[2], conv[:, 0:4, 0, 1])
    assert torch.equal(untile_view(conv_tiles, conv.shape), conv)
    assert torch.equal(untile_view(tiles, linear.shape), linear)


@pytest.mark.parametrize(("n", "expected"), [(1, 24), (2, 90), (3, 24)])
def test_enumerated_4x4_patterns_are_distinct_and_complete(n: int, expected: int) -> None:
    patterns = transposable_patterns(4, n)
    assert patterns.shape == (expected, 4, 4)
    assert expected == count_transposable_patterns(4, n)
    assert torch.all(patterns.sum(dim=1) == n) and torch.all(patterns.sum(dim=2) == n)
    assert len({tuple(p.flatten().tolist()) for p in patterns}) == expected


@pytest.mark.parametrize(
    ("shape", "n", "m", "method"),
    [
        ((16, 32), 2, 4, "exact"),
        ((8, 8), 1, 4, "exact"),
        ((8, 12, 3, 3), 3, 4, "exact"),
        ((8, 4, 5), 2, 4, "exact"),
        ((16, 8), 4, 8, "exact"),
        ((8, 16, 2), 2, 8, "exact"),
        ((8, 8), 2, 4, "lp"),
    ],
)
def test_exact_masks_have_n_per_row_and_column_of_every_tile(shape: tuple, n: int, m: int, method: str) -> None:
    result = transposable_nm_mask(random_scores(*shape), n, m, method=method)
    assert result.mask.shape == shape and result.mask.dtype == torch.bool
    assert is_transposable_nm(result.mask, n, m)
    assert result.underfilled_fraction == 0.0 and result.underfilled_line_fraction == 0.0
    # Both W and W^T are N:M along their reduction dims, at every kernel position.
    for position in itertools.product(*(range(k) for k in shape[2:])):
        plane = result.mask[(slice(None), slice(None), *position)]
        assert is_nm(plane, n, m) and is_nm(plane.T, n, m)


def test_enumeration_equals_the_lp_optimum_on_random_tiles() -> None:
    scores = random_scores(16, 12, seed=3)  # 12 tiles of 4x4
    enumerated = transposable_nm_mask(scores, 2, 4, method="exact").mask
    lp = transposable_nm_mask(scores, 2, 4, method="lp").mask
    assert torch.allclose(kept_per_tile(scores, enumerated, 4), kept_per_tile(scores, lp, 4))


@pytest.mark.parametrize(("n", "m", "seed"), [(2, 4, 4), (1, 4, 5), (4, 8, 6), (2, 8, 7)])
def test_exact_bounds_the_greedy_within_factor_two(n: int, m: int, seed: int) -> None:
    scores = random_scores(4 * m, 4 * m, seed=seed)  # 16 tiles
    exact = kept_per_tile(scores, transposable_nm_mask(scores, n, m, method="exact").mask, m)
    greedy_mask = transposable_nm_mask(scores, n, m, method="greedy").mask
    greedy = kept_per_tile(scores, greedy_mask, m)
    greedy_tiles = tile_view(greedy_mask, m)
    complete = (greedy_tiles.sum(dim=1) == n).all(dim=1) & (greedy_tiles.sum(dim=2) == n).all(dim=1)
    assert complete.any()
    # Where the greedy tile is a valid exactly-n mask, the exact optimum cannot be below it.
    assert torch.all(exact[complete] >= greedy[complete] - 1e-12)
    assert torch.all(greedy >= 0.5 * exact)


def test_an_underfilled_greedy_tile_can_keep_more_magnitude_with_fewer_weights() -> None:
    # Greedy keeps 16, 15, 14, 13, 12, 11, 10 (7 weights, row 3 / column 3 under-filled) = 91; every
    # exactly-2-per-line mask must also use a zero entry and drop one of the large ones.
    scores = torch.tensor(
        [[16.0, 15.0, 0.0, 0.0], [14.0, 0.0, 13.0, 0.0], [0.0, 12.0, 11.0, 0.0], [0.0, 0.0, 0.0, 10.0]]
    )
    greedy = transposable_nm_mask(scores, 2, 4, method="greedy")
    exact = transposable_nm_mask(scores, 2, 4, method="exact").mask
    assert int(greedy.mask.sum()) == 7 and greedy.underfilled_fraction == 1.0
    best_valid = (scores * transposable_patterns(4, 2)).sum(dim=(1, 2)).max()
    assert (scores * exact).sum() == best_valid < (scores * greedy.mask).sum()


def test_exact_beats_every_valid_pattern() -> None:
    scores = random_scores(4, 4, seed=8)
    best = (scores * transposable_nm_mask(scores, 2, 4).mask).sum()
    assert torch.all(best >= (scores * transposable_patterns(4, 2)).sum(dim=(1, 2)) - 1e-12)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 8)])
def test_greedy_keeps_at_most_n_per_line_and_reports_its_underfill(n: int, m: int) -> None:
    scores = random_scores(8 * m, 4 * m, 3, seed=9)
    result = transposable_nm_mask(scores, n, m, method="greedy")
    assert is_transposable_nm(result.mask, n, m, exact=False)
    tiles = tile_view(result.mask, m)
    short = torch.cat([tiles.sum(dim=2), tiles.sum(dim=1)], dim=1) < n
    assert result.underfilled_fraction == pytest.approx(short.any(dim=1).double().mean().item())
    assert result.underfilled_line_fraction == pytest.approx(short.double().mean().item())
    assert is_transposable_nm(result.mask, n, m) == (result.underfilled_fraction == 0.0)


def test_greedy_underfills_where_the_exact_solver_does_not() -> None:
    # Greedy takes 16, 15 (row 0), 14, 13 (row 1), 12, 11 (row 2): columns 0-2 are then full, so
    # row 3 and column 3 can only get the entry 10 -> one kept each instead of two.
    scores = torch.tensor(
        [[16.0, 15.0, 1.0, 2.0], [14.0, 3.0, 13.0, 4.0], [5.0, 12.0, 11.0, 6.0], [7.0, 8.0, 9.0, 10.0]]
    )
    greedy = transposable_nm_mask(scores, 2, 4, method="greedy")
    assert greedy.mask[3].tolist() == [False, False, False, True]
    assert greedy.underfilled_fraction == 1.0
    assert greedy.underfilled_line_fraction == pytest.approx(2 / 8)
    assert not is_transposable_nm(greedy.mask, 2, 4)
    assert is_transposable_nm(transposable_nm_mask(scores, 2, 4).mask, 2, 4)


def test_is_transposable_nm_rejects_plain_nm_masks() -> None:
    plain = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # 2:4 per row, columns 0/1 hold 4
    assert is_nm(plain, 2, 4)
    assert not is_transposable_nm(plain, 2, 4)
    assert not is_transposable_nm(plain, 2, 4, exact=False)
    assert is_transposable_nm(torch.eye(4, dtype=torch.bool), 2, 4, exact=False)


def test_bad_shapes_and_methods_raise_value_error() -> None:
    with pytest.raises(ValueError, match="output dimension"):
        transposable_nm_mask(torch.ones(6, 8), 2, 4)
    with pytest.raises(ValueError, match="input dimension"):
        transposable_nm_mask(torch.ones(8, 6), 2, 4)
    with pytest.raises(ValueError, match="1 <= n < m"):
        is_transposable_nm(torch.ones(8, 8), 4, 4)
    with pytest.raises(ValueError, match="Unknown method"):
        transposable_nm_mask(torch.ones(8, 8), 2, 4, method="hungarian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m <= 4"):
        transposable_patterns(8, 4)


def test_lp_without_scipy_explains_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"pip install lightning-srigl\[transposable\]"):
        transposable_nm_mask(torch.ones(8, 8), 4, 8)
