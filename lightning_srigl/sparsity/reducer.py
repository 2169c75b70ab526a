"""The layer-wide steps of a topology update behind a reducer: one code path for one process and for row shards.

Almost all of an SRigL or RigL update is per neuron (row). What needs the whole layer is a few scalar
counts, the layer-wise top-``k`` selections and one order statistic. `srigl_update_layers`
and `rigl_update_layers` ask a `Reducer` for exactly those, for all layers of one update
at once, so the number of communication rounds does not grow with depth:

* `LocalReducer` - the whole layer is here (one process, or DDP where every rank holds it all);
* `ShardReducer` - each process holds a *shard*, a consecutive range of rows, shard ``i`` the
  rows before shard ``i + 1``'s (FSDP2's ``Shard(0)``, ``torch.chunk``'s split; a shard may be empty).
  The collectives are passed in as callables, so this module needs no ``torch.distributed``.

Both select the same positions: the ``k`` largest scores, ties to the lower flat (row-major) index of the
whole layer. ``ShardReducer`` finds the exact ``k``-th largest score by radix selection: scores become
signed integer keys ordered like them (a float's bit pattern with the magnitude bits of negatives
flipped; ``-0.0`` counted as ``+0.0``), and each round sums, over the shards, a 256-bin histogram of the
next 8 bits of the keys that match the bits chosen so far (4 rounds for 32-bit keys, 8 for 64-bit).
One all-gather of per-shard tie counts then hands the threshold's ties out in row order. Per selection
that is ``4 x 257`` summed int64 plus one gathered int64 per shard (about 8 KB), whatever the layer size.
The first round reads the scores in blocks of `KEY_BLOCK_ELEMENTS`, and so does the count of ties; the
mask comes from comparing the scores with the threshold, so besides its inputs a selection needs its bool
mask of the shard (one more while the threshold's ties are handed out), the keys of the few scores that
share the threshold's top byte, and temporaries of a fixed size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lightning_srigl.sparsity.topk import BLOCK_ELEMENTS, kth_largest, topk_mask

__all__ = ["LocalReducer", "Reducer", "Selection", "ShardReducer", "update_groups"]

BITS_PER_ROUND = 8
BINS = 1 << BITS_PER_ROUND
KEY_BLOCK_ELEMENTS = 1 << 16  # scores turned into keys at a time: their few int32/int64 temporaries stay < 2 MiB


@dataclass(frozen=True)
class Selection:
    """One layer-wide selection: the ``k`` largest of a layer's ``scores``, only ``among``'s entries eligible.

    Attributes:
        scores: this process's part of the layer's scores, any shape, real, no NaN where eligible.
        k: how many to select over the whole layer (all shards together).
        among: optional bool tensor shaped like ``scores``; only its True entries are eligible.
    """

    scores: Tensor
    k: int
    among: Tensor | None = None


class Reducer(Protocol):
    """The layer-wide steps of an update; each call serves every layer of one update at once.

    Attributes:
        batch_elements: how many weights (of whole layers) one batch of layers may hold; 0 updates
            layers one by one (nothing to save by batching them).
    """

    batch_elements: int

    def sum(self, counts: Sequence[int]) -> list[int]:
        """Each count summed over the whole layer (all shards)."""
        ...

    def kth_largest(self, selections: Sequence[Selection]) -> list[Tensor]:
        """Per selection, the ``k``-th largest eligible score of the whole layer (0-d, ``1 <= k <= n``)."""
        ...

    def topk_masks(self, selections: Sequence[Selection]) -> list[Tensor]:
        """Per selection, a bool mask shaped like its ``scores``: this part of the layer-wide top-``k``."""
        ...


class LocalReducer:
    """The whole layer is in this process: counts are what they are, selections are `topk`'s."""

    batch_elements = 0  # no communication to batch: one layer's temporaries at a time

    def sum(self, counts: Sequence[int]) -> list[int]:
        """``counts`` unchanged."""
        return [int(c) for c in counts]

    def kth_largest(self, selections: Sequence[Selection]) -> list[Tensor]:
        """`kth_largest` of each selection."""
        return [kth_largest(s.scores, s.k, s.among) for s in selections]

    def topk_masks(self, selections: Sequence[Selection]) -> list[Tensor]:
        """`topk_mask` of each selection."""
        return [topk_mask(s.scores, s.k, among=s.among) for s in selections]


def order_keys(values: Tensor) -> Tensor:
    """Signed integer keys ordered exactly like ``values`` (1-D, no NaN): ``a < b`` iff ``key(a) < key(b)``.

    Floats of up to 32 bits give int32 keys (half precision is widened exactly), float64 int64 keys;
    ``-0.0`` gets the key of ``+0.0`` (they compare equal). Integer values are their own keys.
    """
    if not values.is_floating_point():
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"cannot order {values.dtype} scores")
        return values if values.dtype in (torch.int32, torch.int64) else values.to(torch.int64)
    if values.element_size() < 4:
        values = values.float()
    wide = values.element_size() == 8
    bits = values.view(torch.int64 if wide else torch.int32)
    magnitude = (1 << 63) - 1 if wide else (1 << 31) - 1
    keys = torch.where(bits < 0, bits ^ magnitude, bits)  # negatives: larger magnitude, smaller key
    keys.masked_fill_(keys == -1, 0)  # -0.0 (bits 1 << 31 or 63) ties +0.0
    return keys


def _value_of_key(key: int, like: Tensor) -> Tensor:
    """The 0-d value of ``like``'s dtype whose `order_keys` key is ``key`` (inverse of the key map)."""
    if not like.is_floating_point():
        return torch.tensor(key, dtype=like.dtype, device=like.device)
    wide = like.element_size() == 8
    magnitude = (1 << 63) - 1 if wide else (1 << 31) - 1
    bits = torch.tensor(key if key >= 0 else key ^ magnitude, dtype=torch.int64 if wide else torch.int32)
    return bits.view(torch.float64 if wide else torch.float32).to(dtype=like.dtype, device=like.device)


@dataclass(eq=False)
class _Search:
    """Radix search state of one selection: its scores, the chosen high key bits and the rank still to find.

    No key tensor of the whole shard is kept: the first round reads the scores block by block, and only
    the (usually few) eligible entries whose top byte matches go on, as keys, to the later rounds.
    """

    scores: Tensor  # (n_local,) this shard's scores
    eligible: Tensor | None  # (n_local,) bool, or None: all eligible
    k: int
    width: int  # key bits
    candidates: Tensor | None = None  # keys of eligible entries matching the prefix
    prefix: int = 0  # the key's bits chosen so far (arithmetic: key >> remaining bits)
    need: int = 0  # rank (1-based) of the wanted key among candidates over all shards
    total: int = 0  # eligible entries over all shards
    done: bool = False  # k is 0 or n: no threshold needed

    @property
    def rounds(self) -> int:
        return self.width // BITS_PER_ROUND


def _eligible_keys(search: _Search) -> Iterator[Tensor]:
    """`order_keys` of the eligible scores, block by block."""
    for start in range(0, search.scores.numel(), KEY_BLOCK_ELEMENTS):
        block = search.scores[start : start + KEY_BLOCK_ELEMENTS]
        if search.eligible is not None:
            block = block[search.eligible[start : start + KEY_BLOCK_ELEMENTS]]
        yield order_keys(block)


def _histogram(search: _Search, round_index: int) -> Tensor:
    """This shard's ``(BINS,)`` int64 histogram of the next 8 key bits among the candidates (narrowing them)."""
    shift = search.width - BITS_PER_ROUND * (round_index + 1)
    histogram = torch.zeros(BINS, dtype=torch.int64)
    if round_index == 0:
        for keys in _eligible_keys(search):
            top = keys >> shift
            top += BINS // 2  # the top byte is signed
            histogram += torch.bincount(top, minlength=BINS).cpu()
        return histogram
    if round_index == 1:  # gather the keys in the chosen top byte
        parts = [keys[(keys >> (shift + BITS_PER_ROUND)) == search.prefix] for keys in _eligible_keys(search)]
        search.candidates = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    else:
        assert search.candidates is not None
        search.candidates = search.candidates[(search.candidates >> (shift + BITS_PER_ROUND)) == search.prefix]
    return torch.bincount((search.candidates >> shift) & (BINS - 1), minlength=BINS).to(torch.int64).cpu()


def _choose_bin(search: _Search, histogram: list[int], round_index: int) -> None:
    """Descend into the bin holding the ``need``-th largest candidate; keep ``need`` its rank inside the bin."""
    above = 0
    for bin_index in range(BINS - 1, -1, -1):
        if above + histogram[bin_index] >= search.need:
            search.need -= above
            chosen = bin_index - BINS // 2 if round_index == 0 else bin_index
            search.prefix = chosen if round_index == 0 else (search.prefix << BITS_PER_ROUND) | chosen
            return
        above += histogram[bin_index]
    raise AssertionError("the histograms summed over shards hold fewer candidates than counted")


def _nan_count(search: _Search, selection: Selection) -> Tensor:
    """``(1,)`` int64: how many eligible scores of this shard are NaN."""
    if not selection.scores.is_floating_point():
        return torch.zeros(1, dtype=torch.int64)
    nan = torch.isnan(selection.scores.reshape(-1))
    if search.eligible is not None:
        nan &= search.eligible
    return nan.count_nonzero().reshape(1).to(torch.int64)


def _ties(search: _Search, threshold: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """``(stop - start,)`` bool: which of this shard's scores ``[start, stop)`` are eligible and equal ``threshold``."""
    tie = search.scores[start:stop] == threshold
    if search.eligible is not None:
        tie &= search.eligible[start:stop]
    return tie


def _tie_count(search: _Search, threshold: Tensor) -> int:
    """How many of this shard's eligible scores equal ``threshold``, counted block by block (no mask of the shard)."""
    blocks = range(0, search.scores.numel(), KEY_BLOCK_ELEMENTS)
    return sum(int(_ties(search, threshold, start, start + KEY_BLOCK_ELEMENTS).count_nonzero()) for start in blocks)


def _take_first(flags: Tensor, count: int) -> Tensor:
    """The first ``count`` True entries of 1-D bool ``flags`` (a new tensor), counted block by block."""
    taken = torch.zeros_like(flags)
    for start in range(0, flags.numel(), BLOCK_ELEMENTS):
        if count <= 0:
            break
        block = flags[start : start + BLOCK_ELEMENTS]
        in_block = int(block.count_nonzero())
        taken[start : start + BLOCK_ELEMENTS] = block if in_block <= count else block & (block.cumsum(0) <= count)
        count -= in_block
    return taken


class ShardReducer:
    """The layer-wide steps over row shards held by several processes; the collectives are passed in.

    Args:
        all_reduce_sum: ``(m,)`` int64 -> the elementwise sum over the shards' tensors (every shard calls it
            with the same ``m``, in the same order), e.g. ``torch.distributed.all_reduce`` over the
            data-parallel group that shards the weights.
        all_gather: ``(m,)`` int64 -> ``(shards, m)``, row ``i`` from shard ``i``.
        shard: this process's index among the shards, in row order.
        batch_elements: how many weights (of whole layers) one batch of layers updated together may hold:
            more saves rounds, less bounds the temporaries (about 10 bytes per weight of this shard).
    """

    def __init__(
        self,
        all_reduce_sum: Callable[[Tensor], Tensor],
        all_gather: Callable[[Tensor], Tensor],
        shard: int,
        batch_elements: int = 1 << 26,
    ) -> None:
        self._all_reduce_sum = all_reduce_sum
        self._all_gather = all_gather
        self.shard = shard
        self.batch_elements = batch_elements

    def sum(self, counts: Sequence[int]) -> list[int]:
        """``counts`` summed over the shards (one all-reduce)."""
        if not counts:
            return []
        return [int(c) for c in self._all_reduce_sum(torch.tensor(list(counts), dtype=torch.int64)).tolist()]

    def kth_largest(self, selections: Sequence[Selection]) -> list[Tensor]:
        """The ``k``-th largest eligible score of each whole layer (``1 <= k <= n``), as a 0-d tensor."""
        searches = self._search(selections, allow_empty=False)
        return [_value_of_key(s.prefix, sel.scores) for s, sel in zip(searches, selections)]

    def topk_masks(self, selections: Sequence[Selection]) -> list[Tensor]:
        """This shard's part of each layer-wide top-``k`` mask (ties to the lower row-major index)."""
        searches = self._search(selections, allow_empty=True)
        open_searches = [s for s in searches if not s.done]
        thresholds = {id(s): _value_of_key(s.prefix, s.scores) for s in open_searches}  # compares like the key
        local_ties = [_tie_count(s, thresholds[id(s)]) for s in open_searches]
        before = [0] * len(open_searches)
        if open_searches:
            gathered = self._all_gather(torch.tensor(local_ties, dtype=torch.int64))
            before = gathered[: self.shard].sum(dim=0).tolist()
        masks = []
        tie_of = dict(zip(map(id, open_searches), zip(local_ties, before)))
        for s, sel in zip(searches, selections):
            if s.done:
                full = s.k == s.total and s.k > 0
                chosen = (torch.ones_like(s.scores, dtype=torch.bool) if s.eligible is None else s.eligible.clone()) \
                    if full else torch.zeros_like(s.scores, dtype=torch.bool)  # fmt: skip
            else:
                n_ties, n_before = tie_of[id(s)]
                chosen = s.scores > thresholds[id(s)]
                if s.eligible is not None:
                    chosen &= s.eligible
                take = min(max(s.need - n_before, 0), n_ties)
                if take:
                    chosen |= _take_first(_ties(s, thresholds[id(s)]), take)
            masks.append(chosen.reshape(sel.scores.shape))
        return masks

    def _search(self, selections: Sequence[Selection], allow_empty: bool) -> list[_Search]:
        """Radix-select the ``k``-th largest key of every selection, all selections in the same rounds."""
        searches = [self._start(sel) for sel in selections]
        for round_index in range(max((s.rounds for s in searches), default=0)):
            active = [(s, sel) for s, sel in zip(searches, selections) if not s.done and round_index < s.rounds]
            if not active:
                break
            messages = []
            for s, sel in active:
                messages.append(_histogram(s, round_index))
                if round_index == 0:
                    messages.append(_nan_count(s, sel))
            summed = self._all_reduce_sum(torch.cat(messages)).tolist()
            width = BINS + (1 if round_index == 0 else 0)
            for i, (s, _) in enumerate(active):
                histogram = summed[i * width : i * width + BINS]
                if round_index == 0:
                    self._check_first_round(s, histogram, summed[i * width + BINS], allow_empty)
                    if s.done:
                        continue
                _choose_bin(s, histogram, round_index)
        return searches

    @staticmethod
    def _start(selection: Selection) -> _Search:
        scores = selection.scores
        if selection.among is not None and selection.among.shape != scores.shape:
            raise ValueError(
                f"among must have the shape of scores {tuple(scores.shape)}, got {tuple(selection.among.shape)}"
            )
        flat = scores.reshape(-1)
        eligible = None if selection.among is None else selection.among.reshape(-1)
        width = order_keys(flat[:0]).element_size() * 8
        return _Search(scores=flat, eligible=eligible, k=selection.k, width=width)

    @staticmethod
    def _check_first_round(search: _Search, histogram: list[int], nan: int, allow_empty: bool) -> None:
        """Count the eligible entries; raise (on every shard alike) on NaN or a ``k`` out of range."""
        if nan:
            raise ValueError(
                "scores contain NaN, so a top-k selection is undefined; "
                "skip the update or replace non-finite gradients before scoring"
            )
        search.total = sum(histogram)
        low = 0 if allow_empty else 1
        if not low <= search.k <= search.total:
            raise ValueError(
                f"k must be in [{low}, {search.total}] for {search.total} eligible scores, got k={search.k}"
            )
        search.need = search.k
        search.done = allow_empty and search.k in (0, search.total)


def update_groups(names: Sequence[str], numels: Sequence[int], batch_elements: int) -> list[list[str]]:
    """Consecutive layers updated together: each group as many as fit in ``batch_elements`` weights (of the
    whole layers, so every process groups alike), at least one layer.

    Args:
        names: the layers, in update order.
        numels: each whole layer's number of weights.
        batch_elements: `Reducer.batch_elements`.
    """
    groups: list[list[str]] = []
    held = 0
    for name, numel in zip(names, numels):
        if not groups or held + numel > batch_elements:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += numel
    return groups
