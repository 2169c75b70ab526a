"""Test accuracy of int8 condensed layers against fp32 condensed ones on the digits MLP trained with SRigL at 90 %.

For each seed the demo's recipe (``example_projects/digits_mlp``: MLP 64-512-512-10, SRigL 90 %,
``gamma_sal=0.3``) is trained; then on the test split:

* fp32 condensed: every sparse layer as ``CondensedLinear`` (exact: the masked fp32 model's accuracy);
* int8 condensed, dynamic: every sparse layer as ``Int8CondensedLinear`` with activations quantized per row;
* int8 condensed, static: the same with each layer's activation range calibrated on 256 training images;
* ``accelerate(quantize="int8")``: what acceleration chooses at batch 256 within the default error budget;
* ORT dynamic int8 (where ``--ort-python`` names an interpreter with onnxruntime and onnx): the
  dense-masked model exported to ONNX and quantized with ``onnxruntime.quantization.quantize_dynamic``
  (QInt8 weights, every ``Linear``, dense ones included).

Layers without a mask stay fp32 in the condensed models. Writes a markdown table (``--out``)::

    PYTHONPATH=. python scripts/int8_accuracy.py --seeds 3 --ort-python /work/wt/venv-peers/bin/python \\
        --out docs/assets/int8_accuracy.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from example_projects.digits_mlp.datamodule import DigitsDataModule
from example_projects.digits_mlp.demo import train
from lightning_srigl.condensed.acceleration.accelerate import accelerate, capture_layer_inputs
from lightning_srigl.condensed.kinds.candidates import masked_copy
from lightning_srigl.condensed.kinds.registry import build_candidate, sparse_layers
from lightning_srigl.kernels.int8_layout import calibration_range

# ORT's side runs in another interpreter (the peers' environment): export, quantize, evaluate.
ORT_SCRIPT = """
import sys, torch, onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
folder = sys.argv[1]
net, x, y = torch.load(folder + '/dense.pt', weights_only=False)
torch.onnx.export(net, (x[:1],), folder + '/fp32.onnx', input_names=['x'], dynamic_axes={'x': {0: 'b'}}, dynamo=False)
quantize_dynamic(folder + '/fp32.onnx', folder + '/int8.onnx', weight_type=QuantType.QInt8)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(folder + '/int8.onnx', options, providers=['CPUExecutionProvider'])
logits = torch.from_numpy(session.run(None, {'x': x.numpy()})[0])
print((logits.argmax(1) == y).float().mean().item())
"""


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


def swapped(net: nn.Module, candidate: str, calibration: Tensor | None = None) -> nn.Module:
    """A copy of ``net`` with every sparse layer built as ``candidate`` (static ones calibrated on the
    layer's own input from ``calibration``)."""
    net = copy.deepcopy(net).eval()
    sparse = sparse_layers(net)
    inputs = capture_layer_inputs(net, calibration, list(sparse)) if calibration is not None else {}
    for name, masked in sparse.items():
        input_range = calibration_range(inputs[name].x) if name in inputs else None
        net.set_submodule(name, build_candidate(candidate, masked.module, masked.mask, input_range))
    return net


def ort_accuracy(python: str, net: nn.Module, x: Tensor, y: Tensor) -> float:
    """ONNX Runtime dynamic int8 accuracy of the dense-masked ``net``, in interpreter ``python``."""
    dense = copy.deepcopy(net).eval()
    for name, masked in sparse_layers(dense).items():
        dense.set_submodule(name, masked_copy(masked.module, masked.mask))
    with tempfile.TemporaryDirectory() as folder:
        torch.save((dense, x, y), Path(folder) / "dense.pt")
        done = subprocess.run([python, "-c", ORT_SCRIPT, folder], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--ort-python", default=None, help="an interpreter with onnxruntime and onnx")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = DigitsDataModule()
    data.setup()
    test_x, test_y = data.splits["test"].tensors
    train_x = data.splits["train"].tensors[0][:256]
    columns: dict[str, Callable[[nn.Module], float]] = {
        "fp32 condensed": lambda net: accuracy(swapped(net, "condensed"), test_x, test_y),
        "int8 condensed (dynamic)": lambda net: accuracy(swapped(net, "int8_condensed"), test_x, test_y),
        "int8 condensed (static)": lambda net: accuracy(swapped(net, "int8_condensed_static", train_x), test_x, test_y),
        'accelerate(quantize="int8")': lambda net: _accelerated_accuracy(net, train_x, test_x, test_y),
    }
    if args.ort_python:
        columns["ORT dynamic int8 (dense)"] = lambda net: ort_accuracy(args.ort_python, net, test_x, test_y)
    results: dict[str, list[float]] = {name: [] for name in columns}
    sparse_names: list[str] = []
    for seed in range(args.seeds):
        net, _ = train("SRigL 90%", seed, (512, 512), args.epochs)
        net = net.eval()
        sparse_names = list(sparse_layers(net))
        for name, measure in columns.items():
            results[name].append(100 * measure(net))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]:.2f}" for name, values in results.items()), flush=True)
    lines = [
        f"Digits MLP 64-512-512-10, SRigL 90 % (gamma_sal=0.3), {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
        f"test accuracy in % ({len(test_y)} test images); drop = fp32 condensed minus the column. Sparse (quantized) "
        f"layers: {', '.join(sparse_names)}; the others stay fp32 in the condensed models.",
        "",
        "| | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for seed in range(args.seeds):
        lines.append(f"| seed {seed} | " + " | ".join(f"{values[seed]:.2f}" for values in results.values()) + " |")
    means = {name: statistics.mean(values) for name, values in results.items()}
    lines.append("| mean | " + " | ".join(f"{mean:.2f}" for mean in means.values()) + " |")
    reference = means["fp32 condensed"]
    lines.append("| drop | " + " | ".join(f"{reference - mean:+.2f}" for mean in means.values()) + " |")
    lines += ["", 'accelerate(quantize="int8") chose (batch 256, default budget):']
    lines += [f"- seed {seed}: {choice}" for seed, choice in enumerate(CHOICES)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


CHOICES: list[str] = []  # what accelerate(quantize="int8") installed, per seed


def _accelerated_accuracy(net: nn.Module, train_x: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    accelerated = copy.deepcopy(net).eval()
    report = accelerate(accelerated, train_x, quantize="int8", verbose=False, warmup=1, repeats=3)
    CHOICES.append(
        ", ".join(f"{row.name}: {row.chosen} (error {row.errors.get(row.chosen, 0.0):.4f})" for row in report.rows)
    )
    return accuracy(accelerated, test_x, test_y)


if __name__ == "__main__":
    main()
