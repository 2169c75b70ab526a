"""Timing with warm caches: interleaved rounds of short samples, their median and minimum.

Shared by ``accelerate()`` (which picks the fastest exact layer) and the benchmark
([`timing`][lightning_srigl.benchmark.timing] adds cold-cache timing on top), so both rank kernels the same
way: on a machine shared with other work a preempted sample only ever looks slower, so the minimum of
interleaved samples is the robust statistic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the minimum over the timed samples."""

    median: float
    min: float

    def scaled(self, factor: float) -> Timing:
        """Both statistics multiplied by ``factor`` (e.g. ``1 / copies`` for a cold pass)."""
        return Timing(self.median * factor, self.min * factor)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_call(
    fn: Callable[[], object], number: int, device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> float:
    _sync(device)
    start = clock()
    for _ in range(number):
        fn()
    _sync(device)
    return (clock() - start) / number


def hot_times(
    fns: Mapping[str, Callable[[], object]],
    *,
    threads: int,
    min_run_time: float,
    device: torch.device,
    sample_time: float = 1e-3,
    warmup: int = 3,
    min_samples: int = 7,
    clock: Callable[[], float] | None = None,
) -> dict[str, Timing]:
    """Time each of ``fns`` with warm caches on ``threads`` intra-op threads, in interleaved rounds.

    Each function gets warm-up calls (at least ``warmup`` and 10 % of ``min_run_time``) and a
    ``number`` of back-to-back calls per sample chosen so a sample lasts about ``sample_time``. Then
    every round takes one sample of each function in turn, until each has at least ``min_samples``
    samples and ``min_run_time`` seconds measured; each sample follows one untimed call of the same function, so its
    caches are as
    warm as in back-to-back calls although the other functions ran in between. Interleaving makes the
    functions share the machine's slow drifts (other tenants, clock changes), so their ratio is fairer
    than with one function timed after the other; short samples keep the minimum meaningful on a
    shared machine, since a sample that was not preempted exists even when many were. On one CPU
    thread a sample is the calling thread's CPU time (``time.thread_time``), which time spent
    descheduled does not inflate; otherwise, and on GPUs, it is wall time. ``clock`` replaces that choice
    (e.g. ``time.process_time`` for engines that compute on threads of their own).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    if clock is None:
        clock = time.thread_time if threads == 1 and device.type == "cpu" else time.perf_counter
    try:
        numbers = {}
        for name, fn in fns.items():
            warm = [_per_call(fn, 1, device) for _ in range(max(1, warmup))]
            while sum(warm) < 0.1 * min_run_time:
                warm.append(_per_call(fn, 1, device))
            numbers[name] = max(1, round(sample_time / min(warm)))
        samples: dict[str, list[float]] = {name: [] for name in fns}

        def done(name: str) -> bool:
            return len(samples[name]) >= min_samples and sum(samples[name]) * numbers[name] >= min_run_time

        while not all(done(name) for name in fns):
            for name, fn in fns.items():
                if not done(name):
                    fn()  # re-warm the caches the other functions evicted
                    samples[name].append(_per_call(fn, numbers[name], device, clock))
    finally:
        torch.set_num_threads(previous)
    return {name: Timing(statistics.median(times), min(times)) for name, times in samples.items()}


def cpu_ms(fns: Mapping[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """The scripts' side-by-side comparison: each of ``fns`` timed by `hot_times` on one CPU thread (thread CPU time,
    interleaved rounds, at least 5 samples and ``seconds`` measured each) -> its fastest sample in ms per call."""
    times = hot_times(fns, threads=1, min_run_time=seconds, device=torch.device("cpu"), warmup=1, min_samples=5)
    return {name: timing.min * 1e3 for name, timing in times.items()}
