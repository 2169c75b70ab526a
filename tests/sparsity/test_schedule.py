"""Update schedule: cosine drop fraction, update-step predicate, end of exploration."""

from __future__ import annotations

import math

import pytest

from lightning_srigl.sparsity import cosine_drop_fraction, exploration_end, is_update_step


def test_cosine_drop_fraction_endpoints_and_midpoint() -> None:
    assert cosine_drop_fraction(0, 1000, 0.3) == pytest.approx(0.3)
    assert cosine_drop_fraction(500, 1000, 0.3) == pytest.approx(0.15)
    assert cosine_drop_fraction(1000, 1000, 0.3) == pytest.approx(0.0, abs=1e-15)
    assert cosine_drop_fraction(100, 1000, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi / 10)))


def test_cosine_drop_fraction_is_monotone_decreasing() -> None:
    values = [cosine_drop_fraction(step, 1000, 0.5) for step in range(0, 1001, 100)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(("t_end", "alpha"), [(0, 0.3), (-5, 0.3), (100, 1.5), (100, -0.1)])
def test_cosine_drop_fraction_rejects_bad_arguments(t_end: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        cosine_drop_fraction(10, t_end, alpha)


def test_is_update_step() -> None:
    steps = [s for s in range(0, 1001) if is_update_step(s, delta_t=100, t_end=750)]
    assert steps == [100, 200, 300, 400, 500, 600, 700]
    assert not is_update_step(0, 1, 10)
    assert is_update_step(9, 1, 10) and not is_update_step(10, 1, 10)
    with pytest.raises(ValueError, match="delta_t must be a positive"):
        is_update_step(5, 0, 10)


def test_exploration_end() -> None:
    assert exploration_end(1000, 0.75) == 750
    assert exploration_end(1001, 0.75) == 750
    assert exploration_end(1000, 1.0) == 1000
    with pytest.raises(ValueError, match="exploration fraction"):
        exploration_end(1000, 0.0)
    with pytest.raises(ValueError, match="total_steps"):
        exploration_end(-1, 0.75)
