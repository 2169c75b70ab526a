"""GPT-2 from a GPT2Config (Hugging Face transformers, an optional test extra): trained with SRigLCallback(),
accelerated with AccelerateCallback, saved with save_condensed and loaded in a fresh process."""

import copy
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch

from lightning_srigl import SRigLCallback
from lightning_srigl.callbacks import AccelerateCallback
from lightning_srigl.condensed import CondensedLinear, save_condensed
from lightning_srigl.condensed.kinds import hf_conv1d_condensed
from lightning_srigl.masking import masked_weights, neuron_major

transformers = pytest.importorskip("transformers")


class LanguageModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=4,
            vocab_size=64,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            use_cache=False,
        )
        self.model = transformers.GPT2LMHeadModel(config)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class KeepMaskedDense(pl.Callback):
    """A copy of the masked dense model as fit ends, before AccelerateCallback swaps its layers."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.model = copy.deepcopy(pl_module.model).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    module = LanguageModel()
    embedding = module.model.transformer.wte.weight.detach().clone()
    keep = KeepMaskedDense()
    trainer = pl.Trainer(
        max_steps=6, callbacks=[SRigLCallback(delta_t=2), keep, AccelerateCallback(verbose=False)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path_factory.mktemp("gpt2"),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="lm_head.weight'] are tied weights"):
        trainer.fit(module, torch.utils.data.DataLoader(torch.randint(0, 64, (24, 12)), batch_size=4))
    return module, keep.model, embedding


def test_every_block_conv1d_has_a_constant_fan_in_mask_and_the_tied_embedding_is_untouched(trained):
    module, dense, embedding = trained
    masked = {m.fqn: m for m in masked_weights(dense)}
    blocks = [
        f"transformer.h.{i}.{name}.weight"
        for i in range(2)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert sorted(masked) == sorted(blocks)
    for fqn in blocks:
        rows = neuron_major(masked[fqn].module, masked[fqn].mask)
        fan_in = rows.sum(dim=1)
        active = fan_in[fan_in > 0]
        assert rows.shape[0] == masked[fqn].module.nf and bool((active == active[0]).all()), fqn
        assert float(rows.float().mean()) < 0.5, fqn
    assert dense.lm_head.weight is dense.transformer.wte.weight
    assert bool((dense.transformer.wte.weight != 0).all())
    assert not torch.equal(dense.transformer.wte.weight, embedding)  # trained, but never masked or re-initialised
    assert module.model.lm_head.weight is module.model.transformer.wte.weight  # the accelerated model keeps the tie


def test_greedy_generation_after_acceleration_equals_the_masked_dense_model(trained):
    module, dense, _ = trained
    accelerated = module.model.eval()
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        actual = accelerated.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(actual, expected)
    condensed = copy.deepcopy(dense)  # every block projection condensed, whatever the timing chose
    for masked in masked_weights(condensed):
        parent, _, child = masked.module_name.rpartition(".")
        setattr(condensed.get_submodule(parent), child, hf_conv1d_condensed(masked.module, masked.mask))
    assert sum(isinstance(m, CondensedLinear) for m in condensed.modules()) == 8
    with torch.no_grad():
        assert torch.equal(condensed.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0), expected)


def test_saved_model_runs_at_two_batch_sizes_and_two_lengths_in_a_fresh_process(trained, tmp_path):
    module, _, _ = trained
    model = module.model.eval()
    assert save_condensed(model, tmp_path / "gpt2.pt", example_input=torch.randint(0, 64, (2, 7))) == "exported"
    inputs = {f"{b}x{t}": torch.randint(0, 64, (b, t)) for b in (1, 4) for t in (3, 11)}
    with torch.no_grad():
        expected = {name: model(ids).logits for name, ids in inputs.items()}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        from lightning_srigl.condensed import load_condensed
        model = load_condensed({str(tmp_path / "gpt2.pt")!r}, trust_exported=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save({{name: model(ids)["logits"] for name, ids in inputs.items()}}, {str(tmp_path / "logits.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    logits = torch.load(tmp_path / "logits.pt")
    for name, y in expected.items():
        torch.testing.assert_close(logits[name], y, atol=1e-4, rtol=1e-4)
