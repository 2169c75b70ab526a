"""``AccelerateCallback(fast_attention=...)`` switches attention as ``accelerate()`` does: a Hugging Face BERT (from a
small config) and an ``nn.MultiheadAttention`` the swap condensed, trained with ``SRigLCallback()``; the outputs stay
those of the masked dense model (1e-4), the report records and logs the choice, checkpoints load, the other DDP
rank installs rank 0's choice, ``restore_dense`` and ``compile=True`` keep it right."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_srigl import SRigLCallback
from lightning_srigl.acceleration.accelerate import AccelerationPlan, plan_acceleration, rebuild_plan
from lightning_srigl.acceleration.attention import ATTENTION_CANDIDATES, HF_IMPLEMENTATION, switch_attention
from lightning_srigl.acceleration.swap import restore_dense
from lightning_srigl.callbacks import AccelerateCallback
from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.layer_call import LayerCall
from lightning_srigl.timing import Timing
from tests.condensed.test_accelerate_attention import Encoder as AttentionThenLinear
from tests.condensed.test_accelerate_attention import the_op_ran

transformers = pytest.importorskip("transformers")
VOCAB = 64


def favouring(winner: str) -> Callable[[Mapping[str, Callable[[], object]]], dict[str, Timing]]:
    """A timer under which ``winner`` is twice as fast as every other candidate."""
    return lambda calls: {name: Timing(1.0, 1.0) if name == winner else Timing(2.0, 2.0) for name in calls}


class SquareLoss(pl.LightningModule):
    """Train, validate and test on the mean square of ``self(*batch)`` (a validation loss for checkpointing)."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(*batch).square().mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(*batch).square().mean())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test_loss", self(*batch).square().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Bert(SquareLoss):
    """A two-layer BERT encoder from a config (on ``"sdpa"``, transformers' default) called with keyword arguments
    only, padding masked."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64,
        )  # fmt: skip
        self.model = transformers.BertModel(config, add_pooling_layer=False)  # every parameter in the loss (DDP)

    def forward(self, ids: Tensor, padding: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=padding).last_hidden_state


def batches(seed: int) -> DataLoader:
    """8 sequences of 12 tokens, the last 4 of every other one padding, in batches of 4."""
    ids = torch.randint(0, VOCAB, (8, 12), generator=torch.Generator().manual_seed(seed))
    padding = torch.ones(8, 12, dtype=torch.long)
    padding[::2, 8:] = 0
    return DataLoader(TensorDataset(ids, padding), batch_size=4)


class KeepMaskedDense(Callback):
    """A copy of the masked dense module as fit ends, before AccelerateCallback swaps its layers."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.model = copy.deepcopy(pl_module).eval()


class OpAttention(AccelerateCallback):
    """AccelerateCallback whose attention timing favours the op (which attention is faster depends on the machine);
    it records the calls it was given."""

    def choose_attention(self, pl_module: pl.LightningModule, calls: dict[str, LayerCall]) -> dict[str, str]:
        self.calls = calls
        return switch_attention(pl_module, calls, timer=favouring("lightning_srigl"))


class CondensedOpAttention(OpAttention):
    """Also installs the condensed candidate wherever it is exact (a tiny attention's timing may keep it dense)."""

    def choose(self, pl_module: pl.LightningModule, inputs: dict[str, Tensor]) -> AccelerationPlan:
        timed = plan_acceleration(pl_module, inputs, candidates=("dense", "condensed"), warmup=0, repeats=1)
        rows = [replace(row, chosen="condensed") if "condensed" in row.times else row for row in timed.report.rows]
        return rebuild_plan(pl_module, replace(timed.report, rows=rows))


def fit(
    module: pl.LightningModule,
    accelerate: AccelerateCallback,
    tmp_path: Path,
    data: Callable[[int], DataLoader],
    logger: Logger | bool = False,
) -> tuple[pl.Trainer, KeepMaskedDense]:
    torch.manual_seed(0)
    keep = KeepMaskedDense()
    trainer = pl.Trainer(
        max_steps=2, callbacks=[SRigLCallback(), ModelCheckpoint(monitor="val_loss"), keep, accelerate],
        logger=logger, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, data(0), data(1))
    return trainer, keep


def outputs(model: nn.Module, data: DataLoader) -> Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(*batch) for batch in data])


def ran_the_op(model: nn.Module, data: DataLoader) -> bool:
    with torch.autograd.profiler.profile() as profile:
        outputs(model, data)
    return the_op_ran(profile)


def test_default_arguments_time_the_attention_and_keep_the_outputs(tmp_path: Path) -> None:
    module, accelerate = Bert(), AccelerateCallback(verbose=False)
    _, keep = fit(module, accelerate, tmp_path, batches)
    assert set(accelerate.report.attention) == {"model"}
    kept = accelerate.report.attention["model"]
    assert kept in ATTENTION_CANDIDATES
    assert module.model.config._attn_implementation == (HF_IMPLEMENTATION if kept == "lightning_srigl" else "sdpa")
    assert ran_the_op(module, batches(2)) is (kept == "lightning_srigl")
    torch.testing.assert_close(outputs(module, batches(2)), outputs(keep.model, batches(2)), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def on_the_op(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.Trainer, Bert, KeepMaskedDense, OpAttention]:
    module, accelerate = Bert(), OpAttention(verbose=False)
    trainer, keep = fit(module, accelerate, tmp_path_factory.mktemp("bert"), batches)
    return trainer, module, keep, accelerate


def test_a_hugging_face_model_is_timed_on_its_recorded_call_and_switched_to_the_op(on_the_op) -> None:
    _, module, keep, accelerate = on_the_op
    (call,) = accelerate.calls.values()  # the last batch of the fit, given to BertModel as keywords
    assert set(accelerate.calls) == {"model"} and set(call.kwargs) == {"input_ids", "attention_mask"}
    assert accelerate.report.attention == {"model": "lightning_srigl"}
    assert "attention on lightning_srigl::attention: model" in accelerate.report.summary()
    assert module.model.config._attn_implementation == HF_IMPLEMENTATION and ran_the_op(module, batches(2))
    torch.testing.assert_close(outputs(module, batches(2)), outputs(keep.model, batches(2)), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_of_the_fit_loads_onto_the_op_and_restore_dense_gives_torch_s_attention(on_the_op) -> None:
    trainer, module, keep, _ = on_the_op
    (metrics,) = trainer.test(module, batches(2), ckpt_path="best", verbose=False)
    assert module.model.config._attn_implementation == HF_IMPLEMENTATION and ran_the_op(module, batches(2))
    best = copy.deepcopy(keep.model)  # the masked dense model with the checkpoint's weights
    best.load_state_dict(torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)["state_dict"])
    expected = outputs(best, batches(2))
    torch.testing.assert_close(outputs(module, batches(2)), expected, rtol=1e-4, atol=1e-4)
    assert metrics["test_loss"] == pytest.approx(float(expected.square().mean()), rel=1e-4)
    restore_dense(module)
    assert module.model.config._attn_implementation == "sdpa" and not ran_the_op(module, batches(2))
    torch.testing.assert_close(outputs(module, batches(2)), expected, rtol=1e-4, atol=1e-4)


def test_compile_runs_the_op_inside_the_compiled_graph(tmp_path: Path) -> None:
    module, accelerate = Bert(), OpAttention(verbose=False, compile=True)
    _, keep = fit(module, accelerate, tmp_path, batches)
    assert accelerate.report.attention == {"model": "lightning_srigl"}
    assert any("forward" in vars(m) for m in module.modules())  # a module holding the swapped layers is compiled
    # compiled with fullgraph=True: a graph break would raise
    torch.testing.assert_close(outputs(module, batches(2)), outputs(keep.model, batches(2)), rtol=1e-4, atol=1e-4)
    assert ran_the_op(module, batches(2))


def test_the_recorded_call_is_resized_to_batch_size_and_the_choice_is_logged(tmp_path: Path) -> None:
    module, accelerate = Bert(), OpAttention(verbose=False, batch_size=6)  # the fit's batches hold 4
    fit(module, accelerate, tmp_path, batches, logger=CSVLogger(tmp_path))
    kwargs = accelerate.calls["model"].kwargs
    assert kwargs["input_ids"].shape == kwargs["attention_mask"].shape == (6, 12)
    (hparams,) = tmp_path.rglob("hparams.yaml")
    assert "accelerate/model/attention: lightning_srigl" in hparams.read_text()


class SaveAttention(Callback):
    """Listed after the AccelerateCallback: each rank writes the attention it ended on to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: Path, accelerate: AccelerateCallback) -> None:
        self.folder, self.accelerate = folder, accelerate

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            "report": self.accelerate.report.attention,
            "implementation": pl_module.model.config._attn_implementation,
            "timed": hasattr(self.accelerate, "calls"),
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated")
def test_the_other_ddp_rank_installs_the_attention_rank_zero_chose(tmp_path: Path) -> None:
    module, accelerate = Bert(), OpAttention(verbose=False)
    # fork, not spawn: spawn pickles tensors through shared-memory file descriptors, unavailable in some sandboxes.
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="fork", process_group_backend="gloo"),
        max_steps=2, callbacks=[SRigLCallback(), accelerate, SaveAttention(tmp_path, accelerate)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, batches(0))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [rank["timed"] for rank in ranks] == [True, False]  # rank 1 installs the broadcast choice
    assert all(rank["report"] == {"model": "lightning_srigl"} for rank in ranks)
    assert all(rank["implementation"] == HF_IMPLEMENTATION for rank in ranks)


def test_fast_attention_false_leaves_attention_alone(tmp_path: Path) -> None:
    module, accelerate = Bert(), OpAttention(verbose=False, fast_attention=False)
    fit(module, accelerate, tmp_path, batches)
    assert accelerate.report.attention == {} and not hasattr(accelerate, "calls")
    assert module.model.config._attn_implementation == "sdpa" and not ran_the_op(module, batches(2))


def test_fast_attention_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="fast_attention must be True or False"):
        AccelerateCallback(fast_attention="yes")


class Encoder(SquareLoss):
    """Tokens through ``nn.MultiheadAttention`` with padding and a linear head (``accelerate()``'s test model)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AttentionThenLinear()

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        return self.net(x, padding)


def tokens(seed: int) -> DataLoader:
    """8 sequences of 10 tokens of width 32, the last 3 of every other one padding, in batches of 4."""
    x = torch.randn(8, 10, 32, generator=torch.Generator().manual_seed(seed))
    padding = torch.zeros(8, 10, dtype=torch.bool)
    padding[::2, 7:] = True
    return DataLoader(TensorDataset(x, padding), batch_size=4)


def test_a_condensed_multihead_attention_is_switched_to_the_op_also_after_a_checkpoint_load(tmp_path: Path) -> None:
    module, accelerate = Encoder(), CondensedOpAttention(verbose=False)
    trainer, keep = fit(module, accelerate, tmp_path, tokens)
    assert isinstance(module.net.attn, ProjectedAttention) and module.net.attn.fast_attention
    assert accelerate.report.attention == {"net.attn": "lightning_srigl"}
    assert ran_the_op(module, tokens(2))
    torch.testing.assert_close(outputs(module, tokens(2)), outputs(keep.model, tokens(2)), rtol=1e-4, atol=1e-4)
    first = module.net.attn
    trainer.test(module, tokens(2), ckpt_path="best", verbose=False)  # the dense attention back, then rebuilt
    assert module.net.attn is not first and isinstance(module.net.attn, ProjectedAttention)
    assert module.net.attn.fast_attention and ran_the_op(module, tokens(2))
    restore_dense(module)
    assert isinstance(module.net.attn, nn.MultiheadAttention) and not ran_the_op(module, tokens(2))
