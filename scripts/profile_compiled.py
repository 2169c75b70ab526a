"""Where the time of a compiled accelerated model goes: torch's profiler over its calls, op by op.

Usage: ``python scripts/profile_compiled.py --model gpt2 --batch 8 [--calls 2] [--rows 12]``.

The model is ``scripts/bench_whole_models.py``'s (90 % SRigL masks), accelerated with ``accelerate(compile=True)``
at 1 thread; inductor's generated kernels are profiled each under its own name
(``torch._inductor.config.cpp.enable_kernel_profile``), so a fused GELU or LayerNorm shows beside our ops
(``lightning_srigl_<variant>::*``) and oneDNN's (``mkldnn::_linear_pointwise``: a dense linear layer). Prints the
ops with the most self CPU time, per call of the model, and their share. The profiler adds its own time to every op
(a few microseconds a call): the shares of long ops are the reliable ones.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import inputs_of  # noqa: E402
from bench_whole_models import cases  # noqa: E402

from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.acceleration.planning import Timer  # noqa: E402
from lightning_srigl.benchmark.machine import load_averages, machine_fields  # noqa: E402
from lightning_srigl.benchmark.whole_model import masked_model  # noqa: E402


def main(argv: list[str] | None = None, timer: Timer | None = None) -> None:
    """Profile the model ``argv`` names; ``timer`` replaces ``accelerate()``'s (the tests pin its choice with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2, help="profiled calls of the model")
    parser.add_argument("--rows", type=int, default=12, help="ops printed")
    parser.add_argument("--smoke", action="store_true", help="the tiny model (the same code paths)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    case = cases(args.smoke)[args.model]
    model, inputs = copy.deepcopy(masked_model(case, 0.9, 0)), inputs_of(case, args.batch, 0)
    profiled_kernels = torch._inductor.config.patch({"cpp.enable_kernel_profile": True})  # at compile time
    with warnings.catch_warnings(), profiled_kernels:
        warnings.simplefilter("ignore")
        report = accelerate(model, inputs, verbose=False, model_repeats=0, compile=True, timer=timer)
    chosen = [row.chosen for row in report.rows]
    with torch.no_grad():
        model(*inputs)  # after the compile: caches warm
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(args.calls):
                model(*inputs)
    ops = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ops)
    print(machine_fields(), f"load average {load_averages()}")
    print(f"{args.model}, batch {args.batch}, accelerate(compile=True) chose "
          f"{ {kind: chosen.count(kind) for kind in sorted(set(chosen))} }; per call of the model:")  # fmt: skip
    print("| op | calls | self CPU ms | share |\n|---|---|---|---|")
    for event in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        ms = event.self_cpu_time_total / 1e3 / args.calls
        print(f"| {event.key} | {event.count // args.calls} | {ms:.2f} | {event.self_cpu_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
