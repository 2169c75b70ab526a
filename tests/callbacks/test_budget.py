"""SRigL keeps the number of weights asked for: model-wide density within 0.5 % of the target.

Constant fan-in cannot hit every count: a layer of ``O`` neurons holds a multiple of ``O`` weights.
Flooring each layer's fan-in (the reference's ``k = budget // O``) kept up to a quarter fewer weights
than asked at 99 %; each layer now takes the nearest fan-in and carries the rounding into the next.
"""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_srigl.callbacks import SRigLCallback
from lightning_srigl.masking import masked_weights
from lightning_srigl.sparsity import is_constant_fan_in, nearest_fan_in, srigl_update
from tests.callbacks.tiny import trainer


class MLP(pl.LightningModule):
    """An MLP of the given widths on 64 random samples (batch 16: 4 steps per epoch)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.widths = widths
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, self.widths[0], generator=g)
        y = torch.randint(0, self.widths[-1], (64,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=16)


def model_density(model: nn.Module) -> float:
    """Active weights over all weights of the selected (every Linear) layers; unmasked ones count dense."""
    masks = {m.fqn: m.mask for m in masked_weights(model)}
    weights = {name: p for name, p in model.named_parameters() if name.endswith("weight")}
    active = sum(int(masks[n].sum()) if n in masks else p.numel() for n, p in weights.items())
    return active / sum(p.numel() for p in weights.values())


@pytest.mark.parametrize("sparsity", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("widths", [[784, 300, 100, 10], [40, 1000, 1000, 40], [256, 256, 256, 256, 10]])
def test_model_wide_density_is_within_half_a_percent_of_the_target(widths: list[int], sparsity: float) -> None:
    model = MLP(widths)
    callback = SRigLCallback(sparsity=sparsity, delta_t=2, report=False)  # default ablation (gamma_sal 0.3)
    trainer(callbacks=[callback], max_steps=8).fit(model)
    assert len(callback.history) == 2  # t_end = 6: updates at steps 2 and 4
    assert all(is_constant_fan_in(m.mask) for m in masked_weights(model))
    assert model_density(model) == pytest.approx(1 - sparsity, rel=0.005)


def test_the_issue_case_keeps_its_budget_at_99_percent() -> None:
    """64-512-512-10 at 0.99 kept 24.5 % fewer weights than asked with floored fan-ins."""
    model = MLP([64, 512, 512, 10])
    trainer(callbacks=[SRigLCallback(sparsity=0.99, delta_t=2, report=False)], max_steps=8).fit(model)
    assert model_density(model) == pytest.approx(0.01, rel=0.005)


def test_an_update_that_ablates_spreads_the_target_over_the_survivors() -> None:
    """With ``target`` the surviving rows share it at the nearest fan-in, not ``budget // survivors``."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 40, generator=g)
    mask = torch.zeros(10, 40, dtype=torch.bool)
    mask[:, :7] = True
    weight[2:5] *= 1e-4  # three neurons with tiny weights and no gradient are ablated
    weight *= mask
    grad = torch.rand(10, 40, generator=g)
    grad[2:5] = 0
    update = srigl_update(weight, mask, grad, budget=70, target=75, drop_fraction=0.3, gamma_sal=0.5)
    survivors = 10 - update.ablated.numel()
    assert survivors < 10
    assert update.fan_in == nearest_fan_in(75, survivors, 40) == round(75 / survivors)
    assert int(update.mask.sum()) == survivors * update.fan_in
    floored = srigl_update(weight, mask, grad, budget=70, drop_fraction=0.3, gamma_sal=0.5)
    assert floored.fan_in == 70 // survivors  # the reference's rule without a target


class CountAtStart(pl.Callback):
    """Records the active weights of the sparse layers when training starts (after the masks are drawn)."""

    count = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count = sum(int(m.mask.sum()) for m in masked_weights(pl_module))


def test_ablating_updates_keep_the_count_training_started_with() -> None:
    """The updates aim at each layer's count at training start (its budget's nearest constant fan-in), so
    ablating hidden neurons does not pull the model-wide count back towards the nominal budget: the 500-row
    output layer's rounding (+200 weights at 95 %) stays, and a RigL run given that count is matched."""
    model = MLP([40, 200, 200, 500])
    start = CountAtStart()
    callback = SRigLCallback(sparsity=0.95, delta_t=2, gamma_sal=0.95, report=False)
    trainer(callbacks=[callback, start], max_steps=16).fit(model)
    masks = [m.mask for m in masked_weights(model)]
    assert sum(int(m.any(dim=1).sum()) for m in masks[:2]) < 400  # hidden neurons were ablated
    assert sum(callback.targets.values()) == start.count
    assert start.count - sum(callback.budgets.values()) == 200  # the output layer's rounding, kept on purpose
    assert sum(int(m.sum()) for m in masks) == pytest.approx(start.count, rel=0.005)
