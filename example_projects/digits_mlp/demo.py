"""``make demo``: dense vs SRigL vs RigL vs 2:4 SR-STE on scikit-learn's digits, then accelerated.

Every method trains the same MLP with the same recipe (``DigitsMLP`` defaults: SGD Nesterov 0.05,
cosine, weight decay 5e-4, batch 64) for the same number of epochs, over a few seeds; the test
accuracy is the mean over seeds. Both of SRigL's ideas show: constant fan-in at 90 % (every method
keeps all its neurons there) and neuron ablation at 99 %, where SRigL (``gamma_sal=0.3``) removes
neurons that RigL and SRigL without ablation keep. The seed-0 model of every method is then made
fast for inference with ``lightning_srigl.acceleration.accelerate.accelerate`` (once tuned
at batch 1, once at batch 256), checked to give the same test predictions, and timed with every
method interleaved. Two tables are printed and written to ``--out`` (markdown and CSV)::

    python -m example_projects.digits_mlp.demo [--seeds 3] [--epochs 30] [--hidden 512 512] [--out runs/digits_demo]
"""

from __future__ import annotations

import argparse
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from rich.progress import Progress
from torch import Tensor, nn

from example_projects.digits_mlp.datamodule import DigitsDataModule
from example_projects.digits_mlp.demo_report import Row, print_and_write
from example_projects.digits_mlp.model import DigitsMLP
from lightning_srigl.acceleration.accelerate import AccelerationReport, accelerate
from lightning_srigl.benchmark.timing import hot_times
from lightning_srigl.callbacks import NMSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.logs import quiet
from lightning_srigl.masking import mask_of, masked_weights
from lightning_srigl.sparsity.nm import is_nm
from lightning_srigl.tables import terminal_console

RESULTS = Path("runs") / "digits_demo"  # git-ignored; `make demo RESULTS=...` writes elsewhere
DELTA_T = 25  # ~20 optimizer steps per epoch: updates every ~1.25 epochs until 75% of training


def _srigl(sparsity: float, gamma_sal: float) -> Callable[[int], list[Callback]]:
    return lambda seed: [
        SRigLCallback(
            sparsity=sparsity, delta_t=DELTA_T, gamma_sal=gamma_sal, sparse_init=True, seed=seed, report=False
        )
    ]


def _rigl(sparsity: float) -> Callable[[int], list[Callback]]:
    return lambda seed: [RigLCallback(sparsity=sparsity, delta_t=DELTA_T, sparse_init=True, seed=seed, report=False)]


METHODS: dict[str, Callable[[int], list[Callback]]] = {
    "dense": lambda seed: [],
    "SRigL 90%": _srigl(0.9, gamma_sal=0.3),
    "RigL 90%": _rigl(0.9),
    "2:4 SR-STE": lambda seed: [NMSparsityCallback(n=2, m=4, keep_first_dense=False, keep_last_dense=False)],
    "SRigL 99%": _srigl(0.99, gamma_sal=0.3),
    "SRigL 99%, no ablation": _srigl(0.99, gamma_sal=0.0),
    "RigL 99%": _rigl(0.99),
}


def train(method: str, seed: int, hidden: tuple[int, ...], epochs: int) -> tuple[nn.Module, float]:
    """Fit ``DigitsMLP`` with ``method``'s callbacks; return its network and its test accuracy."""
    seed_everything(seed, verbose=False)
    model = DigitsMLP(hidden=hidden)
    data = DigitsDataModule()
    with quiet():  # Lightning's per-fit banners and tips, and the callbacks' info lines
        trainer = Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            callbacks=METHODS[method](seed),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, data)
        accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    return model.net, accuracy


def linear_stats(net: nn.Module) -> tuple[float, str]:
    """Overall weight density of the ``Linear`` layers and their active output neurons.

    A sparse layer's mask says which weights are active (a regrown weight may still be exactly zero);
    a layer without a mask counts its non-zero weights. A neuron is active when it has an active weight.
    """
    actives = [
        m.weight != 0 if (mask := mask_of(m)) is None else mask for m in net.modules() if isinstance(m, nn.Linear)
    ]
    nonzero = sum(int(a.sum()) for a in actives)
    total = sum(a.numel() for a in actives)
    neurons = sum(int(a.any(dim=1).sum()) for a in actives)
    return nonzero / total, f"{neurons}/{sum(a.shape[0] for a in actives)}"


def inference_bytes(net: nn.Module) -> int:
    """Bytes of every parameter and buffer needed at inference (training masks excluded)."""
    tensors = [t for name, t in [*net.named_parameters(), *net.named_buffers()] if not name.endswith("_mask")]
    return sum(t.numel() * t.element_size() for t in tensors)


def accelerated(net: nn.Module, x: Tensor) -> tuple[nn.Module, AccelerationReport | None]:
    """A copy of ``net`` with its sparse layers swapped for the fastest exact kernel at ``x``'s batch,
    and what ``accelerate`` measured (``None``: the network has no sparse layer)."""
    fast = copy.deepcopy(net).eval()
    if not masked_weights(fast):
        return fast, None
    with torch.no_grad():
        return fast, accelerate(fast, x, verbose=False)


@dataclass
class Candidate:
    """One method's seed-0 network, accelerated for batch 1 and for batch 256."""

    net: nn.Module
    fast1: nn.Module
    fast256: nn.Module
    report1: AccelerationReport | None


def prepare(net: nn.Module, test_x: Tensor) -> Candidate:
    """Accelerate ``net`` for batch 1 and 256 (its ``test_x`` rows as the example batches)."""
    net = net.eval()
    fast1, report1 = accelerated(net, test_x[:1])
    fast256, _ = accelerated(net, test_x[:256])
    return Candidate(net, fast1, fast256, report1)


def latencies_us(nets: dict[str, nn.Module], x: Tensor, min_run_time: float) -> dict[str, float]:
    """Median µs per ``net(x)`` of every net, timed in interleaved rounds so they share the machine's drifts."""
    calls = {name: functools.partial(net, x) for name, net in nets.items()}
    with torch.inference_mode():
        timings = hot_times(calls, threads=torch.get_num_threads(), min_run_time=min_run_time, device=x.device)
    return {name: timing.median * 1e6 for name, timing in timings.items()}


def measure(
    accuracies: dict[str, list[float]], candidates: dict[str, Candidate], test_x: Tensor, min_run_time: float
) -> list[Row]:
    """One table row per method: topology of the trained net, bytes, kernels and latencies of the fast ones."""
    b1 = latencies_us({m: c.fast1 for m, c in candidates.items()}, test_x[:1], min_run_time)
    b256 = latencies_us({m: c.fast256 for m, c in candidates.items()}, test_x[:256], min_run_time)
    rows = []
    for method, c in candidates.items():
        with torch.inference_mode():
            exact = bool((c.fast256(test_x).argmax(-1) == c.net(test_x).argmax(-1)).all())
        density, neurons = linear_stats(c.net)
        masks = [entry.mask for entry in masked_weights(c.net)]
        two_four = bool(masks) and all(is_nm(mask, 2, 4) for mask in masks)
        rows.append(
            Row(
                method,
                accuracies[method],
                density,
                neurons,
                inference_bytes(c.fast1),
                c.report1,
                b1[method],
                b256[method],
                exact,
                two_four,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    """Train every method over ``--seeds`` seeds, accelerate, time, print and save the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per model and batch size")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for digits_demo.md / .csv (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    console = terminal_console()
    hidden = tuple(args.hidden)
    data = DigitsDataModule()
    data.setup()
    test_x = data.splits["test"].tensors[0]
    accuracies: dict[str, list[float]] = {}
    candidates: dict[str, Candidate] = {}
    with Progress(console=console) as progress:
        training = progress.add_task("training", total=len(METHODS) * args.seeds)
        for method in METHODS:
            nets = []
            for seed in range(args.seeds):
                progress.update(training, description=f"training {method}, seed {seed}")
                nets.append(train(method, seed, hidden, args.epochs))
                progress.advance(training)
            accuracies[method] = [accuracy for _, accuracy in nets]
            candidates[method] = prepare(nets[0][0], test_x)
        progress.update(training, description=f"trained {len(METHODS)} methods × {args.seeds} seeds")
        timing = progress.add_task("timing the accelerated models (interleaved)", total=None)
        rows = measure(accuracies, candidates, test_x, args.min_run_time)
        progress.update(timing, total=1, completed=1)
    command = (
        f"python -m example_projects.digits_mlp.demo --seeds {args.seeds} --epochs {args.epochs} "
        f"--hidden {' '.join(map(str, hidden))}"
    )
    header = (
        f"Digits MLP 64-{'-'.join(map(str, hidden))}-10, {args.epochs} epochs, seeds 0..{args.seeds - 1}, "
        f"{torch.get_num_threads()} CPU threads; command: {command}"
    )
    return print_and_write(rows, header, args.out, console)


if __name__ == "__main__":
    main()
