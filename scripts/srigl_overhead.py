"""Wall-clock overhead of ``SRigLCallback`` against the same training without it.

Two models, both at batch 128 on the CPU with SGD (Nesterov, momentum 0.9), synthetic data:

* ``resnet18``: the CIFAR-style ResNet-18 of ``example_projects/cifar10_resnet18`` (11.2M parameters,
  32x32 inputs, 3x3 stem);
* ``vit-mlp``: the MLP of a ViT-B/16 encoder block (LayerNorm, 768 -> 3072 -> GELU -> 768, residual)
  on ``--tokens`` tokens per sample, mean-pooled into a linear head (4.7M sparse weights).

Each *run* is a fresh ``Trainer.fit`` of ``--steps`` optimizer steps; SRigL and dense runs alternate
B A A B B A ... so that drift in machine load cancels. SRigL runs use ``delta_t=100`` and
``t_end_fraction=1`` so that a run of 101 steps contains one topology update: the update rate of the
paper's exploration phase (the frozen last 25% of a real run costs less). Only the training loop is
timed (``on_train_start`` -> ``on_train_end``); the one-off mask set-up is reported separately.

Two estimates are printed:

* ``ratio (alternating runs)`` = total SRigL loop time / total dense loop time;
* ``ratio (in-run hook time)`` = loop / (loop - time inside SRigLCallback's per-step hooks), from the
  SRigL runs alone: the same steps measured with and without the callback's work, so machine noise
  between runs does not enter.

Usage (from the repository root)::

    PYTHONPATH=. python scripts/srigl_overhead.py --model vit-mlp --steps 101 --rounds 2

Target: both ratios <= 1.03.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from example_projects.cifar10_resnet18.model import ResNet18
from lightning_srigl.callbacks import SRigLCallback


class ViTBlockMLP(nn.Module):
    """ViT-B/16 encoder-block MLP ``x + fc2(gelu(fc1(ln(x))))`` on ``(B, T, 768)``, pooled into a head."""

    def __init__(self, width: int = 768, hidden: int = 3072, num_classes: int = 10) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(dim=1))


class Classifier(pl.LightningModule):
    """``model`` on a fixed synthetic dataset of ``n_batches`` batches of 128 samples."""

    def __init__(self, model: str, tokens: int, batch_size: int = 128, n_batches: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = ResNet18() if model == "resnet18" else ViTBlockMLP()
        sample = (3, 32, 32) if model == "resnet18" else (tokens, 768)
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(
            torch.randn(batch_size * n_batches, *sample, generator=g),
            torch.randint(0, 10, (batch_size * n_batches,), generator=g),
        )
        self.batch_size = batch_size

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)


class LoopTimer(Callback):
    """Wall-clock time of the training loop and of the fit set-up before it."""

    def __init__(self) -> None:
        self.fit_start = self.train_start = self.elapsed = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.fit_start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.elapsed = time.perf_counter() - self.train_start


class HookClock(Callback):
    """Placed just before (``opens=True``) and just after the SRigL callback: times its per-step hooks."""

    def __init__(self, opens: bool, shared: dict[str, float]) -> None:
        self.opens, self.shared = opens, shared

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.opens:
            self.shared["start"] = now
        else:
            self.shared["total"] = self.shared.get("total", 0.0) + now - self.shared["start"]

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._tick()

    def on_train_batch_end(self, *args: Any) -> None:
        self._tick()


def timed_run(model: str, tokens: int, sparse: bool, steps: int, delta_t: int) -> dict[str, Any]:
    """One fresh fit; returns loop, hook and set-up seconds and the number of topology updates."""
    timer, hooks = LoopTimer(), {}
    callbacks: list[Callback] = [timer]
    srigl = None
    if sparse:
        srigl = SRigLCallback(sparsity=0.9, delta_t=delta_t, t_end_fraction=1.0, report=False)
        callbacks += [HookClock(True, hooks), srigl, HookClock(False, hooks)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(model, tokens))
    return {
        "loop_s": timer.elapsed,
        "hook_s": hooks.get("total", 0.0),
        "setup_s": timer.train_start - timer.fit_start,
        "updates": len(srigl.history) if srigl else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("vit-mlp", "resnet18"), default="vit-mlp")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sample for vit-mlp")
    parser.add_argument("--steps", type=int, default=101, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of (dense, SRigL) runs, ABBA-ordered")
    parser.add_argument("--delta-t", type=int, default=100)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, batch 128, {args.steps} steps/run")
    loop = {False: 0.0, True: 0.0}
    hook = 0.0
    for round_index in range(args.rounds):
        for sparse in (True, False) if round_index % 2 == 0 else (False, True):
            result = timed_run(args.model, args.tokens, sparse, args.steps, args.delta_t)
            loop[sparse] += result["loop_s"]
            hook += result["hook_s"]
            print(
                f"round {round_index} {'srigl' if sparse else 'dense'}: loop {result['loop_s']:.2f} s "
                f"({1000 * result['loop_s'] / args.steps:.1f} ms/step), in SRigL hooks {result['hook_s']:.2f} s, "
                f"set-up {result['setup_s']:.2f} s, updates {result['updates']}",
                flush=True,
            )
    print(f"dense {loop[False]:.2f} s, srigl {loop[True]:.2f} s")
    print(f"ratio (alternating runs): {loop[True] / loop[False]:.4f}")
    print(f"ratio (in-run hook time): {loop[True] / (loop[True] - hook):.4f}")


if __name__ == "__main__":
    main()
