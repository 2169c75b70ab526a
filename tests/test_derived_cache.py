"""Cached layouts and mask forms follow edits their tensors' version counters do not see (``.data``, numpy)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.derived_cache import DerivedCache
from lightning_srigl.masking import MaskedParameters, select_parameters


def condensed_layer() -> CondensedLinear:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(24, 40, dtype=torch.bool).scatter_(1, torch.rand(24, 40, generator=g).argsort(1)[:, :5], True)
    mask[3] = False  # an ablated neuron
    return CondensedLinear.from_dense_weight(torch.randn(24, 40, generator=g), mask, torch.randn(24, generator=g))


def test_batch_1_output_follows_edits_through_data_and_numpy() -> None:
    layer = condensed_layer()
    x = torch.randn(2, 40)
    with torch.no_grad():
        layer(x[:1])  # builds the batch-1 layout
        layer.values.data.mul_(2)
        torch.testing.assert_close(layer(x[:1]), layer(x)[:1])
        layer.values.numpy()[5, 2] = 7.0  # one weight, through a numpy view
        torch.testing.assert_close(layer(x[:1]), layer(x)[:1])
        torch.testing.assert_close(layer(x[:1]), x[:1] @ layer.dense_weight().t() + layer.bias)


def test_cache_rebuilds_on_replacement_in_place_ops_and_aliased_writes_only() -> None:
    cache: DerivedCache[float] = DerivedCache()
    t = torch.arange(6.0)
    builds = []

    def build() -> float:
        builds.append(1)
        return float(t.sum())

    assert cache.get("k", (t,), build, (t,)) == 15.0
    assert cache.get("k", (t,), build, (t,)) == 15.0 and len(builds) == 1
    t.add_(1)  # the version counter moves
    assert cache.get("k", (t,), build, (t,)) == 21.0
    t.data[0] = 100.0  # the counter does not move; the checksum does
    assert cache.get("k", (t,), build, (t,)) == 120.0
    t = t.clone()  # replaced
    assert cache.get("k", (t,), build, (t,)) == 120.0 and len(builds) == 4
    with torch.inference_mode():
        assert cache.get("k", (torch.ones(2),), build) is None  # no version counter: not cached


def test_mask_forms_follow_a_mask_edited_through_data() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    masked = MaskedParameters(select_parameters(model))
    masked.install_({"0.weight": torch.ones(4, 8, dtype=torch.bool)})
    masked.apply_to_weights_()  # caches the mask's form
    assert bool((model[0].weight != 0).all())
    masked.mask("0.weight").data[0, :4] = False
    masked.apply_to_weights_()
    assert not bool(model[0].weight[0, :4].any()) and bool((model[0].weight[0, 4:] != 0).all())
