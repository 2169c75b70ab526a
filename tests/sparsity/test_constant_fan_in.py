"""Constant fan-in masks and the SRigL update: invariants, ablation, revival, trimming, deviations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_srigl.sparsity import fan_in, is_constant_fan_in, random_constant_fan_in_mask, srigl_update


def _prefix_mask(counts: list[int], cols: int) -> torch.Tensor:
    """``(len(counts), cols)`` mask with the first ``counts[i]`` columns of row ``i`` active."""
    return torch.arange(cols).expand(len(counts), cols) < torch.tensor(counts).unsqueeze(1)


def _survivors(update, rows: int) -> torch.Tensor:
    alive = torch.ones(rows, dtype=torch.bool)
    alive[update.ablated] = False
    return alive


# ----------------------------------------------------------------------------- initial mask
def test_random_constant_fan_in_mask_rows_and_determinism() -> None:
    mask = random_constant_fan_in_mask((16, 8, 3, 3), 230, torch.Generator().manual_seed(3))
    assert mask.shape == (16, 8, 3, 3) and mask.dtype == torch.bool
    assert fan_in(mask).tolist() == [230 // 16] * 16
    again = random_constant_fan_in_mask((16, 8, 3, 3), 230, torch.Generator().manual_seed(3))
    other = random_constant_fan_in_mask((16, 8, 3, 3), 230, torch.Generator().manual_seed(4))
    assert torch.equal(mask, again)
    assert not torch.equal(mask, other)


def test_random_constant_fan_in_mask_is_uniform_over_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    hits = sum(random_constant_fan_in_mask((4, 10), 12, generator).float() for _ in range(400))
    assert hits.sum().item() == 400 * 12
    assert hits.min().item() > 0.2 * 400 and hits.max().item() < 0.4 * 400  # expected 0.3 * 400


def test_zero_fan_in_raises_with_fix() -> None:
    with pytest.raises(ValueError, match="fan-in would be 0.*lower this layer's sparsity"):
        random_constant_fan_in_mask((10, 100), 9, None)
    weight = torch.zeros(10, 100)
    with pytest.raises(ValueError, match="fan-in would be 0"):
        srigl_update(weight, weight.bool(), weight, budget=5, drop_fraction=0.3)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_fraction": 1.5}, "drop_fraction must be in"),
        ({"gamma_sal": -0.1}, "gamma_sal must be >= 0"),
        ({"trim": "random"}, "trim must be"),
        ({"min_active_neurons": 0}, "min_active_neurons must be >= 1"),
        ({"budget": 41}, r"budget must be in \[0, 40\]"),
    ],
)
def test_srigl_update_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    mask = random_constant_fan_in_mask((4, 10), 20, torch.Generator().manual_seed(0))
    args = {"budget": 20, "drop_fraction": 0.3} | kwargs
    with pytest.raises(ValueError, match=message):
        srigl_update(torch.randn(4, 10) * mask, mask, torch.randn(4, 10), **args)


def test_srigl_update_rejects_bad_tensors() -> None:
    mask = torch.ones(4, 10, dtype=torch.bool)
    weight = torch.randn(4, 10)
    with pytest.raises(ValueError, match="same shape"):
        srigl_update(weight, mask, torch.randn(4, 11), budget=20, drop_fraction=0.3)
    with pytest.raises(ValueError, match="torch.bool"):
        srigl_update(weight, mask.float(), weight, budget=20, drop_fraction=0.3)
    with pytest.raises(ValueError, match="non-finite"):
        srigl_update(weight, mask, torch.full((4, 10), float("inf")), budget=20, drop_fraction=0.3)


# ----------------------------------------------------------------------------- drop / grow
def test_dropped_weight_with_large_gradient_is_regrown_and_new_ones_start_at_zero() -> None:
    mask = _prefix_mask([3], 6)
    weight = torch.tensor([[3.0, 2.0, 0.5, 0.0, 0.0, 0.0]])
    grad = torch.tensor([[0.0, 0.0, 9.0, 1.0, 5.0, 0.1]])
    update = srigl_update(weight, mask, grad, budget=4, drop_fraction=0.34)
    # n_prune = int(3 * 0.34) = 1 drops |w| = 0.5; fan-in 4 regrows it and adds position 4.
    assert (update.n_prune, update.n_keep, update.fan_in) == (1, 2, 4)
    assert update.regrown.tolist() == [[False, False, True, False, True, False]]
    assert update.grown.tolist() == [[False, False, False, False, True, False]]
    assert (weight * update.mask).tolist() == [[3.0, 2.0, 0.5, 0.0, 0.0, 0.0]]


def test_freshly_grown_zero_weights_are_kept_not_counted_twice() -> None:
    """Quirk Q6: with fewer non-zero weights than n_keep, all non-zero ones are kept."""
    mask = _prefix_mask([3, 3], 5)
    weight = torch.tensor([[1.0, 0.0, 0.0, 0, 0], [2.0, 3.0, 0.0, 0, 0]])
    update = srigl_update(weight, mask, torch.rand(2, 5), budget=6, drop_fraction=0.1)
    assert (update.n_keep, update.n_prune) == (3, 3)
    assert (update.mask & ~update.regrown).tolist() == (weight != 0).tolist()
    assert fan_in(update.mask).tolist() == [3, 3]


# ----------------------------------------------------------------------------- ablation
def _ablation_layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4x10 layer whose rows hold ``[5, 3, 2, 0]`` active weights: at drop fraction 0 all are salient."""
    mask = _prefix_mask([5, 3, 2, 0], 10)
    weight = torch.arange(1.0, 11.0).expand(4, 10) * mask
    grad = torch.linspace(0.01, 0.4, 40).reshape(4, 10)
    return weight, mask, grad


def test_ablation_threshold_relative_to_sparse_fan_in() -> None:
    weight, mask, grad = _ablation_layer()
    # D = 20 // 4 = 5, tau = max(1, int(0.5 * 5)) = 2: rows with < 2 salient weights go.
    update = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.0, gamma_sal=0.5)
    assert update.saliency_threshold == 2
    assert update.ablated.tolist() == [3]
    assert update.fan_in == 20 // 3
    assert fan_in(update.mask).tolist() == [6, 6, 6, 0]


def test_ablation_threshold_relative_to_dense_fan_in_and_absolute() -> None:
    weight, mask, grad = _ablation_layer()
    dense = srigl_update(
        weight, mask, grad, budget=10, drop_fraction=0.0, gamma_sal=0.25, sparse_fan_in_denominator=False
    )
    assert dense.saliency_threshold == 2  # int(0.25 * F), F = 10
    assert dense.ablated.tolist() == [3] and fan_in(dense.mask).tolist() == [3, 3, 3, 0]
    absolute = srigl_update(weight, mask, grad, budget=10, drop_fraction=0.0, gamma_sal=3)
    assert absolute.saliency_threshold == 3
    assert absolute.ablated.tolist() == [2, 3]
    assert fan_in(absolute.mask).tolist() == [5, 5, 0, 0]


def test_ablation_clamp_keeps_min_neurons_plus_one() -> None:
    weight, mask, grad = _ablation_layer()
    # tau = int(0.9 * 5) = 4 would ablate rows 1-3; min_neurons = 20 // 10 = 2 forces 3 survivors,
    # so tau drops to the 3rd largest count (2) and only row 3 goes.
    update = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.0, gamma_sal=0.9)
    assert update.saliency_threshold == 2
    assert update.ablated.tolist() == [3]
    floored = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.0, gamma_sal=0.9, min_active_neurons=4)
    assert floored.ablated.tolist() == [] and floored.fan_in == 5


def test_protected_layer_is_never_ablated() -> None:
    weight, mask, grad = _ablation_layer()
    update = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.0, gamma_sal=0.9, ablation=False)
    assert update.ablated.numel() == 0 and update.saliency_threshold is None
    assert fan_in(update.mask).tolist() == [5, 5, 5, 5]


def test_ablated_neuron_revives_through_its_gradient() -> None:
    """Quirk Q8: an all-zero row with large gradients is salient again and regrows k weights at 0."""
    mask = _prefix_mask([6, 6, 6, 0], 10)
    weight = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * mask
    grad = torch.full((4, 10), 1e-3)
    grad[3] = torch.arange(1.0, 11.0)
    update = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.3, gamma_sal=0.3)
    assert update.ablated.numel() == 0
    assert update.fan_in == 5
    assert fan_in(update.mask).tolist() == [5, 5, 5, 5]
    assert update.grown[3].tolist() == [False] * 5 + [True] * 5  # its five largest gradients
    assert (weight * update.mask)[3].abs().sum() == 0


# ----------------------------------------------------------------------------- deviations
def _overfull_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = _prefix_mask([6, 6], 8)
    weight = torch.zeros(2, 8)
    weight[:, :6] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    return weight, mask, torch.rand(2, 8, generator=torch.Generator().manual_seed(0))


def test_trim_by_magnitude_keeps_largest_weights() -> None:
    """Deviation (a): a row above the new fan-in keeps its k largest |w|."""
    weight, mask, grad = _overfull_rows()
    update = srigl_update(weight, mask, grad, budget=8, drop_fraction=0.0)
    assert update.fan_in == 4
    assert update.mask[:, :6].tolist() == [[False, False, True, True, True, True]] * 2
    assert not update.regrown.any()


def test_trim_reference_keeps_lowest_index_weights() -> None:
    weight, mask, grad = _overfull_rows()
    update = srigl_update(weight, mask, grad, budget=8, drop_fraction=0.0, trim="reference")
    assert update.mask[:, :6].tolist() == [[True, True, True, True, False, False]] * 2


def test_zero_valued_positions_are_not_kept_when_ablation_exceeds_drop() -> None:
    """Deviation (b), quirk Q4: kept set capped at real non-zeros, the rest grown by gradient."""
    mask = _prefix_mask([5, 5, 5, 5], 10)
    weight = torch.zeros(4, 10)
    weight[:, :5] = torch.tensor([[5.0], [6.0], [7.0], [0.01]]) * torch.arange(1.0, 6.0)
    grad = torch.rand(4, 10, generator=torch.Generator().manual_seed(1))
    grad[0, 9] = grad[0, 8] = 10.0  # the top-2 gradients: salient for row 0
    # n_keep = 18 of 20; row 3 keeps only 3 salient weights < tau = 5 and is ablated; the surviving
    # rows hold 15 non-zero weights < n_keep, so the reference would keep 3 zero-valued positions.
    update = srigl_update(weight, mask, grad, budget=20, drop_fraction=0.1, gamma_sal=5)
    assert update.ablated.tolist() == [3]
    assert (update.n_keep, update.fan_in) == (18, 6)
    kept = update.mask & ~update.regrown
    assert torch.equal(kept[:3], weight[:3] != 0)
    assert fan_in(update.mask).tolist() == [6, 6, 6, 0]
    grow_scores = torch.where(kept, -1.0, grad)
    assert update.regrown[:3].nonzero()[:, 1].tolist() == grow_scores[:3].argmax(dim=1).tolist()


# ----------------------------------------------------------------------------- properties
@settings(settings.get_profile("sparsity"))
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 20),
    density=st.floats(0.0, 1.0),
    start_density=st.floats(0.0, 1.0),
    drop_fraction=st.floats(0.0, 1.0),
    gamma_sal=st.sampled_from([0.0, 0.05, 0.3, 0.9, 2.0]),
    zero_fraction=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_srigl_update_keeps_constant_fan_in_and_budget(
    rows: int,
    cols: int,
    density: float,
    start_density: float,
    drop_fraction: float,
    gamma_sal: float,
    zero_fraction: float,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    numel = rows * cols
    budget = rows + round(density * (numel - rows))
    start = random_constant_fan_in_mask((rows, cols), rows + round(start_density * (numel - rows)), generator)
    start[torch.rand(rows, generator=generator) < 0.2] = False  # some rows ablated earlier
    weight = torch.randn(rows, cols, generator=generator) * start
    weight[torch.rand(rows, cols, generator=generator) < zero_fraction] = 0.0  # freshly grown
    grad = torch.randn(rows, cols, generator=generator)

    def run():
        return srigl_update(weight, start, grad, budget=budget, drop_fraction=drop_fraction, gamma_sal=gamma_sal)

    update = run()
    alive = _survivors(update, rows)
    counts = fan_in(update.mask)
    assert (counts[alive] == update.fan_in).all() and (counts[~alive] == 0).all()
    assert is_constant_fan_in(update.mask)
    n_alive = int(alive.sum())
    assert n_alive >= min(rows, budget // cols + 1)
    assert 0 <= budget - update.fan_in * n_alive < n_alive  # budget kept up to the floor
    kept = update.mask & ~update.regrown
    assert not (kept & ~(start & (weight != 0))).any()  # only real weights are kept
    assert not (update.grown & start).any() and torch.equal(update.grown, update.regrown & ~start)
    again = run()
    assert torch.equal(again.mask, update.mask) and torch.equal(again.ablated, update.ablated)


def test_srigl_update_on_conv_weight_shapes() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = random_constant_fan_in_mask((8, 4, 3, 3), 72, generator)
    weight = torch.randn(8, 4, 3, 3, generator=generator) * mask
    grad = torch.randn(8, 4, 3, 3, generator=generator)
    update = srigl_update(weight, mask, grad, budget=96, drop_fraction=0.3)
    assert update.mask.shape == (8, 4, 3, 3)
    assert fan_in(update.mask).tolist() == [12] * 8
