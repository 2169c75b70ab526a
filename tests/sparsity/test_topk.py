"""Deterministic top-k masks: exact counts, lower-index tie-breaking, restriction to eligible entries."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_srigl.sparsity import as_rows, rowwise_topk_mask, topk_mask
from lightning_srigl.sparsity.topk import BLOCK_ELEMENTS, kth_largest


def _stable_sort_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Brute-force reference: stable descending sort, first k."""
    order = torch.sort(scores.reshape(-1), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def test_topk_mask_ties_go_to_lower_flat_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0], [3.0, 2.0, 3.0]])
    assert topk_mask(scores, 2).tolist() == [[False, True, False], [True, False, False]]
    assert topk_mask(scores, 4).tolist() == [[False, True, True], [True, False, True]]


def test_topk_mask_edge_counts() -> None:
    scores = torch.arange(6.0).reshape(2, 3)
    assert not topk_mask(scores, 0).any()
    assert topk_mask(scores, 6).all()
    with pytest.raises(ValueError, match="k must be in"):
        topk_mask(scores, 7)


def test_topk_mask_among_restricts_eligible_entries() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 1.0, 9.0])
    among = torch.tensor([False, True, True, True, False])
    assert topk_mask(scores, 2, among=among).tolist() == [False, True, True, False, False]
    assert torch.equal(topk_mask(scores, 3, among=among), among)
    with pytest.raises(ValueError, match="eligible"):
        topk_mask(scores, 4, among=among)


def test_topk_mask_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([1.0, float("nan")]), 1)


@settings(settings.get_profile("sparsity"))
@given(
    values=st.lists(st.integers(0, 3), min_size=1, max_size=60),
    data=st.data(),
)
def test_topk_mask_equals_stable_sort(values: list[int], data: st.DataObject) -> None:
    scores = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, len(values)))
    assert torch.equal(topk_mask(scores, k), _stable_sort_topk(scores, k))


def test_rowwise_topk_mask_per_row_counts_and_ties() -> None:
    scores = torch.tensor([[2.0, 2.0, 2.0, 1.0], [0.0, 1.0, 5.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    mask = rowwise_topk_mask(scores, torch.tensor([2, 2, 4]))
    assert mask.tolist() == [
        [True, True, False, False],
        [False, True, True, False],
        [True, True, True, True],
    ]
    assert rowwise_topk_mask(scores, 0).sum() == 0


@settings(settings.get_profile("sparsity"))
@given(rows=st.integers(1, 6), cols=st.integers(1, 12), data=st.data())
def test_rowwise_topk_mask_equals_stable_sort_per_row(rows: int, cols: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, 2), min_size=rows * cols, max_size=rows * cols))
    k = data.draw(st.lists(st.integers(0, cols), min_size=rows, max_size=rows))
    scores = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    mask = rowwise_topk_mask(scores, torch.tensor(k))
    for i in range(rows):
        assert torch.equal(mask[i], _stable_sort_topk(scores[i], k[i]))


def test_rowwise_topk_mask_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match=r"k_i must be in \[0, 3\]"):
        rowwise_topk_mask(torch.zeros(2, 3), torch.tensor([1, 4]))


def test_as_rows_flattens_conv_receptive_field() -> None:
    weight = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    assert as_rows(weight).shape == (2, 12)
    assert as_rows(weight)[1, 5].item() == weight[1, 1, 0, 1].item()
    with pytest.raises(ValueError, match="at least 2 dims"):
        as_rows(torch.zeros(4))


def _large_scores(kind: str, n: int) -> torch.Tensor:
    """Scores beyond one block: plain, with heavy ties (zeros, as dead units' gradients), signed, coarse."""
    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, generator=g)
    if kind == "ties":
        values[torch.rand(n, generator=g) < 0.6] = 0.0
    elif kind == "signed":
        values = torch.randn(n, generator=g)
    elif kind == "coarse":  # few distinct values: the bracket holds many entries
        values = torch.randint(0, 5, (n,), generator=g).float()
    return values


@pytest.mark.parametrize("kind", ["plain", "ties", "signed", "coarse"])
def test_kth_largest_is_exact_beyond_one_block(kind: str) -> None:
    n = BLOCK_ELEMENTS * 2 + 12345
    values = _large_scores(kind, n)
    descending = torch.sort(values, descending=True).values
    for k in (1, 7, n // 3, n // 2 + 1, n - 40_000, n - 3, n):
        assert kth_largest(values, k).item() == descending[k - 1].item(), k


@pytest.mark.parametrize("kind", ["ties", "coarse"])
def test_topk_mask_breaks_ties_by_index_across_blocks(kind: str) -> None:
    scores = _large_scores(kind, BLOCK_ELEMENTS * 3 + 17).reshape(-1, 1)
    for k in (scores.numel() // 5, scores.numel() // 2):
        assert torch.equal(topk_mask(scores, k), _stable_sort_topk(scores, k))


def test_rowwise_topk_mask_with_exclude_equals_scoring_minus_one_there() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(3000, 700, generator=g).mul(4).round()  # ties, and more rows than one block
    exclude = torch.rand(3000, 700, generator=g) < 0.3
    k = torch.randint(0, 400, (3000,), generator=g)
    expected = rowwise_topk_mask(torch.where(exclude, -1.0, scores), k)
    assert torch.equal(rowwise_topk_mask(scores, k, exclude=exclude), expected)
    for row in (0, 1499, 2999):
        assert torch.equal(expected[row], _stable_sort_topk(torch.where(exclude, -1.0, scores)[row], int(k[row])))


def _grown_back_by_sort(scores: torch.Tensor, k: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Reference for ``keep``: each row's kept positions plus its top ``k_i - keep_i`` others (stable sort)."""
    rows = []
    for i in range(scores.shape[0]):
        others = _stable_sort_topk(torch.where(keep[i], -1.0, scores[i]), int(k[i]) - int(keep[i].sum()))
        rows.append(keep[i] | others)
    return torch.stack(rows)


@settings(settings.get_profile("sparsity"))
@given(rows=st.integers(1, 6), cols=st.integers(1, 12), fan_in=st.integers(0, 12), data=st.data())
def test_rowwise_topk_mask_keep_grows_rows_back_to_k(rows: int, cols: int, fan_in: int, data: st.DataObject) -> None:
    fan_in = min(fan_in, cols)
    values = data.draw(st.lists(st.integers(0, 2), min_size=rows * cols, max_size=rows * cols))
    scores = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    alive = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    k = torch.where(alive, fan_in, 0)  # a constant fan-in, ablated rows 0: the fast path
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        n_kept = data.draw(st.integers(0, int(k[i])))
        keep[i, data.draw(st.permutations(range(cols)))[:n_kept]] = True
    assert torch.equal(rowwise_topk_mask(scores, k, keep=keep), _grown_back_by_sort(scores, k, keep))
    varying = torch.tensor(data.draw(st.lists(st.integers(0, cols), min_size=rows, max_size=rows)))
    varying = torch.maximum(varying, keep.sum(dim=1))  # k_i of every size: the sorted path
    assert torch.equal(rowwise_topk_mask(scores, varying, keep=keep), _grown_back_by_sort(scores, varying, keep))


def test_rowwise_topk_mask_keep_across_blocks_with_ties() -> None:
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(3000, 700, generator=g).mul(4).round()
    keep = torch.rand(3000, 700, generator=g) < 0.05
    k = torch.full((3000,), 90)
    k[::7] = 0
    keep[::7] = False
    mask = rowwise_topk_mask(scores, k, keep=keep)
    assert torch.equal(mask.sum(dim=1), k)
    assert bool((mask | ~keep).all())
    for row in (0, 1, 1499, 2999):
        one = slice(row, row + 1)
        assert torch.equal(mask[one], _grown_back_by_sort(scores[one], k[one], keep[one]))


def test_rowwise_topk_mask_keep_rejects_what_it_cannot_honour() -> None:
    keep = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="at most k_i"):
        rowwise_topk_mask(torch.zeros(1, 3), 1, keep=keep)
    with pytest.raises(ValueError, match="finite"):
        rowwise_topk_mask(torch.tensor([[1.0, float("inf"), 0.0]]), 2, keep=keep)
