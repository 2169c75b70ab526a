"""What the values checksum costs a batch-1 ``CondensedLinear`` call, 1 thread, side by side in one run.

Usage: ``python scripts/bench_layout_checksum.py [--model llama_decode]``. Per layer (90 % sparsity, constant
fan-in), times:

* ``checked``: ``layer(x)`` as shipped: the batch-1 layout is looked up under the buffers' identities,
  version counters and a checksum of ``LAYOUT_CHECK_WORDS`` strided words of the values
  (``lightning_srigl/derived_cache.py``), so wholesale edits
  through ``.data`` or numpy are seen;
* ``versions_only``: the same call with the layout looked up under identities and version counters only
  (what the cache keyed on before: it serves stale weights after a ``.data`` edit);
* ``compiled``: the layer in a compiled graph (``compile_lazily``, as ``accelerate(compile=True)`` compiles):
  the batch-1 kernel on the layout frozen before the compile (``CondensedLinear.freeze_for_compile``), no
  lookup and hence no checksum;
* ``gather_op``: the ``lightning_srigl::condensed_linear`` op on the buffers (the gather kernel), what a
  graph compiled without that frozen layout (plain ``torch.compile``) runs.

``--model llama_decode`` also times the whole model: one token decoded with the KV cache after a 128-token
prompt (the whole-model benchmark's Llama-style decoder, 90 %), accelerated, with its layers as shipped and
with versions-only lookups, and compiled with and without the frozen batch-1 layouts, side by side (needs
``transformers``).

Times are the minimum of interleaved samples of the timing thread's CPU time (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.benchmark.whole_model import masked_model
from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.kernels.compiled import compile_in_place, compile_lazily
from lightning_srigl.kernels.linear import condensed_linear
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


def timed(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Microseconds per call of each of ``calls``: the fastest interleaved sample, 1 thread, CPU time."""
    with torch.no_grad():
        times = hot_times(calls, threads=1, min_run_time=1.0, device=torch.device("cpu"), min_samples=30)
    return {name: t.min * 1e6 for name, t in times.items()}


def whole_decoder() -> None:
    """The Llama-style decoder's decode step, accelerated: eager as shipped and with versions-only layout lookups,
    and compiled (``compile_in_place``), with the frozen batch-1 layouts and without them (the gather op)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_whole_models import cases

    case = cases(False)["llama_decode"]
    shipped = masked_model(case, 0.9, 0)
    torch.manual_seed(1)
    inputs = case.example(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerate(shipped, inputs, verbose=False, model_repeats=0)
    plain = copy.deepcopy(shipped)
    for module in plain.modules():
        if type(module) is CondensedLinear:
            module.__class__ = VersionsOnly
    compiled, gather = copy.deepcopy(shipped), copy.deepcopy(shipped)
    for module in gather.modules():
        if type(module) is CondensedLinear:
            module.freeze_for_compile = lambda freeze=True: None  # type: ignore[method-assign]
    for model in (compiled, gather):  # the KV cache's Python objects break the graph: compile the pieces
        compile_in_place(model, inputs, fullgraph=False)
    us = timed({"checked": lambda: shipped(*inputs), "versions_only": lambda: plain(*inputs),
                "compiled": lambda: compiled(*inputs), "compiled_gather": lambda: gather(*inputs)})  # fmt: skip
    print(f"llama_decode: checked {us['checked']:.0f} us, versions_only {us['versions_only']:.0f} us, "
          f"ratio {us['checked'] / us['versions_only']:.3f}; compiled {us['compiled']:.0f} us, "
          f"compiled without frozen layouts (gather op) {us['compiled_gather']:.0f} us")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama_decode"], help="also time this whole model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_fields(), f"load {os.getloadavg()[0]:.1f}")
    for out, width in LAYERS:
        x = torch.randn(1, width)
        checked, plain = layer(CondensedLinear, out, width), layer(VersionsOnly, out, width)
        op = lambda x=x, m=checked: condensed_linear(x, m.values, m.indices, m.bias)  # noqa: E731
        compiled = copy.deepcopy(checked)
        compile_lazily(compiled)
        calls = {"checked": lambda x=x: checked(x), "versions_only": lambda x=x: plain(x), "gather_op": op}
        us = timed(calls | {"compiled": lambda x=x: compiled(x)})
        print(f"{out}x{width}: checked {us['checked']:.1f} us, versions_only {us['versions_only']:.1f} us, "
              f"ratio {us['checked'] / us['versions_only']:.2f}; compiled {us['compiled']:.1f} us, "
              f"gather_op {us['gather_op']:.1f} us")  # fmt: skip
    if args.model:
        whole_decoder()
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
