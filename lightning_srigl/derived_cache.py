"""A cache of values derived from tensors, rebuilt when a source tensor is replaced or changed in place.

A tensor's version counter (``t._version``) moves on every in-place write (``copy_``, ``load_state_dict``,
optimizer steps), and a replaced tensor is another object, so an entry stays valid exactly while every
source is the same object at the same version (and ``extra``, e.g. a dtype and device, is the same).
Used for the masks' step masks (``masking/masks.py``), the sampled product's layouts
(``training/sparse_backward.py``) and ``CondensedLinear``'s kernel layouts. A leaf module: it imports
nothing from the package, so every layer may use it (docs/design.md).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from torch import Tensor

__all__ = ["DerivedCache"]

T = TypeVar("T")


class DerivedCache(Generic[T]):
    """``key -> build()`` while the ``sources`` it was built from are unchanged (see the module docstring)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Tensor, ...], list[int], Any, T]] = {}

    def get(self, key: Hashable, sources: tuple[Tensor, ...], build: Callable[[], T], extra: Any = None) -> T | None:
        """The value cached under ``key``, or ``build()`` (then cached) when a source was replaced, changed in
        place, or ``extra`` differs. ``None`` for sources made under ``torch.inference_mode`` (they have no
        version counter): callers then compute without the cache."""
        try:
            versions = [t._version for t in sources]  # a list, not a generator: this runs on every call
        except RuntimeError:  # inference tensors
            return None
        entry = self._entries.get(key)
        if entry is None or entry[1] != versions or entry[2] != extra or not all(map(operator.is_, entry[0], sources)):
            entry = (sources, versions, extra, build())
            self._entries[key] = entry
        return entry[3]

    def clear(self) -> None:
        """Forget every entry (their sources are gone, e.g. after ``module.to(...)``)."""
        self._entries.clear()
