"""Timing with warm caches (median of ``torch.utils.benchmark`` blocks) and with cold caches.

Cold caches: the same layer is copied until the copies together exceed the last-level cache
(``cold_bytes``, ~1 GB by default) and the timed statement runs every copy once per pass, so each
call streams its weights from DRAM, as the layers of a whole network would at batch 1
(``research/kernels.md`` §5).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils import benchmark


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hot_time(fn: Callable[[], object], *, threads: int, min_run_time: float, device: torch.device) -> float:
    """Median seconds per call of ``fn`` with warm caches.

    One warm-up call, then ``Timer.blocked_autorange``: blocks of calls until ``min_run_time``
    seconds have been measured, median over blocks (the method of the SRigL paper's benchmark).
    """
    fn()
    _sync(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def cold_copies(module: nn.Module, dense_bytes: int, cold_bytes: int) -> list[nn.Module]:
    """``ceil(cold_bytes / dense_bytes)`` independent copies of ``module`` (the same count for every
    method of a configuration, so the dense copies alone exceed ``cold_bytes``)."""
    count = max(2, math.ceil(cold_bytes / dense_bytes))
    return [module] + [copy.deepcopy(module) for _ in range(count - 1)]


def cold_time(
    modules: Sequence[nn.Module], x: Tensor, *, threads: int, min_run_time: float, device: torch.device
) -> float:
    """Median seconds per call when each call runs the next of ``modules`` (weights not in cache).

    Args:
        modules: copies of one layer, together larger than the last-level cache.
        x: the input ``(batch, in)``; it stays in cache (it is tiny at batch 1).
    """

    def one_pass() -> None:
        for module in modules:
            module(x)

    return hot_time(one_pass, threads=threads, min_run_time=min_run_time, device=device) / len(modules)
