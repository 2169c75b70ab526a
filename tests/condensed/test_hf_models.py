"""Hugging Face ViT, BERT, Llama and GPT-2 from small configs (no downloads), as a new user runs them:
trained a few steps with ``SRigLCallback()``'s defaults, accelerated by ``AccelerateCallback`` (every
layer that can be condensed is, whatever the timing would choose), saved with ``save_condensed`` from a
batch-1 example and loaded in a fresh process, where they run at batch 3 and another sequence length."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn

from lightning_srigl import SRigLCallback
from lightning_srigl.acceleration.accelerate import AccelerationPlan, plan_acceleration, rebuild_plan
from lightning_srigl.callbacks import AccelerateCallback
from lightning_srigl.condensed import CondensedConv2d, CondensedLinear, save_condensed

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
VOCAB = 64


def vit() -> nn.Module:
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4,
        num_labels=5,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    return transformers.BertForMaskedLM(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def tokens(batch: int, length: int, seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def images(batch: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# name -> (build, inputs(batch, length) ; ViT's length is fixed by its position embeddings)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], Tensor]]] = {
    "vit": (vit, lambda batch, length: images(batch, seed=length)),
    "bert": (bert, tokens),
    "llama": (llama, tokens),
    "gpt2": (gpt2, tokens),
}


class Wrapper(pl.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self.model(batch).logits.square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class KeepMaskedDense(pl.Callback):
    """A copy of the masked dense model as fit ends, before AccelerateCallback swaps its layers."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.model = copy.deepcopy(pl_module.model).eval()


class CondenseWhereExact(AccelerateCallback):
    """AccelerateCallback that installs the condensed candidate wherever it is exact (the timing's choice on
    a tiny model would often be the dense layer, which would leave the condensed layers untested)."""

    def choose(self, pl_module: pl.LightningModule, inputs: dict[str, Tensor]) -> AccelerationPlan:
        timed = plan_acceleration(pl_module, inputs, candidates=("dense", "condensed"), warmup=0, repeats=1)
        rows = [replace(row, chosen="condensed") if "condensed" in row.times else row for row in timed.report.rows]
        return rebuild_plan(pl_module, replace(timed.report, rows=rows))


@functools.cache
def train(name: str) -> tuple[nn.Module, nn.Module]:
    """(accelerated model, masked dense copy) of model ``name``, trained 4 steps with SRigLCallback()'s defaults."""
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    module = Wrapper(build())
    keep = KeepMaskedDense()
    trainer = pl.Trainer(
        max_steps=4, callbacks=[SRigLCallback(), keep, CondenseWhereExact(verbose=False)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(prefix=f"hf-{name}-"),
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(inputs(16, 12), batch_size=4))
    return module.model.eval(), keep.model


@pytest.fixture(params=list(MODELS))
def trained(request) -> tuple[str, nn.Module, nn.Module]:
    return (request.param, *train(request.param))


def test_accelerated_model_equals_the_masked_dense_model(trained) -> None:
    name, model, dense = trained
    condensed = [m for m in model.modules() if isinstance(m, (CondensedLinear, CondensedConv2d))]
    assert len(condensed) >= 8, name  # every block's projections
    if name == "vit":  # transformers reads projection.weight.dtype: the condensed conv answers it
        projection = model.vit.embeddings.patch_embeddings.projection
        assert isinstance(projection, CondensedConv2d) and projection.weight.dtype == torch.float32
    x = MODELS[name][1](2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, dense(x).logits, atol=1e-5, rtol=1e-5)


def test_saved_from_batch_1_runs_at_batch_3_and_another_length_in_a_fresh_process(trained, tmp_path) -> None:
    name, model, _ = trained
    inputs = MODELS[name][1]
    assert save_condensed(model, tmp_path / "model.pt", example_input=inputs(1, 7)) == "exported"
    cases = {"3x7": inputs(3, 7), "3x11": inputs(3, 11), "1x5": inputs(1, 5)}
    with torch.no_grad():
        expected = {case: model(x).logits for case, x in cases.items()}
    torch.save(cases, tmp_path / "inputs.pt")
    keyword = "pixel_values" if name == "vit" else "input_ids"
    script = textwrap.dedent(f"""
        import torch
        from lightning_srigl.condensed import load_condensed
        model = load_condensed({str(tmp_path / "model.pt")!r}, trust_exported=True)
        cases = torch.load({str(tmp_path / "inputs.pt")!r})
        out = {{case: model(x)["logits"] for case, x in cases.items()}}
        out["keyword"] = model({keyword}=cases["3x11"])["logits"]
        torch.save(out, {str(tmp_path / "logits.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=REPO)
    logits = torch.load(tmp_path / "logits.pt")
    for case, y in expected.items():
        torch.testing.assert_close(logits[case], y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["keyword"], expected["3x11"], atol=1e-5, rtol=1e-5)


def test_llama_greedy_generation_is_unchanged_by_acceleration() -> None:
    model, dense = train("llama")
    prompt = tokens(2, 5, seed=3)
    with torch.no_grad():
        expected = dense.generate(prompt, max_new_tokens=8, do_sample=False)
        actual = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(actual, expected)
