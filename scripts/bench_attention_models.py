"""Whole models accelerated and compiled, attention on torch's SDPA vs on ``lightning_srigl::attention``, 1 thread.

Usage: ``python scripts/bench_attention_models.py [--models vit_b16 bert gpt2] [--batches 1 8]``. Each model of
``scripts/bench_whole_models.py`` (90 % SRigL masks) is accelerated twice with ``compile=True``: with
``fast_attention=False`` (attention stays torch's ``scaled_dot_product_attention``) and with the default
``fast_attention=True`` (the op where ``accelerate`` times it faster: the chosen attention is printed). Both compiled
models are then timed in interleaved rounds, minimum of the timing thread's CPU time; the CPU, kernel variant and
load are printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_whole_models (it adds the checkout's root)

from bench_whole_models import cases

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.benchmark.whole_model import masked_model
from lightning_srigl.timing import cpu_ms


def _call(model: torch.nn.Module, inputs: object) -> object:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b16", "bert", "gpt2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--smoke", action="store_true", help="tiny models (a quick check of the script)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_fields()
    print(f"{machine['cpu_model']}, kernels {machine['kernel_variant']}, load {os.getloadavg()[0]:.1f}")
    print("| model | batch | attention chosen | compiled, SDPA ms | compiled, chosen ms | x |")
    print("|---|---|---|---|---|---|")
    available = cases(args.smoke)
    for name in args.models:
        model = masked_model(available[name], 0.9, 0)
        for batch in args.batches:
            torch.manual_seed(batch)
            inputs = available[name].example(batch)
            forms, chosen = {}, ""
            for form, fast in (("sdpa", False), ("chosen", True)):
                forms[form] = copy.deepcopy(model)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = accelerate(
                        forms[form], inputs, compile=True, fast_attention=fast, model_repeats=0, verbose=False
                    )
                chosen = chosen or ",".join(sorted(set(report.attention.values())))
            ms = cpu_ms(
                {form: (lambda m=module: _call(m, inputs)) for form, module in forms.items()},
                args.seconds,
            )
            sdpa_ms, chosen_ms = ms["sdpa"], ms["chosen"]
            print(f"| {name} | {batch} | {chosen} | {sdpa_ms:.1f} | {chosen_ms:.1f} | {sdpa_ms / chosen_ms:.2f} |")
            torch.compiler.reset()
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
