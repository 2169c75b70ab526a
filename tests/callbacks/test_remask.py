"""Inactive weights stay exactly zero through real fits, and the per-step re-mask happens only when needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
from lightning_srigl.callbacks.remask import fit_remask_reason
from lightning_srigl.masking import MaskedParameters, mask_of
from tests.callbacks.tiny import TinyNet, trainer
from tests.masking.test_zero_keeping import DriftingSGD

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


class InactiveProbe:
    """Forward pre-hooks (not a Callback) that count nonzero inactive weights at every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.forwards = 0
        self.nonzero_inactive = 0
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_pre_hook(self._check)

    def _check(self, module: nn.Module, args: Any) -> None:
        mask = mask_of(module)
        if mask is not None:
            self.forwards += 1
            self.nonzero_inactive += int((module.weight[~mask] != 0).sum())


class Net(TinyNet):
    def __init__(self, optimizer: str) -> None:
        super().__init__(n_samples=64, batch_size=8)
        self.make_optimizer = OPTIMIZERS.get(optimizer)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


def _fit(callback, model: LightningModule, callbacks: list[Callback] = (), **kwargs) -> tuple[InactiveProbe, int]:
    """Fit with ``callbacks`` before ``callback``; returns the probe and how often weights were re-masked."""
    probe = InactiveProbe(model)
    remask = MaskedParameters.apply_to_weights_
    with mock.patch.object(MaskedParameters, "apply_to_weights_", autospec=True, side_effect=remask) as spy:
        trainer([*callbacks, callback], max_steps=40, **kwargs).fit(model)
    return probe, spy.call_count


def _assert_inactive_zero(callback, probe: InactiveProbe) -> None:
    assert probe.forwards > 0 and probe.nonzero_inactive == 0
    for fqn, mask in callback.masked.masks().items():
        weight = callback.masked.param(fqn).detach()
        assert torch.equal(weight[~mask], torch.zeros(int((~mask).sum()))), fqn


@pytest.mark.parametrize(
    ("optimizer", "clip", "callback_cls"),
    [
        ("sgd", "value", SRigLCallback),
        ("sgd-momentum-wd", "norm", SRigLCallback),
        ("adam", "value", SRigLCallback),
        ("adamw", "norm", SRigLCallback),
        ("sgd-momentum-wd", "value", RigLCallback),
    ],
)
def test_inactive_weights_stay_zero_without_a_per_step_remask(optimizer: str, clip: str, callback_cls) -> None:
    callback = callback_cls(report=False, sparsity=0.8, delta_t=8)
    probe, remasks = _fit(
        callback, Net(optimizer), accumulate_grad_batches=2, gradient_clip_val=0.05, gradient_clip_algorithm=clip
    )
    _assert_inactive_zero(callback, probe)
    assert callback.remask.reason() is None
    assert len(callback.history) == 3  # updates at 8, 16, 24 (t_end = 30)
    assert remasks == 2 + 3  # set-up, start of training, each update: no per-step pass
    assert sum(sum(r["mask_change"].values()) for r in callback.history) > 0


class Drifting(Net):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return DriftingSGD(self.parameters(), lr=0.1)


class Nudge(Callback):
    """Moves every weight at the end of each batch (listed before the sparsity callback)."""

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        with torch.no_grad():
            for p in pl_module.parameters():
                p.add_(1e-3)


@pytest.mark.parametrize("callback_cls", [SRigLCallback, RigLCallback])
def test_an_unknown_optimizer_keeps_the_per_step_remask(callback_cls) -> None:
    callback = callback_cls(report=False, sparsity=0.8, delta_t=8)
    probe, remasks = _fit(callback, Drifting("sgd"))
    _assert_inactive_zero(callback, probe)
    assert "DriftingSGD is not one of SGD, Adam, AdamW" in str(callback.remask.reason())
    assert remasks == 2 + 40


def test_another_callback_that_moves_weights_keeps_the_per_step_remask() -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=8)
    probe, remasks = _fit(callback, Net("sgd"), callbacks=[Nudge()])
    _assert_inactive_zero(callback, probe)
    assert callback.remask.fit_reason == "callback Nudge overrides on_train_batch_end"
    assert remasks == 2 + 40


class ManualSteps(Net):
    def __init__(self) -> None:
        super().__init__("sgd")
        self.automatic_optimization = False


class CustomStep(Net):
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)


class LogsGradients(Net):
    def on_validation_epoch_end(self) -> None:  # epoch and validation hooks are taken as read-only
        pass


@pytest.mark.parametrize(
    ("model", "callbacks", "reason"),
    [
        (ManualSteps(), [], "the LightningModule uses manual optimization"),
        (CustomStep("sgd"), [], "CustomStep overrides optimizer_step"),
        (Net("sgd"), [Nudge()], "callback Nudge overrides on_train_batch_end"),
        (LogsGradients("sgd"), [], None),
    ],
)
def test_fit_reasons(model: LightningModule, callbacks: list[Callback], reason: str | None) -> None:
    owner = SRigLCallback(report=False)
    assert fit_remask_reason(trainer([*callbacks, owner]), model, owner) == reason


def test_a_restored_checkpoint_is_re_masked_with_its_optimizer_state(tmp_path: Path) -> None:
    """A checkpoint with nonzero inactive weights and momentum (edited by hand) trains on exactly sparse."""
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    trainer([SRigLCallback(report=False, sparsity=0.8, delta_t=8), saver], max_steps=8).fit(Net("sgd-momentum-wd"))
    path = tmp_path / "epoch=0-step=8.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    inactive = ~checkpoint["state_dict"]["net.2.weight_sparsity_mask"]
    checkpoint["state_dict"]["net.2.weight"][inactive] = 0.5
    momentum = checkpoint["optimizer_states"][0]["state"][2]["momentum_buffer"]  # net.2.weight is parameter 2
    assert momentum.shape == inactive.shape
    momentum[inactive] = 1.0
    torch.save(checkpoint, path)

    callback, model = SRigLCallback(report=False, sparsity=0.8, delta_t=8), Net("sgd-momentum-wd")
    probe = InactiveProbe(model)
    fit = trainer([callback], max_steps=16)
    fit.fit(model, ckpt_path=path)
    _assert_inactive_zero(callback, probe)
    assert callback.remask.reason() is None
    mask = callback.masked.mask("net.2.weight")
    assert not fit.optimizers[0].state[callback.masked.param("net.2.weight")]["momentum_buffer"][~mask].any()
