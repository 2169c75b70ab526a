"""``DerivedCache``: things built from tensors (kernel layouts, mask forms), rebuilt whenever those tensors change.

A cache keyed on a tensor's identity and version counter misses writes that bypass the counter: through
``tensor.data`` (a new alias with a counter of its own), a numpy view or DLPack. So the key may also hold
a `checksum` of a tensor's contents (one pass over it): an edit of any one element, or one that
scales them all, rebuilds the cached value. Edits through such aliases that keep the checksum (two
elements swapped between the same byte positions of two 8-byte words) are not seen; in-place torch ops
on the tensor itself always are (its counter moves). The checksum of a CUDA tensor would wait for the
device, so only CPU tensors are summed.

The full checksum costs one read of the tensor per lookup. On a hot path (``CondensedLinear``'s batch-1
layout, looked up on every call) a lookup sums a fixed number of evenly strided words instead: it sees
edits that scale or rewrite the weights wholesale (``layer.values.data.mul_(2)``, a numpy view's
``*= 2``), not an aliased edit of one element between the sampled words; in-place torch ops on the
buffer itself are always seen. ``scripts/bench_layout_checksum.py`` measures both against a cache keyed
on version counters only.

A leaf module (it imports nothing from the package), so every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

__all__ = ["LAYOUT_CHECK_WORDS", "DerivedCache", "checksum", "checksum_view"]

LAYOUT_CHECK_WORDS = 256
"""Words summed per lookup on a hot path (a condensed layer's batch-1 layout, a dense layer's packed weight): a
fixed cost (``scripts/bench_layout_checksum.py``)."""

T = TypeVar("T")


def checksum_view(tensor: Tensor, words: int | None = None) -> Tensor | Any:
    """A flat view of ``tensor`` whose `checksum` covers its bytes: int64 words where its size is a
    whole number of them, else its elements. Shares ``tensor``'s memory, so it sees every later write.

    Args:
        tensor: any CPU tensor.
        words: at most this many words, evenly strided from the first (a fingerprint of fixed cost that
            still sees ``mul_(2)``-like edits of every element), as a numpy view where numpy is installed
            (its bytes are compared, a few times cheaper than a torch reduction); None: all of them.
    """
    flat = tensor.detach().reshape(-1)
    flat = flat.view(torch.int64) if (flat.numel() * flat.element_size()) % 8 == 0 else flat
    if words is None:
        return flat
    if flat.numel() > words:
        flat = flat[:: -(-flat.numel() // words)]
    try:
        return flat.numpy()
    except (ImportError, RuntimeError, TypeError):  # no numpy, or a dtype it lacks (bf16)
        return flat


def checksum(view: Tensor | Any) -> int | float | str | bytes:
    """The wrapping sum of a `checksum_view`: any one changed int64 word changes it, and so does
    scaling every float (``mul_(2)``). One pass over the memory. A numpy view's key is its bytes."""
    if not isinstance(view, Tensor):
        return view.tobytes()
    total = view.sum().item()
    return "nan" if math.isnan(total) else total  # NaN != NaN would rebuild on every call


class DerivedCache(Generic[T]):
    """``kind -> value`` built from tensors, rebuilt when one of them is replaced or changed.

    An entry keeps the tensors it was built from (so their identity can be checked and an ``id`` is
    never reused), their version counters, and the checksums of the ``summed`` ones. ``clear()`` drops
    every entry (a module's ``_apply``: ``.to()``, ``.half()``).
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry[T]] = {}

    def get(
        self,
        kind: Hashable,
        watched: Sequence[Tensor],
        build: Callable[[], T],
        summed: Sequence[Tensor] = (),
        words: int | None = None,
    ) -> T | None:
        """The value of ``kind``: cached while ``watched`` (identity and version counter) and the contents of
        ``summed`` (CPU tensors among them, see the module docstring) are unchanged, else ``build()``.
        ``words``: checksum at most this many evenly strided words of each ``summed`` tensor
        (`checksum_view`), for lookups on a hot path.

        Returns None for inference tensors (created under ``torch.inference_mode``: they have no version
        counter): the caller then works without the cache.
        """
        try:
            versions = [t._version for t in watched]
        except RuntimeError:
            return None
        entry = self._entries.get(kind)
        if (
            entry is None
            or entry.versions != versions
            or any(a is not b for a, b in zip(entry.tensors, watched))
            or entry.sums != [checksum(v) for v in entry.views]
        ):
            views = [checksum_view(t, words) for t in summed if t.device.type == "cpu"]
            entry = _Entry(tuple(watched), versions, views, [checksum(v) for v in views], build())
            self._entries[kind] = entry
        return entry.value

    def cached(self, kind: Hashable) -> T | None:
        """The value cached under ``kind`` (whether or not still valid), or None."""
        entry = self._entries.get(kind)
        return None if entry is None else entry.value

    def __contains__(self, kind: Hashable) -> bool:
        return kind in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Entry(Generic[T]):
    tensors: tuple[Tensor, ...]
    versions: list[int]
    views: list[Tensor | Any]  # checksum views of the summed tensors
    sums: list[int | float | str | bytes]
    value: T
