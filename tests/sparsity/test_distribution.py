"""Layer-wise density allocation: hand-computed ERK and uniform cases, budgets and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_srigl.sparsity import check_sparsity, erk_densities, layer_budgets, uniform_densities


def test_erk_two_layers_by_hand() -> None:
    # raw weights (sum/prod): 20/100 = 0.2 and 50/400 = 0.125; keep 0.2 * 500 = 100 weights.
    # eps = 100 / (0.2 * 100 + 0.125 * 400) = 10/7 -> densities 2/7 and 5/28.
    densities = erk_densities([(10, 10), (10, 40)], 0.8)
    assert densities == pytest.approx([2 / 7, 5 / 28], abs=1e-12)
    assert 100 * densities[0] + 400 * densities[1] == pytest.approx(100.0)


def test_erk_resolve_pins_a_layer_that_would_exceed_density_one() -> None:
    # First solve: eps = 101/74 and the 2x2 layer (raw 1.0) would get 1.36 > 1, so it is made
    # dense; its 3 extra weights are paid by the others: eps = (20 + 80 - 3) / 70 = 97/70.
    densities = erk_densities([(2, 2), (10, 10), (10, 40)], 0.8)
    assert densities == pytest.approx([1.0, 0.2 * 97 / 70, 0.125 * 97 / 70], abs=1e-12)


def test_erk_includes_kernel_dims_and_power_scale() -> None:
    conv, linear = (4, 2, 3, 3), (4, 18)  # same numel 72, raw 12/72 vs 22/72
    densities = erk_densities([conv, linear], 0.5)
    assert densities[1] / densities[0] == pytest.approx(22 / 12)
    flat = erk_densities([conv, linear], 0.5, power_scale=0.0)
    assert flat == pytest.approx([0.5, 0.5])


def test_erk_pinned_dense_layers_are_paid_for() -> None:
    # keep 0.2 * 1000 = 200 weights; the dense 10x10 layer takes 100, the other layer the rest.
    densities = erk_densities([(10, 10), (10, 90)], 0.8, dense={0})
    assert densities == pytest.approx([1.0, 100 / 900], abs=1e-12)


def test_erk_raises_when_dense_layers_exceed_the_budget() -> None:
    with pytest.raises(ValueError, match="lower the sparsity or pin fewer layers dense"):
        erk_densities([(100, 100), (2, 2)], 0.5, dense={0})


def test_erk_at_zero_sparsity_is_all_dense() -> None:
    assert erk_densities([(3, 4), (5, 6, 2, 2)], 0.0) == [1.0, 1.0]


def test_uniform_same_density_everywhere() -> None:
    assert uniform_densities([(10, 10), (7, 3, 3, 3)], 0.75) == pytest.approx([0.25, 0.25], abs=1e-15)


def test_uniform_pinned_dense_layers_are_paid_for() -> None:
    densities = uniform_densities([(10, 10), (10, 90)], 0.8, dense={0})
    assert densities == pytest.approx([1.0, 1 / 9], abs=1e-12)


def test_uniform_falls_back_when_dense_layers_exceed_the_budget() -> None:
    # 0.2 * 110 = 22 < 100 dense weights: like the reference, sparse layers keep 1 - sparsity.
    assert uniform_densities([(10, 10), (2, 5)], 0.8, dense={0}) == pytest.approx([1.0, 0.2])


@pytest.mark.parametrize("allocate", [uniform_densities, erk_densities])
def test_allocators_reject_bad_inputs(allocate) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        allocate([(4, 4)], 1.0)
    with pytest.raises(ValueError, match="out of range"):
        allocate([(4, 4)], 0.5, dense={1})
    with pytest.raises(ValueError, match="shapes is empty"):
        allocate([], 0.5)
    with pytest.raises(ValueError, match="must be positive"):
        allocate([(4, 0)], 0.5)


def test_layer_budgets_round_to_nearest_and_meet_target() -> None:
    shapes = [(10, 100), (64, 32), (3, 3)]
    densities = [1 - 0.9, 0.2, 1.0]
    budgets = layer_budgets(shapes, densities)
    assert budgets == [100, 410, 9]  # 1000 * 0.09999999999999998 -> 100, not the reference's 99
    for shape, d, b in zip(shapes, densities, budgets):
        assert abs(b - math.prod(shape) * d) <= 0.5


def test_layer_budgets_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one per layer"):
        layer_budgets([(2, 2)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\]"):
        layer_budgets([(2, 2)], [1.5])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_check_sparsity_rejects_values_outside_the_range(bad) -> None:
    with pytest.raises(ValueError, match="e.g. 0.9 keeps 10%"):
        check_sparsity(bad)


@pytest.mark.parametrize("bad", [True, "0.9", None, torch.tensor([0.5])])
def test_check_sparsity_rejects_non_numbers_with_a_type_error(bad) -> None:
    with pytest.raises(TypeError, match="sparsity must be a number.*e.g. 0.9 keeps 10%"):
        check_sparsity(bad)


@pytest.mark.parametrize("number", [np.float32(0.9), np.float64(0.9), torch.tensor(0.9), torch.tensor(0.9).double()])
def test_check_sparsity_accepts_numpy_scalars_and_0d_tensors(number) -> None:
    assert check_sparsity(number) == pytest.approx(0.9) and isinstance(check_sparsity(number), float)


def test_check_sparsity_accepts_and_names_the_argument() -> None:
    assert check_sparsity(0) == 0.0 and isinstance(check_sparsity(0), float)
    assert check_sparsity(0.95) == 0.95
    with pytest.raises(ValueError, match="^layer_sparsity must"):
        check_sparsity(2.0, name="layer_sparsity")
