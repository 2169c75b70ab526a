"""Every Trainer stage, in every order a user may call them, with the callbacks' default arguments.

validate/test/predict before fit, fit + AccelerateCallback then every evaluation stage whichever
kernel was chosen, fit again on an accelerated model, frozen layers, two optimizers, and where the
report files go.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn

from lightning_srigl.acceleration.report import AccelerationReport
from lightning_srigl.callbacks import AccelerateCallback, NMSparsityCallback, SRigLCallback
from lightning_srigl.condensed.accelerate import AccelerationPlan, rebuild_plan
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.masking import mask_of, masked_weights
from tests.callbacks.tiny import TinyClassifier, TinyNet, loader, trainer

KINDS = {"dense": nn.Linear, "condensed": CondensedLinear, "csr": CSRLinear}


def run(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``tmp_path``, 2 epochs of 6 steps."""
    defaults: dict[str, Any] = dict(
        default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )  # fmt: skip
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def predictions(model: nn.Module, seed: int = 2) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in loader(seed)])


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_an_evaluation_before_fit_leaves_the_fitted_run_at_its_target_density(tmp_path: Path, stage: str) -> None:
    model, srigl = TinyClassifier(), SRigLCallback()
    evaluation = run(tmp_path, [srigl])
    getattr(evaluation, stage)(model, loader(1))
    assert masked_weights(model) == []  # an evaluation never makes masks up
    run(tmp_path, [srigl]).fit(model, loader(0))
    masks = srigl.masked.masks()
    assert masks.keys() == {"net.0.weight", "net.2.weight", "net.4.weight"}
    for fqn, mask in masks.items():
        assert 0 < int(mask.sum()) < mask.numel(), fqn
    held, last = sum(int(m.sum()) for m in masks.values()), masks["net.4.weight"]
    assert abs(held - sum(srigl.budgets.values())) <= last.shape[0] / 2  # each fan-in rounded, the rest carried on
    density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert density < 0.15  # sparsity 0.9 (ERK leaves the small head denser), not the dense placeholders


def test_an_evaluation_of_a_sparse_checkpoint_before_fit_loads_its_masks(tmp_path: Path) -> None:
    trained, srigl = TinyClassifier(), SRigLCallback()
    run(tmp_path, [srigl, ModelCheckpoint(dirpath=tmp_path, save_last=True)]).fit(trained, loader(0))
    fresh = TinyClassifier()
    run(tmp_path, [SRigLCallback()]).test(fresh, loader(1), ckpt_path=tmp_path / "last.ckpt", verbose=False)
    for masked in masked_weights(trained):
        assert torch.equal(mask_of(fresh.get_submodule(masked.module_name)), masked.mask), masked.fqn
    torch.testing.assert_close(predictions(fresh), predictions(trained))


class KeepSparseModel(Callback):
    """Deep-copies the sparse (masked) module at fit end; listed before AccelerateCallback."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.model = copy.deepcopy(pl_module).eval()


class ForcedKernel(AccelerateCallback):
    """AccelerateCallback with default arguments that installs ``kind`` (which timing picks depends on the machine)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def choose(self, pl_module: pl.LightningModule, inputs: dict[str, Tensor]) -> AccelerationPlan:
        timed = super().choose(pl_module, inputs)
        assert all(self.kind in row.times for row in timed.report.rows), "the forced kernel must be exact here"
        rows = [dataclasses.replace(row, chosen=self.kind) for row in timed.report.rows]
        return rebuild_plan(pl_module, AccelerationReport(rows))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_stage_after_fit_and_acceleration_works_whichever_kernel_was_chosen(tmp_path: Path, kind: str) -> None:
    model, keep = TinyClassifier(), KeepSparseModel()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    fit = run(tmp_path, [SRigLCallback(), checkpoint, keep, ForcedKernel(kind)])
    fit.fit(model, loader(0), loader(1))
    accelerated = {name: type(model.get_submodule(name)) for name in ("net.0", "net.2")}
    assert accelerated == {"net.0": KINDS[kind], "net.2": KINDS[kind]}
    expected = predictions(keep.model)
    torch.testing.assert_close(predictions(model), expected, rtol=1e-5, atol=1e-5)

    for stage in ("validate", "test"):
        (metrics,) = getattr(fit, stage)(model, loader(2), verbose=False)
        assert torch.isfinite(torch.tensor(list(metrics.values()))).all()
    predicted = torch.cat(fit.predict(model, loader(2)))
    torch.testing.assert_close(predicted, expected, rtol=1e-5, atol=1e-5)
    assert type(model.net[0]) is KINDS[kind]

    fit.test(model, loader(2), ckpt_path="best", verbose=False)
    assert type(model.net[0]) is KINDS[kind]  # the best checkpoint's weights, accelerated again
    sparse = copy.deepcopy(keep.model)
    sparse.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"])
    torch.testing.assert_close(predictions(model), predictions(sparse), rtol=1e-5, atol=1e-5)


def test_fitting_an_accelerated_model_again_is_refused_before_any_weight_changes(tmp_path: Path) -> None:
    model = TinyClassifier()
    last = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    run(tmp_path, [SRigLCallback(), last, AccelerateCallback()]).fit(model, loader(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for callbacks in ([SRigLCallback(), AccelerateCallback()], [SRigLCallback()], [AccelerateCallback()]):
        with pytest.raises(RuntimeError, match=r"accelerated for inference .*net\.0.*fit\(MyModel\(\), ckpt_path="):
            run(tmp_path, callbacks).fit(model, loader(0))
        after = model.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())

    resumed, srigl = TinyClassifier(), SRigLCallback()  # what the message advises
    run(tmp_path, [srigl], max_epochs=3).fit(resumed, loader(0), ckpt_path=tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(mask_of(resumed.net[i]), saved[f"net.{i}.weight_sparsity_mask"]) for i in (0, 2, 4))


def test_a_frozen_selected_layer_stays_dense_with_a_warning() -> None:
    model = TinyNet()
    model.net[0].requires_grad_(False)
    frozen = model.net[0].weight.detach().clone()
    srigl = SRigLCallback(sparsity=0.8, delta_t=2, report=False)
    with pytest.warns(UserWarning, match=r"\['net\.0\.weight'\] are frozen \(requires_grad=False\) and stay dense"):
        trainer([srigl], max_steps=8).fit(model)
    assert srigl.masked.fqns == ["net.2.weight", "net.4.weight"] and mask_of(model.net[0]) is None
    assert torch.equal(model.net[0].weight, frozen)
    assert [h["step"] for h in srigl.history] == [2, 4]


def test_a_frozen_layer_stays_dense_under_nm_too() -> None:
    model = TinyNet()
    model.net[0].requires_grad_(False)
    nm = NMSparsityCallback(keep_first_dense=False)
    with pytest.warns(UserWarning, match=r"\['net\.0\.weight'\] are frozen"):
        trainer([nm], max_steps=2).fit(model)
    assert nm.masked.fqns == ["net.2.weight"] and mask_of(model.net[0]) is None


class TwoOptimizers(TinyNet):
    """Manual optimization with one optimizer for the first layer and one for the rest: 2 steps per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        first, rest = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        first.zero_grad()
        rest.zero_grad()
        self.manual_backward(loss)
        first.step()
        rest.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        rest = [p for name, p in self.named_parameters() if not name.startswith("net.0.")]
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(rest, lr=0.1)]


def test_two_optimizers_update_on_the_scheduled_steps() -> None:
    srigl = SRigLCallback(sparsity=0.8, delta_t=3, report=False)
    trainer([srigl], max_steps=24).fit(TwoOptimizers())  # 12 batches; t_end = 0.75 * 24 = 18
    assert [h["step"] for h in srigl.history] == [3, 6, 9, 12, 15]
    assert srigl.skipped_updates == 0  # every layer's gradient was captured from its own optimizer
    assert sum(srigl.history[0]["mask_change"].values()) > 0


class FolderlessLogger(Logger):
    """A logger without a folder (``save_dir`` is None), like many experiment trackers."""

    name, version, save_dir = "folderless", 0, None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


@pytest.mark.parametrize("logger", [False, "folderless"])
def test_report_files_go_to_the_default_root_dir_never_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logger: object
) -> None:
    cwd, root = tmp_path / "cwd", tmp_path / "root"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    logger = FolderlessLogger() if logger == "folderless" else logger
    run(root, [SRigLCallback(), AccelerateCallback()], logger=logger).fit(TinyClassifier(), loader(0))
    assert (root / "active_neurons.png").exists() and (root / "acceleration.csv").exists()
    assert list(cwd.iterdir()) == []
