"""N:M masks along the input dimension (Linear: in_features; Conv: input channels per kernel position)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_srigl.sparsity.nm import (
    check_nm,
    is_nm,
    nm_fan_in,
    nm_group_view,
    nm_mask,
    nm_ungroup_view,
    sr_ste_refine_term,
)

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (8, 16)]


@st.composite
def layer_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], int, int, int]:
    """(weight shape of a Linear/Conv1d/2d/3d layer, n, m, seed) with in-channels divisible by m."""
    n, m = draw(st.sampled_from(PATTERNS))
    kernel = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
    shape = (draw(st.integers(1, 5)), m * draw(st.integers(1, 3)), *kernel)
    return shape, n, m, draw(st.integers(0, 2**16))


def channels_last_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """Independent reference grouping: (K, C, *k) -> (K, *k, C) -> rows of m consecutive channels."""
    dims = (0, *range(2, t.dim()), 1)
    return t.permute(dims).reshape(-1, m)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(layer_cases())
def test_nm_mask_keeps_exactly_n_of_the_largest_per_group(case: tuple) -> None:
    shape, n, m, seed = case
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).abs()
    mask = nm_mask(scores, n, m)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    assert is_nm(mask, n, m)
    kept, groups = channels_last_groups(mask, m), channels_last_groups(scores, m)
    assert torch.all(kept.sum(dim=1) == n)
    smallest_kept = groups.masked_fill(~kept, math.inf).amin(dim=1)
    largest_dropped = groups.masked_fill(kept, -math.inf).amax(dim=1)
    assert torch.all(smallest_kept >= largest_dropped)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(layer_cases())
def test_group_view_round_trips_and_matches_channels_last_layout(case: tuple) -> None:
    shape, _, m, seed = case
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    groups = nm_group_view(t, m)
    assert torch.equal(groups, channels_last_groups(t, m))
    assert torch.equal(nm_ungroup_view(groups, shape), t)


def test_conv_groups_run_along_input_channels_at_each_kernel_position() -> None:
    # Conv2d weight (K=1, C=4, 1, 2): position 0 prefers channels 0, 1; position 1 prefers 2, 3.
    scores = torch.zeros(1, 4, 1, 2)
    scores[0, :, 0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    scores[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = nm_mask(scores, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, True, True]
    # A flat NCHW grouping would have mixed kernel positions: groups (c0p0, c0p1, c1p0, c1p1), ...
    assert nm_group_view(scores, 4).tolist() == [[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]]


def test_conv_group_order_is_output_then_kernel_then_channel_block() -> None:
    weight = torch.arange(2 * 8 * 2, dtype=torch.float32).reshape(2, 8, 2)  # Conv1d (K=2, C=8, k=2)
    groups = nm_group_view(weight, 4)
    assert groups.shape == (8, 4)
    assert torch.equal(groups[0], weight[0, 0:4, 0])
    assert torch.equal(groups[1], weight[0, 4:8, 0])
    assert torch.equal(groups[2], weight[0, 0:4, 1])
    assert torch.equal(groups[4], weight[1, 0:4, 0])


def test_linear_groups_are_consecutive_inputs_and_ties_keep_the_lower_index() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0]])
    mask = nm_mask(scores, 2, 4)
    assert mask.tolist() == [[True, True, False, False, False, True, True, False]]


def test_is_nm_detects_wrong_counts_and_accepts_numeric_masks() -> None:
    good = nm_mask(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), 2, 4)
    assert is_nm(good.float(), 2, 4)
    too_few = good.clone()
    too_few[0, good[0].nonzero()[0]] = False
    assert not is_nm(too_few, 2, 4)
    assert not is_nm(torch.ones(4, 8, dtype=torch.bool), 2, 4)


@pytest.mark.parametrize(
    ("shape", "n", "m", "message"),
    [
        ((8, 6), 2, 4, "not divisible by m=4"),
        ((16, 3, 7, 7), 2, 4, "Keep this layer dense"),
        ((8, 8), 0, 4, "1 <= n < m"),
        ((8, 8), 4, 4, "1 <= n < m"),
        ((8, 8), 1, 1, "1 <= n < m"),
        ((8,), 2, 4, "at least 2 dims"),
    ],
)
def test_check_nm_rejects_bad_shapes_and_patterns(shape: tuple, n: int, m: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_nm(shape, n, m)
    with pytest.raises(ValueError):
        nm_mask(torch.ones(shape), n, m)


def test_check_nm_rejects_non_integer_patterns() -> None:
    with pytest.raises(ValueError, match="integer"):
        check_nm((8, 8), 2.0, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "expected"), [((8, 16), 8), ((4, 8, 3, 3), 36), ((3, 12, 5), 30)])
def test_nm_fan_in_is_the_per_output_count_of_a_2_4_mask(shape: tuple, expected: int) -> None:
    assert nm_fan_in(shape, 2, 4) == expected
    mask = nm_mask(torch.randn(shape, generator=torch.Generator().manual_seed(1)), 2, 4)
    assert torch.all(mask.reshape(shape[0], -1).sum(dim=1) == expected)


def test_sr_ste_refine_term_decays_only_pruned_weights() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    mask = nm_mask(weight.abs(), 2, 4)
    term = sr_ste_refine_term(weight, mask, 2e-4)
    assert not term.requires_grad
    assert torch.equal(term[mask], torch.zeros(int(mask.sum())))
    assert torch.allclose(term, 2e-4 * (~mask) * weight.detach())
    with pytest.raises(ValueError, match="mask shape"):
        sr_ste_refine_term(weight, mask.T, 2e-4)


def _stable_sort_reference(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The first n of a stable descending sort of every group, built independently of nm_mask."""
    groups = channels_last_groups(scores, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[:, :n], True)
    dims = (0, *range(2, scores.dim()), 1)
    shaped = torch.empty([scores.shape[d] for d in dims], dtype=torch.bool)
    return keep.reshape(shaped.shape).permute(torch.argsort(torch.tensor(dims)).tolist())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(layer_cases(), st.sampled_from(["random", "ties", "nan"]))
def test_nm_mask_equals_a_stable_descending_sort_with_ties_and_nan(case: tuple, values: str) -> None:
    shape, n, m, seed = case
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=g)
    if values != "random":
        scores = scores.mul(2).round()  # many equal scores, -0.0 among them
    if values == "nan":
        scores[torch.rand(shape, generator=g) < 0.2] = float("nan")
    assert torch.equal(nm_mask(scores, n, m), _stable_sort_reference(scores, n, m))
