"""NMSparsityCallback (SR-STE) trained with real Trainers on tiny CPU models."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_srigl.callbacks import NMSparsityCallback, SRigLCallback
from lightning_srigl.sparsity.nm import is_nm, nm_mask
from lightning_srigl.sparsity.transposable import is_transposable_nm

SPARSE = ("net.2.weight", "net.4.weight")  # first (net.0) and last (net.6) layers stay dense


class TinyMLP(pl.LightningModule):
    """8 -> 16 -> 16 -> 16 -> 4 MLP classifier trained with SGD + momentum."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyConvNet(TinyMLP):
    """Conv stem (3 channels: dense) -> conv 8->8, 8->6 (2:4) -> conv 6->8 (6 % 4 != 0: dense) -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
        )  # fmt: skip


class GradientSpy(Callback):
    """Records every parameter and gradient at ``on_before_optimizer_step`` (listed after the N:M callback)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.records.append(
            {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in pl_module.named_parameters() if n in SPARSE}
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if self.path is not None and trainer.is_global_zero:
            torch.save(self.records, self.path)


def _data(n_samples: int = 16, image: bool = False, period: int | None = None) -> TensorDataset:
    """Random inputs and labels; with ``period``, sample ``i`` repeats sample ``i % period``."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n_samples, *((3, 4, 4) if image else (8,)), generator=generator)
    y = torch.randint(0, 4, (n_samples,), generator=generator)
    index = torch.arange(n_samples) % (period or n_samples)
    return TensorDataset(x[index], y[index])


class StridedSampler(Sampler[int]):
    """Sample ``rank, rank + world_size, ...`` in order: the ranks' batches together form one big batch."""

    def __init__(self, n_samples: int) -> None:
        self.n_samples = n_samples

    def __iter__(self) -> Iterator[int]:
        distributed = torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        return iter(range(rank, self.n_samples, world))

    def __len__(self) -> int:
        return self.n_samples


def _fit(
    model: pl.LightningModule,
    callbacks: list[Callback],
    batch_size: int = 8,
    data: TensorDataset | None = None,
    ckpt_path: Path | None = None,
    **kwargs,
) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer = pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})
    data = _data() if data is None else data
    trainer.fit(model, DataLoader(data, batch_size=batch_size, sampler=StridedSampler(len(data))), ckpt_path=ckpt_path)
    return trainer


def _assert_exactly_nm(model: nn.Module, names: tuple[str, ...], transposable: str | None = None) -> None:
    for name in names:
        module_name, _, param_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        weight, mask = getattr(module, param_name), getattr(module, f"{param_name}_sparsity_mask")
        if transposable is None:
            assert is_nm(mask, 2, 4) and is_nm(weight, 2, 4), name
        else:
            assert is_transposable_nm(mask, 2, 4, exact=transposable == "exact"), name
        assert not weight[~mask].any(), f"{name} has nonzeros outside its mask"


def test_bf16_mixed_with_accumulation_ends_exactly_nm() -> None:
    model = TinyConvNet()
    callback = NMSparsityCallback(lambda_w=2e-2)
    _fit(model, [callback], batch_size=4, data=_data(image=True), precision="bf16-mixed", accumulate_grad_batches=2)
    assert callback.masked is not None and callback.masked.fqns == ["net.2.weight", "net.4.weight"]
    _assert_exactly_nm(model, ("net.2.weight", "net.4.weight"))
    for dense in ("net.0", "net.6", "net.8"):  # stem, the conv with 6 input channels, head
        assert not hasattr(model.get_submodule(dense), "weight_sparsity_mask")
        assert (model.get_submodule(dense).weight != 0).all()


@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_transposable_variant_ends_transposable(method: str) -> None:
    model = TinyMLP()
    _fit(model, [NMSparsityCallback(transposable=method, mask_interval=2)])
    _assert_exactly_nm(model, SPARSE, transposable=method)


def test_gradient_is_straight_through_plus_refine_term() -> None:
    model, lambda_w = TinyMLP(), 0.5
    reference = copy.deepcopy(model)
    spy = GradientSpy()
    _fit(model, [NMSparsityCallback(lambda_w=lambda_w), spy], batch_size=16, max_steps=1)
    masks = {}
    for name, param in reference.named_parameters():  # the masked forward SR-STE runs, by hand
        if name in SPARSE:
            masks[name] = nm_mask(param.detach().abs(), 2, 4)
            param.data.mul_(masks[name])
    x, y = _data()[:]
    nn.functional.cross_entropy(reference(x), y).backward()
    dense = dict(TinyMLP().named_parameters())
    for name in SPARSE:
        weight, grad = spy.records[0][name]
        assert torch.equal(weight, dense[name].detach()), "the optimizer must step the dense weights"
        expected = reference.get_parameter(name).grad + lambda_w * (~masks[name]) * weight
        torch.testing.assert_close(grad, expected)


def _records_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for step_a, step_b in zip(a, b):
        for name in SPARSE:
            torch.testing.assert_close(step_a[name][0], step_b[name][0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(step_a[name][1], step_b[name][1], atol=1e-5, rtol=1e-4)


def test_refine_term_does_not_scale_with_accumulation() -> None:
    one, two = GradientSpy(), GradientSpy()
    _fit(TinyMLP(), [NMSparsityCallback(lambda_w=0.5), one], batch_size=8, max_steps=3)
    _fit(TinyMLP(), [NMSparsityCallback(lambda_w=0.5), two], batch_size=4, max_steps=3, accumulate_grad_batches=2)
    _records_equal(one.records, two.records)


def test_refine_term_is_identical_with_one_and_two_ddp_processes(tmp_path: Path) -> None:
    _fit(TinyMLP(), [NMSparsityCallback(lambda_w=0.5), GradientSpy(tmp_path / "one.pt")], batch_size=8, max_steps=3)
    _fit(
        TinyMLP(), [NMSparsityCallback(lambda_w=0.5), GradientSpy(tmp_path / "two.pt")],
        batch_size=4, max_steps=3, devices=2, strategy="ddp_fork",
    )  # fmt: skip
    _records_equal(torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt"))


def test_resume_from_checkpoint_continues_identically(tmp_path: Path) -> None:
    # Every batch is the same 4 samples: Lightning replays batches when resuming from an epoch-end
    # checkpoint, so only the optimizer-step count (and our state) may decide the trajectory.
    common = dict(batch_size=4, max_steps=8, data=_data(period=4))
    straight = TinyMLP(lr=0.5)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    callback = NMSparsityCallback(lambda_w=0.1, mask_interval=3, log_every_n_steps=2)
    _fit(straight, [callback, saver], enable_checkpointing=True, **common)
    resumed = TinyMLP(lr=0.5)
    callback = NMSparsityCallback(lambda_w=0.1, mask_interval=3, log_every_n_steps=2)
    _fit(resumed, [callback], ckpt_path=tmp_path / "epoch=0-step=4.ckpt", **common)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"n differ from the checkpoint's \(n: checkpoint 2, now 1\)"):
        _fit(TinyMLP(), [NMSparsityCallback(n=1, m=4)], ckpt_path=tmp_path / "epoch=0-step=4.ckpt", **common)


def test_checkpoint_carries_masks_and_pruned_values(tmp_path: Path) -> None:
    trainer = _fit(TinyMLP(), [NMSparsityCallback()], max_steps=2, enable_checkpointing=True, default_root_dir=tmp_path)
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    state = checkpoint["callbacks"]["NMSparsityCallback"]
    assert set(state["pruned"]) == set(SPARSE)
    for name in SPARSE:
        mask = checkpoint["state_dict"][f"{name}_sparsity_mask"]
        assert is_nm(mask, 2, 4) and state["pruned"][name].numel() == int((~mask).sum())
    assert trainer.global_step == 2


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_logs_mask_flips_per_layer_and_globally() -> None:
    logger = MemoryLogger()
    _fit(TinyMLP(lr=1.0), [NMSparsityCallback(lambda_w=0.0, log_every_n_steps=2)], logger=logger, max_steps=4)
    rows = [(step, metrics) for step, metrics in logger.rows if "nm/mask_change" in metrics]
    assert [step for step, _ in rows] == [2, 4]
    for _, metrics in rows:
        per_layer = sum(metrics[f"nm/{name}/mask_change"] for name in SPARSE)
        assert metrics["nm/mask_change"] == per_layer
        assert metrics["nm/flip_rate"] == pytest.approx(per_layer / (2 * 16 * 16 * 2))  # 2 layers, 2 updates
    assert rows[0][1]["nm/mask_change"] > 0, "plain STE at lr=1 flips masks"


def test_one_sparsity_callback_per_trainer() -> None:
    with pytest.raises(ValueError, match="one sparsity callback per Trainer"):
        _fit(TinyMLP(), [NMSparsityCallback(), SRigLCallback(sparsity=0.5)])


def test_layer_not_divisible_by_m_is_an_error_when_included() -> None:
    with pytest.raises(ValueError, match=r"net\.6\.weight is selected by include=.*not divisible by m=4"):
        _fit(TinyConvNet(), [NMSparsityCallback(include=["net.2.weight", "net.6.weight"])], data=_data(image=True))


def test_invalid_pattern_is_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid N:M pattern 4:4"):
        NMSparsityCallback(n=4, m=4)
