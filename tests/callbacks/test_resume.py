"""Resuming SRigL from checkpoints: bit-identical at an epoch boundary, exact schedule mid-epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
from lightning_srigl.callbacks.sparsity_callback import STATE_VERSION
from tests.callbacks.tiny import TinyNet, UpdateProbe, trainer


def _srigl(**kwargs: Any) -> SRigLCallback:
    return SRigLCallback(sparsity=0.8, delta_t=3, report=False, **kwargs)


class StopAfterEpochs(Callback):
    """Interrupts a run after ``epochs`` epochs (like a killed job), after the epoch checkpoint."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True


def _state(model: TinyNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_from_epoch_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    reference = TinyNet()
    trainer(callbacks=[_srigl(gamma_sal=0.5)], max_epochs=3).fit(reference)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    interrupted = trainer(callbacks=[_srigl(gamma_sal=0.5), checkpoint, StopAfterEpochs(2)], max_epochs=3)
    interrupted.fit(TinyNet())
    assert interrupted.global_step == 16
    resumed_model, callback = TinyNet(), _srigl(gamma_sal=0.5)
    resumed = trainer(callbacks=[callback], max_epochs=3)
    resumed.fit(resumed_model, ckpt_path=tmp_path / "epoch=1-step=16.ckpt")

    expected, actual = _state(reference), _state(resumed_model)
    assert expected.keys() == actual.keys() and any(k.endswith("_mask") for k in actual)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert [h["step"] for h in callback.history] == [3, 6, 9, 12, 15]  # t_end = 0.75 * 24 = 18


class CaptureAtSave(Callback):
    """Records the sparsity callback's state and masks whenever a checkpoint is written."""

    def __init__(self, sparsity: SRigLCallback) -> None:
        self.sparsity = sparsity
        self.saved: dict[int, dict[str, Any]] = {}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        masks = {f: m.clone() for f, m in self.sparsity.masked.masks().items()}
        self.saved[trainer.global_step] = {"state": self.sparsity.state_dict(), "masks": masks}


def test_mid_epoch_checkpoint_restores_the_schedule_exactly(tmp_path: Path) -> None:
    first = _srigl(grad_accumulation_n=2)
    capture = CaptureAtSave(first)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=5)
    trainer(callbacks=[first, capture, checkpoint], max_steps=20).fit(TinyNet())
    saved = capture.saved[5]  # mid-epoch (8 steps/epoch), inside the gradient window of the step-6 update
    assert set(saved["state"]["grad_sums"]) == set(first.masked.fqns)

    second = _srigl(grad_accumulation_n=2)
    probe = UpdateProbe(second)
    resumed = trainer(callbacks=[second, probe], max_steps=20)
    resumed.fit(TinyNet(), ckpt_path=tmp_path / "epoch=0-step=5.ckpt")

    assert probe.records[0]["before"].keys() == saved["masks"].keys()
    for fqn, mask in saved["masks"].items():
        assert torch.equal(probe.records[0]["before"][fqn], mask)  # masks as saved at step 5
    restored = probe.restored_state
    assert restored["t_end"] == saved["state"]["t_end"] == 15
    assert restored["history"] == saved["state"]["history"]
    for key in ("grad_sums", "ever_active"):
        for fqn, value in saved["state"][key].items():
            assert torch.equal(restored[key][fqn], value), (key, fqn)
    assert [r["step"] for r in probe.records] == [6, 9, 12]
    assert [h["step"] for h in second.history] == [3, 6, 9, 12]


@pytest.fixture(autouse=True)
def _record_restored_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let UpdateProbe snapshot the sparsity callback's state right after a checkpoint is restored."""
    original = UpdateProbe.on_train_start

    def on_train_start(self: UpdateProbe, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restored_state = self.sparsity.state_dict()
        original(self, trainer, pl_module)

    monkeypatch.setattr(UpdateProbe, "on_train_start", on_train_start)


def _checkpoint_at_step_4(tmp_path: Path) -> Path:
    """A checkpoint of a 16-step run (updates at steps 3, 6, 9; t_end = 12) written after step 4."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=4)
    trainer(callbacks=[_srigl(), checkpoint], max_steps=16).fit(TinyNet())
    return tmp_path / "epoch=0-step=4.ckpt"


def test_resuming_with_an_argument_that_changes_the_masks_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _checkpoint_at_step_4(tmp_path)
    with pytest.raises(ValueError, match=r"sparsity differ .*sparsity: checkpoint 0\.8, now 0\.7.*checkpoint's values"):
        trainer(callbacks=[SRigLCallback(sparsity=0.7, delta_t=3, report=False)], max_steps=16).fit(
            TinyNet(), ckpt_path=path
        )


def test_resuming_with_another_schedule_warns_and_resumes(tmp_path: Path) -> None:
    path = _checkpoint_at_step_4(tmp_path)
    callback = _srigl(alpha=0.5)
    with pytest.warns(UserWarning, match=r"alpha: checkpoint 0\.3, now 0\.5"):
        trainer(callbacks=[callback], max_steps=16).fit(TinyNet(), ckpt_path=path)
    assert [h["step"] for h in callback.history] == [3, 6, 9]
    assert callback.history[-1]["drop_fraction"] == pytest.approx(0.25 * (1 + math.cos(math.pi * 9 / 12)))


def _edit_callback_state(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the checkpoint at ``path`` with the SRigL callback state edited."""
    checkpoint = torch.load(path, weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("SRigLCallback")]
    state = checkpoint["callbacks"][key]
    edit(state)
    edited = path.with_name("edited.ckpt")
    torch.save(checkpoint, edited)
    return edited


def test_an_older_checkpoint_without_new_keys_resumes_with_their_defaults(tmp_path: Path) -> None:
    def make_old(state: dict[str, Any]) -> None:  # as written before `version`, `structure` and `history` existed
        del state["version"], state["method"], state["config"]["structure"], state["history"]
        state["generator"] = torch.Generator().get_state()  # held until version 3; ignored now

    path = _edit_callback_state(_checkpoint_at_step_4(tmp_path), make_old)
    callback = _srigl()
    trainer(callbacks=[callback], max_steps=16).fit(TinyNet(), ckpt_path=path)
    assert [h["step"] for h in callback.history] == [6, 9]  # the step-3 record went with the history
    assert callback.state_dict()["version"] == STATE_VERSION


def test_a_missing_key_counts_as_its_default_when_it_changes_the_masks(tmp_path: Path) -> None:
    path = _edit_callback_state(_checkpoint_at_step_4(tmp_path), lambda state: state["config"].pop("structure"))
    nm = SRigLCallback(sparsity=0.5, delta_t=3, structure="2:4", report=False)
    with pytest.raises(ValueError, match=r"structure: checkpoint 'constant_fan_in', now '2:4'"):
        trainer(callbacks=[nm], max_steps=16).fit(TinyNet(), ckpt_path=path)


def test_checkpoint_with_masks_that_do_not_fit_is_an_error(tmp_path: Path) -> None:
    class Wider(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.net[4] = torch.nn.Linear(32, 5)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=4)
    trainer(callbacks=[_srigl(), checkpoint], max_steps=4).fit(TinyNet())
    with pytest.raises(ValueError, match=r"'net\.4\.weight_sparsity_mask' has shape \(4, 32\).*\(5, 32\)"):
        trainer(callbacks=[_srigl()], max_steps=8).fit(Wider(), ckpt_path=tmp_path / "epoch=0-step=4.ckpt")


@pytest.mark.parametrize("method", [True, False], ids=["current", "before-version-3"])
def test_a_checkpoint_of_another_method_is_refused_naming_it(tmp_path: Path, method: bool) -> None:
    """An SRigL checkpoint resumed under RigL: same mask keys, other rules; the state says which method wrote it."""
    path = _checkpoint_at_step_4(tmp_path)
    if not method:
        path = _edit_callback_state(path, lambda state: state.pop("method"))
    rigl = RigLCallback(sparsity=0.8, delta_t=3, report=False)
    with pytest.raises(ValueError, match=r"RigLCallback: the checkpoint was written by SRigLCallback.*Resume it with"):
        trainer(callbacks=[rigl], max_steps=16).fit(TinyNet(), ckpt_path=path)


@pytest.mark.parametrize("version", ["x", 0, 2.5])
def test_a_corrupt_state_version_is_a_clear_error(tmp_path: Path, version: object) -> None:
    path = _edit_callback_state(_checkpoint_at_step_4(tmp_path), lambda state: state.update(version=version))
    with pytest.raises(ValueError, match=r"state has version .*not a positive integer.*corrupt"):
        trainer(callbacks=[_srigl()], max_steps=16).fit(TinyNet(), ckpt_path=path)
