"""``make demo``: dense vs SRigL 90% vs RigL 90% vs 2:4 SR-STE on scikit-learn's digits, accelerated.

Every method trains the same MLP with the same recipe (``DigitsMLP`` defaults: SGD Nesterov 0.05,
cosine, weight decay 5e-4, batch 64) for the same number of epochs, over a few seeds; the test
accuracy is the mean over seeds. The seed-0 model of every method is then made fast for inference
with :func:`lightning_srigl.condensed.accelerate.accelerate` (once tuned at batch 1, once at batch 256), its
accelerated copy is checked to give the same test predictions, and one table is printed and written
to ``results/`` (markdown and CSV)::

    python -m example_projects.digits_mlp.demo [--seeds 3] [--epochs 30] [--hidden 512 512]
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from example_projects.digits_mlp.datamodule import DigitsDataModule
from example_projects.digits_mlp.model import DigitsMLP
from lightning_srigl.callbacks.nm import NMSparsityCallback
from lightning_srigl.callbacks.rigl import RigLCallback
from lightning_srigl.callbacks.srigl import SRigLCallback
from lightning_srigl.condensed.accelerate import accelerate

RESULTS = Path(__file__).resolve().parent / "results"
DELTA_T = 25  # ~20 optimizer steps per epoch: updates every ~1.25 epochs until 75% of training

METHODS: dict[str, Callable[[int], list[Callback]]] = {
    "dense": lambda seed: [],
    "SRigL 90%": lambda seed: [SRigLCallback(sparsity=0.9, delta_t=DELTA_T, gamma_sal=0.3, sparse_init=True, seed=seed, report=False)],
    "RigL 90%": lambda seed: [RigLCallback(sparsity=0.9, delta_t=DELTA_T, seed=seed, report=False)],
    "2:4 SR-STE": lambda seed: [NMSparsityCallback(n=2, m=4, keep_first_dense=False, keep_last_dense=False)],
}


@dataclass
class Row:
    """One line of the demo table (latencies in microseconds)."""

    method: str
    accuracies: list[float]
    density: float
    active_neurons: str
    param_bytes: int
    latency_b1: float
    latency_b256: float
    exact: bool


def train(method: str, seed: int, hidden: tuple[int, ...], epochs: int) -> tuple[nn.Module, float]:
    """Fit ``DigitsMLP`` with ``method``'s callbacks; return its network and its test accuracy."""
    seed_everything(seed, verbose=False)
    model = DigitsMLP(hidden=hidden)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=METHODS[method](seed), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    data = DigitsDataModule()
    trainer.fit(model, data)
    accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    return model.net, accuracy


def linear_stats(net: nn.Module) -> tuple[float, str]:
    """Overall weight density of the ``Linear`` layers and their active (non-empty) output neurons."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    nonzero = sum(int(m.weight.count_nonzero()) for m in linears)
    total = sum(m.weight.numel() for m in linears)
    active = sum(int((m.weight != 0).any(dim=1).sum()) for m in linears)
    neurons = sum(m.out_features for m in linears)
    return nonzero / total, f"{active}/{neurons}"


def inference_bytes(net: nn.Module) -> int:
    """Bytes of every parameter and buffer needed at inference (training masks excluded)."""
    tensors = [t for name, t in [*net.named_parameters(), *net.named_buffers()] if not name.endswith("_mask")]
    return sum(t.numel() * t.element_size() for t in tensors)


def latency_us(net: nn.Module, x: Tensor, min_run_time: float) -> float:
    """Median wall time of ``net(x)`` in microseconds (torch.utils.benchmark, inference mode)."""
    with torch.inference_mode():
        timer = Timer(stmt="net(x)", globals={"net": net, "x": x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def accelerated(net: nn.Module, x: Tensor) -> nn.Module:
    """A copy of ``net`` with its sparse layers swapped for the fastest exact kernel at ``x``'s batch."""
    fast = copy.deepcopy(net).eval()
    if any(name.endswith("_mask") for name, _ in fast.named_buffers()):
        with torch.no_grad():
            accelerate(fast, x, verbose=False)
    return fast


def evaluate(method: str, accuracies: list[float], net: nn.Module, test_x: Tensor, min_run_time: float) -> Row:
    """Density, neurons, bytes and latencies of the seed-0 network, accelerated for batch 1 and 256.

    The bytes are those of the batch-1 (online inference) model.
    """
    net = net.eval()
    density, neurons = linear_stats(net)
    batch1, batch256 = test_x[:1], test_x[:256]
    fast1, fast256 = accelerated(net, batch1), accelerated(net, batch256)
    with torch.inference_mode():
        exact = bool((fast256(test_x).argmax(-1) == net(test_x).argmax(-1)).all())
    return Row(
        method, accuracies, density, neurons, inference_bytes(fast1),
        latency_us(fast1, batch1, min_run_time), latency_us(fast256, batch256, min_run_time), exact,
    )


def table_records(rows: list[Row]) -> list[dict[str, str]]:
    """Printable cells, with latencies as ratios against the dense row."""
    dense = rows[0]
    records = []
    for r in rows:
        mean = 100 * statistics.mean(r.accuracies)
        spread = 100 * statistics.stdev(r.accuracies) if len(r.accuracies) > 1 else 0.0
        records.append({
            "method": r.method,
            f"test acc % (mean ± sd, {len(r.accuracies)} seeds)": f"{mean:.2f} ± {spread:.2f}",
            "Δ vs dense (pts)": f"{mean - 100 * statistics.mean(dense.accuracies):+.2f}",
            "density": f"{r.density:.3f}",
            "active neurons": r.active_neurons,
            "param bytes (batch-1 model)": f"{r.param_bytes:,}",
            "batch-1 latency µs (× dense)": f"{r.latency_b1:.0f} ({dense.latency_b1 / r.latency_b1:.2f}×)",
            "batch-256 latency µs (× dense)": f"{r.latency_b256:.0f} ({dense.latency_b256 / r.latency_b256:.2f}×)",
            "same predictions": "yes" if r.exact else "NO",
        })
    return records


def write_results(records: list[dict[str, str]], header: str, out: Path) -> None:
    """``<out>/digits_demo.md`` and ``<out>/digits_demo.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(records[0])
    lines = [header, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in records]
    (out / "digits_demo.md").write_text("\n".join(lines) + "\n")
    with (out / "digits_demo.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    """Train every method over ``--seeds`` seeds, accelerate, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per latency measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for digits_demo.md / .csv")
    args = parser.parse_args(argv)
    console = Console(width=200)
    hidden = tuple(args.hidden)
    data = DigitsDataModule()
    data.setup()
    test_x = data.splits["test"].tensors[0]
    rows = []
    for method in METHODS:
        results = [train(method, seed, hidden, args.epochs) for seed in range(args.seeds)]
        accuracies = [acc for _, acc in results]
        console.print(f"{method}: test accuracy per seed {[round(100 * a, 2) for a in accuracies]}")
        rows.append(evaluate(method, accuracies, results[0][0], test_x, args.min_run_time))
    header = (
        f"Digits MLP 64-{'-'.join(map(str, hidden))}-10, {args.epochs} epochs, seeds 0..{args.seeds - 1}, "
        f"{torch.get_num_threads()} CPU threads; command: python -m example_projects.digits_mlp.demo "
        f"--seeds {args.seeds} --epochs {args.epochs} --hidden {' '.join(map(str, hidden))}; "
        "latency: median of torch.utils.benchmark, each model accelerated for its batch size"
    )
    records = table_records(rows)
    table = Table(title=header)
    for key in records[0]:
        table.add_column(key, justify="left" if key == "method" else "right")
    for record in records:
        table.add_row(*record.values())
    console.print(table)
    write_results(records, header, args.out)
    console.print(f"Written to {args.out / 'digits_demo.md'} and {args.out / 'digits_demo.csv'}")
    return records


if __name__ == "__main__":
    main()
