"""Row-sharded updates through ``ShardReducer`` select exactly what whole-layer updates select.

The ranks are threads (``tests/sparsity/simulated_shards.py``); each holds a consecutive range of rows
(uneven, some empty), as FSDP2's ``Shard(0)`` does.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_srigl.sparsity import (
    LayerInputs,
    LocalReducer,
    Selection,
    ShardReducer,
    random_constant_fan_in_mask,
    random_unstructured_mask,
    rigl_update,
    rigl_update_layers,
    srigl_update,
    srigl_update_layers,
    topk_mask,
)
from lightning_srigl.sparsity import reducer as reducer_module
from lightning_srigl.sparsity.reducer import order_keys
from lightning_srigl.sparsity.topk import kth_largest
from tests.sparsity.simulated_shards import SimulatedGroup, row_splits

SPLITS = {2: [(5, 7), (12, 0), (1, 11)], 3: [(4, 4, 4), (5, 0, 7), (2, 9, 1)]}


def _tied(shape: tuple[int, ...], generator: torch.Generator, levels: int = 5) -> Tensor:
    """Scores from a few levels (many ties), both signs of zero included."""
    values = torch.randint(-levels, levels + 1, shape, generator=generator).float() / levels
    zeros = values == 0
    values[zeros & (torch.rand(shape, generator=generator) < 0.5)] = -0.0
    return values


def test_order_keys_order_like_the_values() -> None:
    values = torch.tensor([-float("inf"), -2.5, -1e-30, -0.0, 0.0, 1e-38, 3.0, float("inf")])
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        keys = order_keys(values.to(dtype))
        assert (keys[1:] >= keys[:-1]).all(), dtype
        assert keys[3] == keys[4]  # -0.0 ties +0.0, as == says
    counts = torch.tensor([3, 1, 2], dtype=torch.int32)
    assert torch.equal(order_keys(counts), counts)


@pytest.mark.parametrize("key_block", [None, 5])
@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_selections_equal_whole_layer_ones(
    shards: int, key_block: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``key_block=5``: the shards' scores are read in blocks of 5 (histograms and tie counts cross blocks)."""
    if key_block is not None:
        monkeypatch.setattr(reducer_module, "KEY_BLOCK_ELEMENTS", key_block)
    generator = torch.Generator().manual_seed(shards)
    selections, expected_masks, expected_kth = [], [], []
    for case in range(24):
        scores = _tied((12, 7), generator, levels=1 + case % 6)
        if case % 4 == 1:
            scores = scores.double()
        among = torch.rand(12, 7, generator=generator) < 0.6 if case % 2 else None
        n = scores.numel() if among is None else int(among.sum())
        k = [0, n, 1, n // 2, n - 1][case % 5]
        selections.append((scores, k, among))
        expected_masks.append(topk_mask(scores, k, among=among))
        expected_kth.append(kth_largest(scores, k, among) if k >= 1 else None)
    for sizes in SPLITS[shards]:
        parts = row_splits(12, sizes)

        def work(rank: int, reducer: ShardReducer, parts: list[slice] = parts) -> object:
            mine = [Selection(s[parts[rank]], k, None if a is None else a[parts[rank]]) for s, k, a in selections]
            with_k = [sel for sel in mine if sel.k >= 1]
            return reducer.topk_masks(mine), reducer.kth_largest(with_k)

        results = SimulatedGroup(shards).run(work)
        for i, expected in enumerate(expected_masks):
            assert torch.equal(torch.cat([masks[i] for masks, _ in results]), expected), (sizes, i)
        kths = [e for e in expected_kth if e is not None]
        for _, found in results:
            assert [float(v) for v in found] == [float(v) for v in kths]


def test_order_statistic_of_integer_counts() -> None:
    counts = torch.tensor([3, 0, 7, 7, 2, 5, 1, 7], dtype=torch.int32)
    parts = row_splits(8, (3, 0, 5))
    results = SimulatedGroup(3).run(lambda r, red: red.kth_largest([Selection(counts[parts[r]], k) for k in (1, 4, 8)]))
    for found in results:
        assert [int(v) for v in found] == [7, 5, 0]
    assert [int(v) for v in LocalReducer().kth_largest([Selection(counts, 4)])] == [5]


def _random_layer(generator: torch.Generator, case: int) -> tuple[Tensor, Tensor, Tensor, int]:
    rows, cols = 12, 6 + case % 5
    budget = rows * (1 + case % 3) + case % 4
    mask = random_constant_fan_in_mask((rows, cols), budget, generator)
    weight = _tied((rows, cols), generator, levels=1 + case % 4) * mask
    if case % 5 == 0:
        weight[:, 0] = 0.0  # freshly grown weights: exact zeros inside the mask
    if case % 7 == 3:
        weight[~mask] = 0.25  # weights off the mask (scored below every active one)
    grad = _tied((rows, cols), generator, levels=1 + case % 3)
    return weight, mask, grad, budget


@pytest.mark.parametrize(("shards", "gamma_sal"), [(2, 0.0), (2, 0.3), (2, 0.95), (3, 0.5), (3, 2.0)])
def test_sharded_srigl_update_is_bit_identical_to_the_whole_layer_update(shards: int, gamma_sal: float) -> None:
    generator = torch.Generator().manual_seed(int(gamma_sal * 100) + shards)
    layers = [_random_layer(generator, case) for case in range(16)]
    ablation = [case % 3 != 2 for case in range(16)]
    expected = [
        srigl_update(
            w,
            m,
            g,
            budget=b,
            drop_fraction=0.3 + 0.04 * i,
            gamma_sal=gamma_sal,
            ablation=a,
        )
        for i, ((w, m, g, b), a) in enumerate(zip(layers, ablation))
    ]
    for sizes in SPLITS[shards]:
        parts = row_splits(12, sizes)

        def work(rank: int, reducer: ShardReducer, parts: list[slice] = parts) -> object:
            # one update per layer, so that each layer has its own drop fraction, in a shuffled batch
            mine = [
                LayerInputs(w[parts[rank]], m[parts[rank]], g[parts[rank]], b, a)
                for (w, m, g, b), a in zip(layers, ablation)
            ]
            return [
                srigl_update_layers(
                    [layer],
                    drop_fraction=0.3 + 0.04 * i,
                    gamma_sal=gamma_sal,
                    reducer=reducer,
                )[0]
                for i, layer in enumerate(mine)
            ]

        results = SimulatedGroup(shards).run(work)
        for i, whole in enumerate(expected):
            parts_of_i = [result[i] for result in results]
            assert torch.equal(torch.cat([u.mask for u in parts_of_i]), whole.mask), (
                sizes,
                i,
            )
            assert torch.equal(torch.cat([u.grown for u in parts_of_i]), whole.grown), (
                sizes,
                i,
            )
            ablated = torch.cat([u.ablated + part.start for u, part in zip(parts_of_i, parts)])
            assert torch.equal(ablated, whole.ablated), (sizes, i)
            for u in parts_of_i:
                assert (u.fan_in, u.n_prune, u.n_keep, u.saliency_threshold) == (
                    whole.fan_in, whole.n_prune, whole.n_keep, whole.saliency_threshold
                )  # fmt: skip


def test_one_batched_update_of_many_layers_equals_per_layer_updates_in_the_same_rounds() -> None:
    generator = torch.Generator().manual_seed(7)
    layers = [_random_layer(generator, case) for case in range(8)]
    expected = [srigl_update(w, m, g, budget=b, drop_fraction=0.3, gamma_sal=0.3) for w, m, g, b in layers]
    parts = row_splits(12, (7, 5))
    rounds = {}
    for depth in (1, 8):
        group = SimulatedGroup(2)
        results = group.run(
            lambda r, red, parts=parts: srigl_update_layers(
                [LayerInputs(w[parts[r]], m[parts[r]], g[parts[r]], b) for w, m, g, b in layers[:depth]],
                drop_fraction=0.3,
                gamma_sal=0.3,
                reducer=red,
            )  # fmt: skip
        )
        for i in range(depth):
            assert torch.equal(torch.cat([result[i].mask for result in results]), expected[i].mask), i
        rounds[depth] = len(group.sent)
    assert rounds[1] <= rounds[8] <= 16  # at most 16 rounds per update, whatever the depth


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_rigl_update_is_bit_identical_to_the_whole_layer_update(
    shards: int,
) -> None:
    generator = torch.Generator().manual_seed(11)
    layers = []
    for case in range(16):
        mask = random_unstructured_mask((12, 5), 10 + 3 * case, generator)
        weight = _tied((12, 5), generator, levels=1 + case % 4) * mask
        layers.append((weight, mask, _tied((12, 5), generator, levels=1 + case % 3)))
    expected = [rigl_update(w, m, g, drop_fraction=0.4) for w, m, g in layers]
    for sizes in SPLITS[shards]:
        parts = row_splits(12, sizes)
        results = SimulatedGroup(shards).run(
            lambda r, red, parts=parts: rigl_update_layers(
                [(w[parts[r]], m[parts[r]], g[parts[r]]) for w, m, g in layers],
                drop_fraction=0.4,
                reducer=red,
            )
        )
        for i, whole in enumerate(expected):
            assert torch.equal(torch.cat([result[i].mask for result in results]), whole.mask), (sizes, i)
            assert torch.equal(torch.cat([result[i].grown for result in results]), whole.grown), (sizes, i)


def test_nan_on_one_shard_raises_on_every_shard() -> None:
    scores = torch.rand(6, 4)
    scores[5, 1] = float("nan")
    parts = row_splits(6, (3, 3))
    group = SimulatedGroup(2)
    raised = []

    def work(rank, reducer):
        try:
            reducer.topk_masks([Selection(scores[parts[rank]], 3)])
        except ValueError as error:
            raised.append((rank, str(error)))

    group.run(work)
    assert sorted(rank for rank, _ in raised) == [0, 1]
    assert all("NaN" in message for _, message in raised)


def test_k_out_of_range_names_the_eligible_count() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\]"):
        SimulatedGroup(2).run(lambda r, red: red.topk_masks([Selection(torch.ones(2, 2), 9)]))


def test_a_batch_carries_the_fan_in_rounding_from_layer_to_layer_as_one_by_one_updates_do() -> None:
    generator = torch.Generator().manual_seed(5)
    layers = [_random_layer(generator, case) for case in range(8)]
    expected, carry = [], 3
    for w, m, g, b in layers:
        update = srigl_update(w, m, g, budget=b, target=b + carry, drop_fraction=0.3, gamma_sal=0.3)
        expected.append(update)
        carry = b + carry - int(update.mask.sum())
    parts = row_splits(12, (5, 7))
    results = SimulatedGroup(2).run(
        lambda r, red: srigl_update_layers(
            [LayerInputs(w[parts[r]], m[parts[r]], g[parts[r]], b) for w, m, g, b in layers],
            drop_fraction=0.3,
            gamma_sal=0.3,
            carry=3,
            reducer=red,
        )
    )
    for i, whole in enumerate(expected):
        assert torch.equal(torch.cat([result[i].mask for result in results]), whole.mask), i
        assert results[0][i].fan_in == whole.fan_in
    floors = [b // (12 - whole.ablated.numel()) for whole, (_, _, _, b) in zip(expected, layers)]
    assert [whole.fan_in for whole in expected] != floors  # the carried rounding changed some fan-in
