"""DerivedCache rebuilds exactly when a source tensor is replaced or written in place, or ``extra`` changes."""

from __future__ import annotations

import torch

from lightning_srigl.derived_cache import DerivedCache


def test_rebuilt_only_when_a_source_changes() -> None:
    cache: DerivedCache[float] = DerivedCache()
    a, b = torch.ones(3), torch.zeros(2)
    builds: list[float] = []

    def build() -> float:
        builds.append(float(a.sum() + b.sum()))
        return builds[-1]

    assert cache.get("k", (a, b), build) == 3.0 and cache.get("k", (a, b), build) == 3.0
    assert len(builds) == 1  # unchanged sources: cached
    b.add_(1.0)  # an in-place write moves the version counter
    assert cache.get("k", (a, b), build) == 5.0 and len(builds) == 2
    a = torch.full((3,), 2.0)  # a replaced tensor (even one of the same values) is another source
    assert cache.get("k", (a, b), build) == 8.0 and len(builds) == 3
    assert cache.get("k", (a, b), build, extra=torch.float64) == 8.0 and len(builds) == 4
    assert cache.get("other", (a, b), build) == 8.0 and len(builds) == 5  # keys are separate
    cache.clear()
    assert cache.get("k", (a, b), build) == 8.0 and len(builds) == 6


def test_inference_tensors_are_not_cached() -> None:
    with torch.inference_mode():
        t = torch.ones(2)
    assert DerivedCache().get("k", (t,), lambda: 1) is None
