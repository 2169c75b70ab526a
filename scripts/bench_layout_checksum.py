"""What the values checksum costs a batch-1 ``CondensedLinear`` call, 1 thread, side by side in one run.

Usage: ``python scripts/bench_layout_checksum.py``. Per layer (90 % sparsity, constant fan-in), times:

* ``checked``: ``layer(x)`` as shipped: the batch-1 layout is looked up under the buffers' identities,
  version counters and a checksum of ``LAYOUT_CHECK_WORDS`` strided words of the values
  (``lightning_srigl/derived_cache.py``), so wholesale edits
  through ``.data`` or numpy are seen;
* ``versions_only``: the same call with the layout looked up under identities and version counters only
  (what the cache keyed on before: it serves stale weights after a ``.data`` edit).

Times are the minimum of interleaved samples of the timing thread's CPU time (robust on a shared machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.timing import hot_times

LAYERS = [(256, 256), (768, 768), (3072, 768), (768, 3072)]  # (out, in)


class VersionsOnly(CondensedLinear):
    """``CondensedLinear`` whose layouts are keyed on identity and version counters only (the code before
    the checksum, verbatim)."""

    def _derived_layout(self, kind: str, build: Callable[[Tensor, Tensor, Tensor], Any]) -> Any:
        buffers = self._buffers
        values, indices, rows = buffers["values"], buffers["indices"], buffers["active_rows"]
        versions = (values._version, indices._version, rows._version)
        layouts = self.__dict__.setdefault("_plain", {})
        entry = layouts.get(kind)
        if (
            entry is None
            or entry[0] is not values
            or entry[1] is not indices
            or entry[2] is not rows
            or entry[3] != versions
        ):
            entry = (values, indices, rows, versions, build(values, indices, rows))
            layouts[kind] = entry
        return entry[4]


def layer(cls: type[CondensedLinear], out: int, width: int) -> CondensedLinear:
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(out, width, generator=g).argsort(1)[:, : width // 10]
    mask = torch.zeros(out, width, dtype=torch.bool).scatter_(1, keep, True)
    dense = CondensedLinear.from_dense_weight(torch.randn(out, width, generator=g), mask, torch.randn(out, generator=g))
    return cls(dense.values, dense.indices, dense.active_rows, dense.bias, width, out)


def main() -> None:
    torch.set_num_threads(1)
    print(machine_fields())
    for out, width in LAYERS:
        x = torch.randn(1, width)
        checked, plain = layer(CondensedLinear, out, width), layer(VersionsOnly, out, width)
        with torch.no_grad():
            calls = {"checked": lambda x=x: checked(x), "versions_only": lambda x=x: plain(x)}
            times = hot_times(calls, threads=1, min_run_time=1.0, device=torch.device("cpu"), min_samples=30)
        mins = {name: t.min * 1e6 for name, t in times.items()}
        ratio = mins["checked"] / mins["versions_only"]
        checked_us, plain_us = mins["checked"], mins["versions_only"]
        print(f"{out}x{width}: checked {checked_us:.1f} us, versions_only {plain_us:.1f} us, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
