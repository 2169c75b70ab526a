"""Whole ViT-B/16 and BERT-base at 90 % sparsity with int8 condensed layers, against dense fp32, our exact fp32
acceleration and ONNX Runtime's dynamic int8 of the dense model, side by side at 1 thread.

The models and masks are ``scripts/bench_whole_models.py``'s (the example project's ViT-B/16 at 224x224,
whose attention is ``nn.MultiheadAttention``; BERT-base from ``BertConfig()`` at 128 tokens, all its
projections ``nn.Linear``; random weights, 90 % SRigL masks). Variants, all on the same weights:

* ``dense fp32``: torch eager, masks removed;
* ``fp32 accelerated``: ``accelerate(model, x)`` (exact kernels only);
* ``int8 accelerated``: ``accelerate(model, x, quantize="int8-condensed")``: int8 condensed candidates too,
  each kept where its output error on ``x`` is within the default budget and it is the fastest;
* ``int8 compiled``: that model compiled as ``compile=True`` does (``compile_in_place``): one inductor graph
  (freezing) with the int8 and fp32 condensed ops opaque, LayerNorm, GELU and the residual adds fused around
  them (``--no-compile`` leaves it out);
* ``ORT dynamic int8 (dense)``: the dense model exported to ONNX (``torch.onnx.export``, dynamo) and
  quantized by ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights), 1 intra-op thread.

Timing: ``lightning_srigl.timing.hot_times``, interleaved rounds, minimum per call, CPU time of the process
(ONNX Runtime computes on its own thread). Then the int8 accelerated model's time by operator (``torch.profiler``):
where the rest of its time goes. Needs onnxruntime, onnx, onnxscript and transformers::

    PYTHONPATH=. python scripts/int8_whole_models.py --models vit_b16 bert --batch 1 --out runs/int8_whole_models.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_whole_models import cases  # noqa: E402

from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.benchmark.machine import load_averages  # noqa: E402
from lightning_srigl.benchmark.peers import LogitsOnly, export_onnx, onnx_runner  # noqa: E402
from lightning_srigl.benchmark.whole_model import ModelCase, masked_model  # noqa: E402
from lightning_srigl.kernels.compiled import compile_in_place  # noqa: E402
from lightning_srigl.kernels.cpu.isa import cpu_model, requested_variant  # noqa: E402
from lightning_srigl.masking import remove_masks_  # noqa: E402
from lightning_srigl.timing import hot_times  # noqa: E402


def ort_int8(dense: torch.nn.Module, case: ModelCase, inputs: tuple[torch.Tensor, ...], folder: Path):
    """``() -> logits`` of ONNX Runtime's dynamic int8 of ``dense`` on ``inputs``, 1 thread."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(LogitsOnly(dense, case.logits), inputs, folder / "fp32.onnx")
    quantize_dynamic(fp32, folder / "int8.onnx", weight_type=QuantType.QInt8)
    run = onnx_runner("onnxruntime", folder / "int8.onnx", threads=1)
    arrays = [t.numpy() for t in inputs]
    return lambda: torch.from_numpy(run(arrays))


def measure(case: ModelCase, batch: int, seconds: float, folder: Path, compiled: bool) -> dict[str, object]:
    model = masked_model(case, 0.9, 0)
    torch.manual_seed(batch)
    example = case.example(batch)
    inputs = example if isinstance(example, tuple) else (example,)
    dense = copy.deepcopy(model)
    remove_masks_(dense)
    fp32, int8 = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerate(fp32, example, repeats=3, verbose=False, model_repeats=0)
        report = accelerate(int8, example, quantize="int8-condensed", repeats=3, verbose=False, model_repeats=0)
    int8_compiled = copy.deepcopy(int8)  # the same layers, compiled in place (what compile=True does)
    if compiled:
        compile_in_place(int8_compiled, example)
    calls = {
        "dense fp32": lambda: case.logits(dense(*inputs)),
        "fp32 accelerated": lambda: case.logits(fp32(*inputs)),
        "int8 accelerated": lambda: case.logits(int8(*inputs)),
        "int8 compiled": lambda: case.logits(int8_compiled(*inputs)),
        "ORT dynamic int8 (dense)": ort_int8(dense, case, inputs, folder),
    }
    if not compiled:
        del calls["int8 compiled"]
    with torch.inference_mode():
        reference = calls["dense fp32"]().float()
        errors = {name: float((call().float() - reference).norm() / reference.norm()) for name, call in calls.items()}
        timings = hot_times(
            calls, threads=1, min_run_time=seconds, device=torch.device("cpu"), clock=time.process_time, min_samples=5
        )
        breakdown = profile(calls["int8 accelerated"])
    chosen = [row.chosen for row in report.rows]
    return {
        "model": case.name,
        "batch": batch,
        "ms": {name: timing.min * 1e3 for name, timing in timings.items()},
        "error": errors,
        "int8 chose": ", ".join(f"{kind} x{chosen.count(kind)}" for kind in sorted(set(chosen))),
        "int8 profile": breakdown,
    }


def profile(call: Callable[[], object], calls: int = 3, top: int = 6) -> dict[str, float]:
    """Share (%) of the ``top`` operators in ``call``'s self CPU time under ``torch.profiler`` (``calls`` calls;
    the rest summed as "other")."""
    call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    shares = {event.key.split("::")[-1]: 100 * event.self_cpu_time_total / total for event in events[:top]}
    shares["other"] = 100 - sum(shares.values())
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_b16", "bert"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of samples per variant")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled int8 model")
    parser.add_argument("--smoke", action="store_true", help="tiny models (the same code paths, for a quick check)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = cases(smoke=args.smoke)
    before = load_averages()
    lines, profiles = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for batch in args.batch:
                row = measure(found[name], batch, args.seconds, Path(folder), not args.no_compile)
                print(row, flush=True)
                ms, error = row["ms"], row["error"]
                cells = " | ".join(f"{value:.1f} ({error[key]:.3f})" for key, value in ms.items())
                ours = [ms[key] for key in ("int8 accelerated", "int8 compiled") if key in ms]
                versus = [
                    " / ".join(f"{ms[peer] / mine:.2f}x" for mine in ours)
                    for peer in ("dense fp32", "ORT dynamic int8 (dense)")
                ]
                lines.append(f"| {name} | {batch} | {cells} | {' | '.join(versus)} | {row['int8 chose']} |")
                shares = ", ".join(f"{op} {share:.0f} %" for op, share in row["int8 profile"].items())
                profiles.append(f"* {name}, batch {batch}: {shares}")
    compiled = "" if args.no_compile else "int8 compiled | "
    ours = "int8" if args.no_compile else "int8 (eager / compiled)"
    header = [
        f"CPU {cpu_model()}, kernel variant {requested_variant()}, 1 thread, CPU time (minimum), load average "
        f"{before} before and {load_averages()} after.",
        "",
        "| model | batch | dense fp32 ms (error) | fp32 accelerated | int8 accelerated | "
        f"{compiled}ORT dynamic int8 (dense) | {ours} vs dense fp32 | {ours} vs ORT int8 | int8 acceleration chose |",
        "|---|---|---|---|---|---|---|---|---|" + ("" if args.no_compile else "---|"),
    ]
    footer = ["", "Self CPU time of the int8 accelerated model by operator (torch.profiler, 3 calls):", "", *profiles]
    table = "\n".join(header + lines + footer)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
