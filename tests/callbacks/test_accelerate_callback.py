"""``AccelerateCallback`` in real ``Trainer`` runs: swap at fit end, test/predict, best checkpoint, saving."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_srigl.callbacks.accelerate import REPORT_FILENAME, AccelerateCallback
from lightning_srigl.callbacks.nm import NMSparsityCallback
from lightning_srigl.callbacks.srigl import SRigLCallback
from lightning_srigl.condensed.layer_call import resize_batch as _resize_batch
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.serialization import save_condensed
from lightning_srigl.sparsity import is_constant_fan_in
from tests.callbacks.tiny import TinyClassifier, loader


class KeepSparseModel(Callback):
    """Deep-copies the sparse (masked) module at fit end; listed before AccelerateCallback."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.model = copy.deepcopy(pl_module).eval()


def fit(
    tmp_path: Path,
    sparsity: Callback | None = None,
    trainer_kwargs: dict[str, object] | None = None,
    **accelerate_kwargs: object,
) -> tuple[pl.Trainer, TinyClassifier, KeepSparseModel, AccelerateCallback]:
    pl.seed_everything(0)
    model, keep = TinyClassifier(), KeepSparseModel()
    accelerate = AccelerateCallback(verbose=False, warmup=1, repeats=2, **accelerate_kwargs)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        **{"accelerator": "cpu", **(trainer_kwargs or {})},
        callbacks=[
            sparsity or SRigLCallback(sparsity=0.8, delta_t=3, gamma_sal=0.5),
            ModelCheckpoint(monitor="val_loss", save_top_k=1),
            keep,
            accelerate,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader(0), loader(1))
    return trainer, model, keep, accelerate


def predictions(model: nn.Module, data: DataLoader) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in data])


@pytest.fixture(scope="module")
def fitted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pl.Trainer, TinyClassifier, KeepSparseModel, AccelerateCallback]:
    return fit(tmp_path_factory.mktemp("fit"))


def test_fit_end_swaps_sparse_layers_and_keeps_predictions(fitted) -> None:
    trainer, model, keep, accelerate = fitted
    assert [row.name for row in accelerate.report.rows] == ["net.0", "net.2"]
    assert not any(name.endswith("weight_sparsity_mask") for name in model.state_dict())
    torch.testing.assert_close(predictions(model, loader(2)), predictions(keep.model, loader(2)), rtol=1e-5, atol=1e-5)
    with (Path(trainer.log_dir) / REPORT_FILENAME).open() as handle:
        assert [r["layer"] for r in csv.DictReader(handle)] == ["net.0", "net.2"]


def test_test_and_predict_run_on_the_accelerated_model(fitted) -> None:
    trainer, model, keep, _ = fitted
    (metrics,) = trainer.test(model, loader(2), verbose=False)
    with torch.no_grad():
        expected = sum(model._loss(b) for b in loader(2)) / len(loader(2))
    assert metrics["test_loss"] == pytest.approx(float(expected), rel=1e-5)
    predicted = torch.cat(trainer.predict(model, loader(2)))
    torch.testing.assert_close(predicted, predictions(keep.model, loader(2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("precision", "accelerator"),
    [
        ("bf16-mixed", "cpu"),
        pytest.param(
            "16-mixed",
            "gpu",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="16-mixed (fp16 autocast with a gradient scaler) runs on CUDA only; "
                "scripts/gpu_check.sh runs it",
            ),
        ),
    ],
)
def test_mixed_precision_fit_accelerates_and_predicts(tmp_path: Path, precision: str, accelerator: str) -> None:
    """Layers captured under autocast get half-precision inputs; the swap and inference still work."""
    sparsity = SRigLCallback(sparsity=0.8, delta_t=3, gamma_sal=0.5)
    trainer, model, keep, accelerate = fit(tmp_path, sparsity, {"precision": precision, "accelerator": accelerator})
    assert [row.name for row in accelerate.report.rows] == ["net.0", "net.2"]
    assert all(is_constant_fan_in(mask) for mask in sparsity.masked.masks().values())
    predicted = torch.cat(trainer.predict(model, loader(2))).float().cpu()
    device = next(keep.model.parameters()).device
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        expected = torch.cat([keep.model(x.to(device)) for x, _ in loader(2)]).float().cpu()
    # The accelerated sparse layers compute in fp32, the reference's dense layers in the autocast dtype.
    torch.testing.assert_close(predicted, expected, rtol=5e-2, atol=5e-2)


def test_best_checkpoint_loads_after_the_swap(tmp_path: Path) -> None:
    trainer, model, keep, accelerate = fit(tmp_path)
    best = trainer.checkpoint_callback.best_model_path
    trainer.test(model, loader(2), ckpt_path="best", verbose=False)
    assert not any(name.endswith("weight_sparsity_mask") for name in model.state_dict())  # accelerated again
    sparse = copy.deepcopy(keep.model)
    sparse.load_state_dict(torch.load(best, weights_only=False)["state_dict"])  # a fresh sparse model loads it too
    torch.testing.assert_close(predictions(model, loader(2)), predictions(sparse, loader(2)), rtol=1e-5, atol=1e-5)
    assert {row.chosen for row in accelerate.report.rows} <= {"dense", "condensed", "csr"}


def test_condensed_model_loads_in_a_fresh_process_and_matches(tmp_path: Path) -> None:
    _, model, keep, _ = fit(tmp_path, candidates=("dense", "condensed"), batch_size=4)
    path, inputs = tmp_path / "model.pt", tmp_path / "inputs.pt"
    save_condensed(model.net, path)
    x = torch.randn(8, 32)
    torch.save({"x": x, "expected": predictions(keep.model.net, [(x, None)])}, inputs)
    script = (
        "import sys, torch\n"
        "from lightning_srigl.condensed.serialization import load_condensed\n"
        "model = load_condensed(sys.argv[1]).eval()\n"
        "data = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(model(data['x']), data['expected'], rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path), str(inputs)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_nm_layers_are_condensed_with_fan_in_half_the_inputs(tmp_path: Path) -> None:
    nm = NMSparsityCallback(n=2, m=4, keep_first_dense=False)
    _, model, keep, accelerate = fit(tmp_path, sparsity=nm, candidates=("dense", "condensed"), fold=False)
    assert [row.name for row in accelerate.report.rows] == ["net.0", "net.2"]
    assert [row.density for row in accelerate.report.rows] == [0.5, 0.5]
    condensed = CondensedLinear.from_masked(keep.model.net[2])  # what the condensed candidate is
    assert condensed.fan_in == 64 // 2
    torch.testing.assert_close(predictions(model, loader(2)), predictions(keep.model, loader(2)), rtol=1e-5, atol=1e-5)


def test_batch_size_resizes_the_captured_inputs() -> None:
    x = torch.arange(6.0).view(3, 2)
    assert _resize_batch(x, None) is x
    assert torch.equal(_resize_batch(x, 2), x[:2])
    assert torch.equal(_resize_batch(x, 7), torch.cat([x, x, x[:1]]))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        AccelerateCallback(batch_size=0)


def test_quantize_int8_keeps_predictions_within_the_budget(tmp_path: Path) -> None:
    """Every layer's choice stays within the error budget; a wide budget lets int8 layers be chosen."""
    _, model, keep, accelerate = fit(tmp_path, quantize="int8", error_budget=0.5)
    for row in accelerate.report.rows:
        assert {"int8_condensed", "int8_condensed_static", "int8_dense"} <= set(row.errors)
        assert row.errors.get(row.chosen, 0.0) <= 0.5
    got, expected = predictions(model, loader(2)), predictions(keep.model, loader(2))
    assert float((got - expected).norm() / expected.norm()) < 0.1


def test_compile_compiles_the_module_holding_the_accelerated_layers(tmp_path: Path) -> None:
    _, model, keep, accelerate = fit(tmp_path, compile=True)
    assert "forward" in vars(model.net)  # net.0 and net.2 live in net: its forward was compiled in place
    torch.testing.assert_close(predictions(model, loader(2)), predictions(keep.model, loader(2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="compile"):
        AccelerateCallback(compile="yes")


def test_compile_options_reach_the_compiled_module_and_bad_ones_are_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_srigl.callbacks.accelerate as callback_module

    compiled: list[tuple[nn.Module, object]] = []
    compile_lazily = callback_module.compile_lazily
    monkeypatch.setattr(
        callback_module,
        "compile_lazily",
        lambda module, options=None: compiled.append((module, options)) or compile_lazily(module, options=options),
    )
    _, model, keep, _ = fit(tmp_path, compile=True, compile_options={"cpp_wrapper": True})
    assert compiled == [(model.net, {"cpp_wrapper": True})]
    torch.testing.assert_close(predictions(model, loader(2)), predictions(keep.model, loader(2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="did you mean 'cpp_wrapper'"):
        AccelerateCallback(compile=True, compile_options={"cpp_wraper": True})
    with pytest.raises(TypeError, match="compile_options must be a dict"):
        AccelerateCallback(compile=True, compile_options="cpp_wrapper")
    with pytest.raises(ValueError, match="pass compile=True"):
        AccelerateCallback(compile_options={"cpp_wrapper": True})
