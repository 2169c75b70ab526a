"""A LightningModule for image/vector classification with the optimiser recipes of the SRigL paper.

The recipe is a plain dataclass so that a LightningCLI YAML spells it out field by field::

    model:
      class_path: example_projects.cifar10_resnet18.model.CIFARResNet18
      init_args:
        recipe: {optimizer: sgd, lr: 0.1, schedule: step, milestones: [77, 154, 231], gamma: 0.2}

The learning-rate schedule is evaluated per optimizer step from the fractional epoch, so warm-up is
smooth while step decays still land on epoch boundaries, as in the reference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and loss settings of one training recipe.

    Attributes:
        optimizer: ``"sgd"`` (with ``momentum``/``nesterov``) or ``"adamw"`` (with ``betas``).
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        betas: AdamW betas.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay, applied to every parameter.
        schedule: ``"step"`` multiplies the lr by ``gamma`` at each epoch in ``milestones``;
            ``"cosine"`` decays to 0 over the run after warm-up; ``"constant"`` keeps ``lr``.
        milestones: epochs at which the step schedule decays.
        gamma: step-schedule decay factor.
        warmup_epochs: linear warm-up length in epochs (may be fractional; 0 disables warm-up).
        warmup_start_factor: lr at the start of warm-up as a fraction of ``lr``.
        label_smoothing: cross-entropy label smoothing.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    label_smoothing: float = 0.0


def lr_factor(epoch: float, recipe: Recipe, max_epochs: float) -> float:
    """Learning-rate multiplier at fractional ``epoch`` (0-based) of a run of ``max_epochs``."""
    if epoch < recipe.warmup_epochs:
        start = recipe.warmup_start_factor
        return start + (1.0 - start) * epoch / recipe.warmup_epochs
    if recipe.schedule == "step":
        return recipe.gamma ** sum(1 for m in recipe.milestones if math.floor(epoch) >= m)
    if recipe.schedule == "cosine":
        span = max(max_epochs - recipe.warmup_epochs, 1e-8)
        progress = min(max((epoch - recipe.warmup_epochs) / span, 0.0), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The optimiser named by ``recipe`` over ``params``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


class ClassificationModule(LightningModule):
    """Cross-entropy classifier around ``net`` that logs loss and top-1 accuracy.

    Args:
        net: maps a batch of inputs ``(B, *in_shape)`` to logits ``(B, num_classes)``.
        recipe: optimiser, schedule and loss settings.
    """

    def __init__(self, net: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.net = net
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for inputs ``(B, *in_shape)``."""
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        smoothing = self.recipe.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, prog_bar=True, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Predicted class indices ``(B,)``."""
        return self(batch[0]).argmax(dim=-1)

    def _steps_per_epoch(self) -> int:
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if trainer.train_dataloader is None:  # max_steps runs do not load the data for the estimate
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if math.isinf(batches):
            raise ValueError("The lr schedule needs a sized training dataloader; give the dataset a __len__.")
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        return max(1, min(per_epoch, int(total)))

    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(list(self.parameters()), self.recipe)
        steps_per_epoch = self._steps_per_epoch()
        max_epochs = self.trainer.estimated_stepping_batches / steps_per_epoch

        def factor(step: int) -> float:
            return lr_factor(step / steps_per_epoch, self.recipe, max_epochs)

        scheduler = LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
