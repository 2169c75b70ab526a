"""Test accuracy of int8 condensed layers against fp32 condensed ones on small models trained with SRigL at 90 %.

Models (``--models``, each trained for ``--seeds`` seeds with SRigL at 90 %, ERK, ``gamma_sal=0.3``,
``delta_t=25``, the project's recipe):

* ``digits_mlp``: the digits MLP of ``example_projects/digits_mlp`` (64-512-512-10, 30 epochs);
* ``mnist1d_mlp``: the MNIST-1D MLP of ``example_projects/mnist1d_mlp`` (40-1024-1024-10, 30 epochs);
* ``mnist1d_cnn``: the MNIST-1D 1-D CNN of ``example_projects/mnist1d_cnn`` (4 convolutions, 30 epochs);
* ``digits_vit``: a small Hugging Face ViT on the 8x8 digits (``example_projects/digits_mlp/vit.py``: 2x2
  patches, width 128, 4 blocks, 60 epochs), whose attention projections are ``nn.Linear``.

Then on the test split:

* fp32 condensed: every sparse layer as its ``condensed`` layer (exact: the masked fp32 model's accuracy);
* int8 condensed, dynamic: every sparse ``nn.Linear`` as ``Int8CondensedLinear`` with activations quantized
  per row (token); sparse layers of other kinds (convolutions) stay fp32 condensed;
* int8 condensed, static: the same with each layer's activation range calibrated on 256 training samples;
* ``accelerate(quantize="int8")``: what acceleration chooses at batch 256 within the default error budget;
* ORT dynamic int8 (where ``--ort-python`` names an interpreter with onnxruntime and onnx): the
  dense-masked model exported to ONNX and quantized with ``onnxruntime.quantization.quantize_dynamic``
  (QInt8 weights, every layer ORT quantizes, dense ones included).

Layers without a mask stay fp32 in the condensed models. Writes a markdown table per model (``--out``)::

    PYTHONPATH=. python scripts/int8_accuracy.py --seeds 3 --ort-python /work/wt/venv-peers/bin/python \\
        --out docs/assets/int8_accuracy.md
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch import Tensor, nn

from lightning_srigl.acceleration.accelerate import accelerate, capture_layer_inputs
from lightning_srigl.callbacks import SRigLCallback
from lightning_srigl.condensed.kinds.candidates import masked_copy
from lightning_srigl.condensed.kinds.registry import build_candidate, sparse_kind, sparse_layers
from lightning_srigl.kernels.int8_layout import calibration_range
from lightning_srigl.logs import quiet

REPO = Path(__file__).resolve().parents[1]

# ORT's side runs in another interpreter (the peers' environment): export, quantize, evaluate.
ORT_SCRIPT = """
import sys, torch, onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
folder = sys.argv[1]
net, x, y = torch.load(folder + '/dense.pt', weights_only=False)
torch.onnx.export(net, (x[:2],), folder + '/fp32.onnx', input_names=['x'], dynamic_axes={'x': {0: 'b'}}, dynamo=False)
quantize_dynamic(folder + '/fp32.onnx', folder + '/int8.onnx', weight_type=QuantType.QInt8)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(folder + '/int8.onnx', options, providers=['CPUExecutionProvider'])
logits = torch.from_numpy(session.run(None, {'x': x.numpy()})[0])
print((logits.argmax(1) == y).float().mean().item())
"""


@dataclass(frozen=True)
class Setup:
    """How one model is trained: its LightningModule, its data and its epochs."""

    description: str
    module: Callable[[], LightningModule]
    data: Callable[[], LightningDataModule]
    epochs: int


def _setups() -> dict[str, Setup]:
    # Imported here so that a model's optional dependency (mnist1d, transformers) is needed only when it runs.
    def digits_mlp() -> LightningModule:
        from example_projects.digits_mlp.model import DigitsMLP

        return DigitsMLP(hidden=(512, 512))

    def digits_vit() -> LightningModule:
        from example_projects.digits_mlp.vit import DigitsViT

        return DigitsViT()

    def mnist1d_mlp() -> LightningModule:
        from example_projects.mnist1d_mlp.model import MNIST1DMLP

        return MNIST1DMLP(hidden=(1024, 1024))

    def mnist1d_cnn() -> LightningModule:
        from example_projects.mnist1d_cnn.model import MNIST1DCNN

        return MNIST1DCNN()

    def digits_data() -> LightningDataModule:
        from example_projects.digits_mlp.datamodule import DigitsDataModule

        return DigitsDataModule()

    def mnist1d_data() -> LightningDataModule:
        from example_projects.mnist1d_mlp.datamodule import MNIST1DDataModule

        return MNIST1DDataModule()

    return {
        "digits_mlp": Setup("digits MLP 64-512-512-10", digits_mlp, digits_data, 30),
        "mnist1d_mlp": Setup("MNIST-1D MLP 40-1024-1024-10", mnist1d_mlp, mnist1d_data, 30),
        "mnist1d_cnn": Setup("MNIST-1D 1-D CNN (4 x Conv1d 64 ch, kernel 11)", mnist1d_cnn, mnist1d_data, 30),
        "digits_vit": Setup(
            "digits ViT (HF ViTConfig: 2x2 patches, width 128, 4 blocks, MLP 256)", digits_vit, digits_data, 60
        ),  # fmt: skip
    }


def train(setup: Setup, seed: int, epochs: int) -> nn.Module:
    """Fit ``setup``'s model with SRigL at 90 % (ERK, ``gamma_sal=0.3``, ``delta_t=25``); return its network."""
    seed_everything(seed, verbose=False)
    model = setup.module()
    callback = SRigLCallback(sparsity=0.9, delta_t=25, gamma_sal=0.3, sparse_init=True, seed=seed, report=False)
    with quiet():
        trainer = Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, setup.data())
    return model.net.eval()


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


def quantizable(module: nn.Module, candidate: str) -> bool:
    kind = sparse_kind(module)
    return kind is not None and candidate in kind.quantized


def swapped(net: nn.Module, candidate: str, calibration: Tensor | None = None) -> nn.Module:
    """A copy of ``net`` with every sparse layer built as ``candidate`` where its kind has it, else as
    ``condensed`` (static candidates calibrated on the layer's own input from ``calibration``)."""
    net = copy.deepcopy(net).eval()
    sparse = sparse_layers(net)
    inputs = capture_layer_inputs(net, calibration, list(sparse)) if calibration is not None else {}
    for name, masked in sparse.items():
        if candidate != "condensed" and not quantizable(masked.module, candidate):
            net.set_submodule(name, build_candidate("condensed", masked.module, masked.mask))
            continue
        input_range = calibration_range(inputs[name].x) if name in inputs else None
        net.set_submodule(name, build_candidate(candidate, masked.module, masked.mask, input_range))
    return net


def ort_accuracy(python: str, net: nn.Module, x: Tensor, y: Tensor) -> float:
    """ONNX Runtime dynamic int8 accuracy of the dense-masked ``net``, in interpreter ``python``."""
    dense = copy.deepcopy(net).eval()
    for name, masked in sparse_layers(dense).items():
        dense.set_submodule(name, masked_copy(masked.module, masked.mask))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the model's classes unpickle from this checkout
    with tempfile.TemporaryDirectory() as folder:
        torch.save((dense, x, y), Path(folder) / "dense.pt")
        done = subprocess.run(
            [python, "-c", ORT_SCRIPT, folder], capture_output=True, text=True, check=True, env=env, cwd=REPO
        )
    return float(done.stdout.strip().splitlines()[-1])


def accelerated_accuracy(net: nn.Module, train_x: Tensor, test_x: Tensor, test_y: Tensor, choices: list[str]) -> float:
    """Accuracy after ``accelerate(quantize="int8")`` at ``train_x``'s batch; appends what it chose to ``choices``."""
    accelerated = copy.deepcopy(net).eval()
    report = accelerate(accelerated, train_x, quantize="int8", verbose=False, warmup=1, repeats=3)
    chosen = Counter(row.chosen for row in report.rows)
    worst = max((row.errors.get(row.chosen, 0.0) for row in report.rows), default=0.0)
    choices.append(", ".join(f"{name} x{count}" for name, count in chosen.items()) + f" (largest error {worst:.4f})")
    return accuracy(accelerated, test_x, test_y)


def measure_model(name: str, setup: Setup, seeds: int, epochs: int, ort_python: str | None) -> str:
    """Train ``seeds`` networks of ``setup``, measure every column, return the markdown section."""
    data = setup.data()
    data.setup()
    test_x, test_y = data.splits["test"].tensors
    train_x = data.splits["train"].tensors[0][:256]
    choices: list[str] = []
    columns: dict[str, Callable[[nn.Module], float]] = {
        "fp32 condensed": lambda net: accuracy(swapped(net, "condensed"), test_x, test_y),
        "int8 condensed (dynamic)": lambda net: accuracy(swapped(net, "int8_condensed"), test_x, test_y),
        "int8 condensed (static)": lambda net: accuracy(swapped(net, "int8_condensed_static", train_x), test_x, test_y),
        'accelerate(quantize="int8")': lambda net: accelerated_accuracy(net, train_x, test_x, test_y, choices),
    }
    if ort_python:
        columns["ORT dynamic int8 (dense)"] = lambda net: ort_accuracy(ort_python, net, test_x, test_y)
    results: dict[str, list[float]] = {column: [] for column in columns}
    int8_layers: list[str] = []
    fp32_layers: list[str] = []
    for seed in range(seeds):
        net = train(setup, seed, epochs)
        sparse = sparse_layers(net)
        int8_layers = [layer for layer, m in sparse.items() if quantizable(m.module, "int8_condensed")]
        fp32_layers = [layer for layer in sparse if layer not in int8_layers]
        for column, measure in columns.items():
            results[column].append(100 * measure(net))
        print(f"{name} seed {seed}: " + ", ".join(f"{c} {v[-1]:.2f}" for c, v in results.items()), flush=True)
    lines = [
        f"### {name}: {setup.description}",
        "",
        f"SRigL 90 % (ERK, gamma_sal=0.3), {epochs} epochs, seeds 0..{seeds - 1}; test accuracy in % "
        f"({len(test_y)} test samples, one is {100 / len(test_y):.2f} points); drop = fp32 condensed minus the "
        f"column. int8 layers ({len(int8_layers)}): {', '.join(int8_layers) or 'none'}. Sparse layers that stay "
        f"fp32 condensed: {', '.join(fp32_layers) or 'none'}. Layers without a mask stay fp32.",
        "",
        "| | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for seed in range(seeds):
        lines.append(f"| seed {seed} | " + " | ".join(f"{values[seed]:.2f}" for values in results.values()) + " |")
    means = {column: statistics.mean(values) for column, values in results.items()}
    lines.append("| mean | " + " | ".join(f"{mean:.2f}" for mean in means.values()) + " |")
    reference = means["fp32 condensed"]
    lines.append("| drop | " + " | ".join(f"{reference - mean:+.2f}" for mean in means.values()) + " |")
    lines += ["", 'accelerate(quantize="int8") chose (batch 256, default budget):']
    lines += [f"- seed {seed}: {choice}" for seed, choice in enumerate(choices)]
    return "\n".join(lines)


def main() -> None:
    setups = _setups()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(setups), default=list(setups))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--ort-python", default=None, help="an interpreter with onnxruntime and onnx")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = []
    for name in args.models:
        setup = setups[name]
        sections.append(measure_model(name, setup, args.seeds, args.epochs or setup.epochs, args.ort_python))
        print(sections[-1], flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
