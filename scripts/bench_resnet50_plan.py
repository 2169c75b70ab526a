"""ResNet-50 at 90 % (the whole-model benchmark's SRigL masks): what ``accelerate()`` keeps dense, how many
ReLUs move into the convolutions' epilogues, and the whole model's time dense eager vs accelerated eager vs
accelerated compiled (``compile=True``), 1 thread, per batch size (docs/acceleration.md).

Usage: ``python scripts/bench_resnet50_plan.py [--batches 1 8] [--repeats 10] [--model-repeats 10]``.
The three forms are timed by ``accelerate()`` itself (interleaved rounds, fastest sample, the timing
thread's CPU time at 1 thread); every layer kept dense is listed with its candidates' times.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # example_projects

from example_projects.imagenet_resnet50.model import ResNet50  # noqa: E402
from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.benchmark.machine import machine_fields  # noqa: E402
from lightning_srigl.benchmark.whole_model import ModelCase, masked_model  # noqa: E402
from lightning_srigl.condensed.layers.conv import CondensedConv2d  # noqa: E402

CASE = ModelCase("resnet50", ResNet50, lambda batch: torch.randn(batch, 3, 224, 224), "erk", 0.1, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10, help="samples per candidate layer in accelerate()")
    parser.add_argument("--model-repeats", type=int, default=10, help="samples per whole-model form")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_fields(), f"threads=1 load={os.getloadavg()[0]:.1f}")
    for batch in args.batches:
        model = masked_model(CASE, 0.9, seed=0)
        x = CASE.example(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # folding notes
            report = accelerate(
                model, x, repeats=args.repeats, verbose=False, compile=True, model_repeats=args.model_repeats
            )
        chosen = [row.chosen for row in report.rows]
        fused = sum(isinstance(m, CondensedConv2d) and m.relu for m in model.modules())
        relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
        times = report.model_times
        print(f"batch {batch}: " + " ".join(f"{kind}:{chosen.count(kind)}" for kind in sorted(set(chosen))))
        print(f"  ReLUs fused into condensed convolutions: {fused} (ReLU modules left: {relus})")
        for row in report.rows:
            if row.chosen == "dense":
                cells = " ".join(f"{name}={seconds * 1e6:.0f}us" for name, seconds in row.times.items())
                print(f"  kept dense: {row.name} density {row.density:.3f}: {cells}")
        ms = {name: seconds * 1e3 for name, seconds in times.items()}
        print(
            "  whole model ms: "
            + " ".join(f"{name} {value:.1f}" for name, value in ms.items())
            + f"; accelerated {ms['dense'] / ms['accelerated']:.2f}x, compiled {ms['dense'] / ms['compiled']:.2f}x"
            + f" dense eager; compile {report.compile_seconds:.1f} s; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
