"""Checkpoint masks: our own buffer name (older ``<param>_mask`` files still load), no silent clash with
``torch.nn.utils.prune``/``ModelPruning``, masks checked against the method's rules on resume, and one
named error when a checkpoint masks other weights than the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelPruning

from lightning_srigl.callbacks import NMSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.masking import (
    accept_masks_on_load,
    mask_of,
    masked_weights,
    without_masks,
)
from tests.callbacks.tiny import TinyNet, trainer


def _srigl(**kwargs: object) -> SRigLCallback:
    return SRigLCallback(sparsity=0.8, delta_t=3, report=False, **kwargs)


def _checkpoint(tmp_path: Path, callbacks: list[Callback]) -> Path:
    """A checkpoint written after step 4 of a 16-step run with ``callbacks``."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=4)
    trainer(callbacks=[*callbacks, checkpoint], max_steps=4).fit(TinyNet())
    return tmp_path / "epoch=0-step=4.ckpt"


def _edited(path: Path, edit: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(path, weights_only=False)
    edit(checkpoint["state_dict"])
    edited = path.with_name("edited.ckpt")
    torch.save(checkpoint, edited)
    return edited


def _old_names(state: dict) -> None:
    """Rename the masks as checkpoints written before the rename have them: ``<param>_mask``."""
    for key in [k for k in state if k.endswith("_sparsity_mask")]:
        state[key.removesuffix("_sparsity_mask") + "_mask"] = state.pop(key)


def test_masks_are_buffers_of_our_own_name(tmp_path: Path) -> None:
    model = TinyNet()
    trainer(callbacks=[_srigl()], max_steps=1).fit(model)
    masks = sorted(k for k in model.state_dict() if k.endswith("_mask"))
    assert masks == ["net.0.weight_sparsity_mask", "net.2.weight_sparsity_mask", "net.4.weight_sparsity_mask"]


def test_a_checkpoint_with_the_old_mask_names_resumes_with_its_masks(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, [_srigl()])
    saved = torch.load(path, weights_only=False)["state_dict"]
    old = _edited(path, _old_names)
    assert "net.0.weight_mask" in torch.load(old, weights_only=False)["state_dict"]

    class Probe(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.masks = {m.fqn: m.mask.clone() for m in masked_weights(pl_module)}

    probe = Probe()
    trainer(callbacks=[_srigl(), probe], max_steps=5).fit(TinyNet(), ckpt_path=old)
    assert probe.masks.keys() == {"net.0.weight", "net.2.weight", "net.4.weight"}
    for fqn, mask in probe.masks.items():
        assert torch.equal(mask, saved[f"{fqn}_sparsity_mask"]), fqn


def test_the_old_mask_names_load_for_evaluation_and_into_a_plain_model(tmp_path: Path) -> None:
    state = torch.load(_checkpoint(tmp_path, [_srigl()]), weights_only=False)["state_dict"]
    old = dict(state)
    _old_names(old)
    model = TinyNet()
    handle = accept_masks_on_load(model)
    model.load_state_dict(old)
    handle.remove()
    assert torch.equal(mask_of(model.net[2]), state["net.2.weight_sparsity_mask"])
    for checkpoint in (state, old):  # the documented one-liner, either name
        plain = TinyNet()
        plain.load_state_dict(without_masks(checkpoint))
        assert masked_weights(plain) == [] and torch.equal(plain.net[2].weight, state["net.2.weight"])


def test_model_pruning_beside_a_sparsity_callback_is_an_error_not_a_silent_clash(tmp_path: Path) -> None:
    """ModelPruning prunes at the end of epoch 0: torch.nn.utils.prune then replaces the weights SRigL trains."""
    pruning = ModelPruning("l1_unstructured", amount=0.5)
    with pytest.raises(ValueError, match=r"pruned by torch\.nn\.utils\.prune \(Lightning's ModelPruning\).*Use one"):
        trainer(callbacks=[_srigl(), pruning], max_epochs=2, default_root_dir=tmp_path).fit(TinyNet())


def test_a_model_pruned_before_fit_is_refused_at_setup() -> None:
    model = TinyNet()
    torch.nn.utils.prune.l1_unstructured(model.net[2], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"net\.2 are pruned by torch\.nn\.utils\.prune"):
        trainer(callbacks=[_srigl()], max_steps=2).fit(model)


def _all_ones(state: dict) -> None:
    state["net.2.weight_sparsity_mask"].fill_(True)


def _all_zero(state: dict) -> None:
    state["net.2.weight_sparsity_mask"].fill_(False)


def _uneven_fan_in(state: dict) -> None:
    mask = state["net.2.weight_sparsity_mask"]
    row = int(mask[0].logical_not().nonzero()[0])
    mask[0, row] = True  # neuron 0 holds one weight more than the others


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_all_ones, r"net\.2\.weight: every weight is active \(a dense layer\)"),
        (_all_zero, r"net\.2\.weight: no weight is active \(a dead layer\)"),
        (_uneven_fan_in, r"net\.2\.weight: active neurons hold different numbers of weights .*not one constant fan-in"),
    ],
    ids=["all-ones", "all-zero", "uneven-fan-in"],
)
def test_resumed_masks_that_break_srigls_rules_are_refused(tmp_path: Path, edit: Callable, message: str) -> None:
    path = _edited(_checkpoint(tmp_path, [_srigl()]), edit)
    with pytest.raises(ValueError, match=r"SRigLCallback: the model's masks break the method's rules \(" + message):
        trainer(callbacks=[_srigl()], max_steps=8).fit(TinyNet(), ckpt_path=path)


def test_resumed_masks_are_checked_under_rigl_and_nm_too(tmp_path: Path) -> None:
    rigl_path = _edited(_checkpoint(tmp_path / "rigl", [RigLCallback(sparsity=0.8, report=False)]), _uneven_fan_in)
    with pytest.raises(ValueError, match=r"net\.2\.weight: \d+ active weights, but RigL keeps the layer's budget"):
        trainer(callbacks=[RigLCallback(sparsity=0.8, report=False)], max_steps=8).fit(TinyNet(), ckpt_path=rigl_path)
    nm_path = _edited(_checkpoint(tmp_path / "nm", [NMSparsityCallback()]), _all_ones)
    with pytest.raises(ValueError, match=r"NMSparsityCallback: .*net\.2\.weight: not 2:4 sparse"):
        trainer(callbacks=[NMSparsityCallback()], max_steps=8).fit(TinyNet(), ckpt_path=nm_path)


@pytest.mark.parametrize(
    ("writer", "resumer", "message"),
    [
        (list, _srigl, r"has no masks: it was written without a sparsity callback \(it lacks net\.0\.weight_"),
        (lambda: [_srigl()], NMSparsityCallback, r"has masks for other weights \(it masks net\.0\.weight_"),
        (
            lambda: [_srigl()],
            lambda: _srigl(include=["net.2.weight"]),
            r"has masks for other weights \(it masks net\.0\.",
        ),
    ],
    ids=["dense-with-srigl", "srigl-with-nm", "include-subset"],
)
def test_a_checkpoint_masking_other_weights_is_one_named_error(
    tmp_path: Path, writer: Callable, resumer: Callable, message: str
) -> None:
    path = _checkpoint(tmp_path, writer())
    with pytest.raises(ValueError, match=r"the checkpoint .*" + message + r".*without_masks"):
        trainer(callbacks=[resumer()], max_steps=8).fit(TinyNet(), ckpt_path=path)


class EvaluatedNet(TinyNet):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.training_step(batch, batch_idx)


def test_masks_loaded_for_evaluation_are_checked_too(tmp_path: Path) -> None:
    """``trainer.validate(ckpt_path=...)`` accepts the checkpoint's masks, then checks them by the method's rules."""
    untouched = _checkpoint(tmp_path, [_srigl()])
    edited = _edited(untouched, _uneven_fan_in)
    data = TinyNet().train_dataloader()
    with pytest.raises(ValueError, match=r"net\.2\.weight: active neurons hold different numbers of weights"):
        trainer(callbacks=[_srigl()]).validate(EvaluatedNet(), data, ckpt_path=edited)
    model = EvaluatedNet()
    trainer(callbacks=[_srigl()]).validate(model, data, ckpt_path=untouched)
    assert len(masked_weights(model)) == 3
