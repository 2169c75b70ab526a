"""Tiny CPU models, data and a probe callback shared by the SRigL/RigL callback tests."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_srigl.callbacks import DynamicSparsityCallback


class TinyNet(pl.LightningModule):
    """16 -> 32 -> 32 -> 4 MLP classifier on fixed random data (64 samples, batch 8 -> 8 steps/epoch)."""

    def __init__(self, optimizer: str = "sgd", n_samples: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.optimizer_name = optimizer
        self.n_samples, self.batch_size = n_samples, batch_size
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(self.n_samples, 16, generator=g)
        y = torch.randint(0, 4, (self.n_samples,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=False)


class TinyConvNet(TinyNet):
    """Conv1d/Conv2d/Linear network on 1x8x8 images; exercises conv weights viewed as ``(out, in*k*k)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(2),
            nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4),
        )  # fmt: skip


class TinyAttention(TinyNet):
    """Tokens of width 8 through ``nn.MultiheadAttention`` (in_proj and out_proj sparse) and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(16, 4)
        del self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.view(-1, 2, 8)
        out, _ = self.attn(tokens, tokens, tokens)
        return self.head(out.flatten(1))


class TinyClassifier(pl.LightningModule):
    """32 -> 64 -> 64 -> 4 MLP with validation, test and predict steps (use with :func:`loader`)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader(seed: int, batch_size: int = 16) -> DataLoader:
    """96 samples of 32 features with a learnable 4-class label."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 32, generator=generator)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer; ``kwargs`` override the defaults."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


class UpdateProbe(Callback):
    """Listed after the sparsity callback: snapshots masks, weights and optimizer state after each step.

    ``records`` holds, for every optimizer step at which the sparsity callback made an update, the
    masks before and after it, the weights after it and the optimizer state after it.
    """

    def __init__(self, sparsity: DynamicSparsityCallback) -> None:
        self.sparsity = sparsity
        self.records: list[dict[str, Any]] = []
        self.batch_of_update: list[int] = []
        self._previous: dict[str, torch.Tensor] = {}
        self._n_history = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = self._masks()
        self._n_history = len(self.sparsity.history)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch_idx = args[-1]
        if len(self.sparsity.history) > self._n_history:
            self._n_history = len(self.sparsity.history)
            masks = self._masks()
            optimizer = trainer.optimizers[0]
            self.records.append(
                {
                    "step": trainer.global_step,
                    "before": self._previous,
                    "after": masks,
                    "weights": {f: self.sparsity.masked.param(f).detach().clone() for f in masks},
                    "state": {
                        f: {k: v.clone() for k, v in optimizer.state[self.sparsity.masked.param(f)].items()}
                        for f in masks
                    },
                }
            )
            self.batch_of_update.append(batch_idx)
        self._previous = self._masks()

    def _masks(self) -> dict[str, torch.Tensor]:
        assert self.sparsity.masked is not None
        return {f: m.clone() for f, m in self.sparsity.masked.masks().items()}
