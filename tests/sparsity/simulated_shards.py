"""N in-process "ranks" (threads) for :class:`~lightning_srigl.sparsity.ShardReducer`: collectives meet at a barrier."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from lightning_srigl.sparsity import ShardReducer

T = TypeVar("T")


class SimulatedGroup:
    """``n`` ranks in threads; :meth:`reducer` gives rank ``r`` a ``ShardReducer`` over them.

    Every collective records its payload size (bytes sent by one rank) in :attr:`sent` (rank 0's calls).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._barrier = threading.Barrier(n, timeout=60)
        self._slots: list[Tensor | None] = [None] * n
        self.sent: list[tuple[str, int]] = []

    def _exchange(self, rank: int, tensor: Tensor, kind: str) -> list[Tensor]:
        if rank == 0:
            self.sent.append((kind, tensor.numel() * tensor.element_size()))
        self._slots[rank] = tensor.clone()
        self._barrier.wait()
        everyone = [t for t in self._slots if t is not None]
        self._barrier.wait()  # nobody overwrites a slot before everyone has read them
        return everyone

    def reducer(self, rank: int) -> ShardReducer:
        """Rank ``rank``'s reducer."""
        return ShardReducer(
            lambda t: torch.stack(self._exchange(rank, t, "all_reduce")).sum(dim=0),
            lambda t: torch.stack(self._exchange(rank, t, "all_gather")),
            rank,
        )

    def run(self, work: Callable[[int, ShardReducer], T]) -> list[T]:
        """``work(rank, reducer)`` on every rank at once; the results in rank order (an error on any rank raises)."""
        results: list[T | None] = [None] * self.n
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = work(rank, self.reducer(rank))
            except BaseException as error:
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        return results  # type: ignore[return-value]


def row_splits(rows: int, sizes: Sequence[int]) -> list[slice]:
    """Consecutive row ranges of the given sizes (they must add up to ``rows``)."""
    assert sum(sizes) == rows, (rows, sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]
