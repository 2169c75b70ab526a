"""The plan: one timing per layer shape, a margin the noise supports, the same plan twice, a reusable cache."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from lightning_srigl.acceleration.accelerate import accelerate, capture_layer_inputs
from lightning_srigl.acceleration.planning import (
    MIN_MARGIN,
    PlanCache,
    choose,
    plan_acceleration,
)
from lightning_srigl.condensed.kinds.registry import sparse_layers
from lightning_srigl.masking import bind_masks
from lightning_srigl.timing import Timing
from tests.condensed.test_accelerate import constant_fan_in_mask


def twin_mlp() -> nn.Sequential:
    """64 -> 64 -> 64 -> 10: the two hidden layers share one shape, fan-in and input shape."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    masks = {f"{i}.weight": constant_fan_in_mask(64, 64, 8, [], seed=i) for i in (0, 2)}
    bind_masks(model, masks | {"4.weight": constant_fan_in_mask(10, 64, 16, [], seed=4)})
    return model


class FakeTimer:
    """Deterministic timings: ``speed[name]`` seconds, jittered by up to ``jitter`` (seeded), spread ``spread``."""

    def __init__(
        self,
        speed: Mapping[str, float],
        jitter: float,
        spread: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.speed, self.jitter, self.spread = speed, jitter, spread
        self.random = random.Random(seed)
        self.calls: list[list[str]] = []

    def __call__(self, calls: Mapping[str, Callable[[], object]]) -> dict[str, Timing]:
        self.calls.append(list(calls))
        timings = {}
        for name in calls:
            fastest = self.speed.get(name, 10.0) * (1 + self.random.uniform(-self.jitter, self.jitter))
            timings[name] = Timing(fastest * (1 + self.spread), fastest)
        return timings


def test_a_candidate_replaces_dense_only_beyond_the_noise() -> None:
    quiet = lambda t: Timing(t * 1.001, t)  # noqa: E731
    assert choose({"dense": quiet(1.0), "condensed": quiet(0.99)}) == "dense"  # inside MIN_MARGIN
    assert choose({"dense": quiet(1.0), "condensed": quiet(0.9)}) == "condensed"
    noisy = {
        "dense": Timing(1.2, 1.0),
        "condensed": Timing(0.9, 0.9),
    }  # dense's spread is 20 %, capped at 15 %
    assert choose(noisy) == "dense"
    assert choose({"dense": quiet(1.0), "condensed": quiet(0.80)}) == "condensed"
    # Among candidates within the margin of the fastest, the first in the candidate order wins.
    assert (
        choose(
            {
                "dense": quiet(1.0),
                "csr": quiet(0.5),
                "condensed": quiet(0.5 * (1 + MIN_MARGIN / 2)),
            }
        )
        == "condensed"
    )


def test_layers_of_one_shape_are_timed_once_and_get_one_kernel() -> None:
    model = twin_mlp()
    inputs = capture_layer_inputs(model, torch.randn(4, 64), list(sparse_layers(model)))
    timer = FakeTimer({"dense": 1.0, "condensed": 0.5, "csr": 0.7}, jitter=0.0)
    plan = plan_acceleration(model, inputs, timer=timer)
    assert len(timer.calls) == 2  # 0 and 2 share a signature; 4 is its own
    chosen = {row.name: row.chosen for row in plan.report.rows}
    assert chosen == {"0": "condensed", "2": "condensed", "4": "condensed"}
    assert plan.layers["0"] is not plan.layers["2"]  # each layer is built from its own weights
    assert not torch.equal(plan.layers["0"].values, plan.layers["2"].values)


def test_two_runs_on_noisy_timings_give_the_same_plan() -> None:
    plans = []
    for seed in (1, 2):
        # condensed is 2 % faster than dense (inside the margin), CSR 40 % faster; timings jitter by 1 %.
        timer = FakeTimer({"dense": 1.0, "condensed": 0.98, "csr": 0.6}, jitter=0.01, seed=seed)
        model = twin_mlp()
        report = accelerate(
            copy.deepcopy(model),
            torch.randn(4, 64),
            timer=timer,
            verbose=False,
            model_repeats=0,
        )
        plans.append([row.chosen for row in report.rows])
    assert plans[0] == plans[1] == ["csr", "csr", "csr"]


def test_a_saved_plan_is_reused_without_timing(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    first = FakeTimer({"dense": 1.0, "condensed": 0.5}, jitter=0.0)
    report = accelerate(
        twin_mlp(),
        torch.randn(4, 64),
        timer=first,
        plan_cache=path,
        verbose=False,
        model_repeats=0,
    )
    assert path.exists() and len(first.calls) == 2
    second = FakeTimer({"dense": 0.1, "condensed": 0.5}, jitter=0.0)  # would choose dense if it were asked
    again = accelerate(
        twin_mlp(),
        torch.randn(4, 64),
        timer=second,
        plan_cache=path,
        verbose=False,
        model_repeats=0,
    )
    assert second.calls == []
    assert [r.chosen for r in again.rows] == [r.chosen for r in report.rows] == ["condensed"] * 3
    other = PlanCache(path, "another CPU")
    assert all(other.get(key.split("||", 1)[1]) is None for key in other.entries)
