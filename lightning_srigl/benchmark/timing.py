"""Timing with cold caches, on top of the warm-cache timer of :mod:`lightning_srigl.timing`.

Cold caches: the same layer is copied until the copies together exceed the last-level cache
(``cold_bytes``, ~1 GB by default) and the timed statement runs every copy once per pass, so each
call streams its weights from DRAM, as the layers of a whole network would at batch 1
(``docs/benchmarks.md``, "Cold cache").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_srigl.timing import Timing, hot_times

__all__ = ["Timing", "cold_copies", "cold_time", "hot_times"]


def cold_copies(build: Callable[[], nn.Module], dense_bytes: int, cold_bytes: int) -> list[nn.Module]:
    """``ceil(cold_bytes / dense_bytes)`` (at least 2) independently built modules.

    The count is the same for every method of a configuration, so the dense copies alone exceed
    ``cold_bytes``; ``build`` makes one module (CSR tensors cannot be deep-copied).
    """
    return [build() for _ in range(max(2, math.ceil(cold_bytes / dense_bytes)))]


def cold_time(
    modules: Sequence[nn.Module], x: Tensor, *, threads: int, min_run_time: float, device: torch.device
) -> Timing:
    """Seconds per call when each call runs the next of ``modules`` (weights not in cache).

    Args:
        modules: copies of one layer, together larger than the last-level cache.
        x: the input ``(batch, in)``; it stays in cache (it is tiny at batch 1).
    """

    def one_pass() -> None:
        for module in modules:
            module(x)

    timing = hot_times({"pass": one_pass}, threads=threads, min_run_time=min_run_time, device=device)["pass"]
    return timing.scaled(1 / len(modules))
