"""``accelerate()`` puts attention on ``lightning_srigl::attention`` where timing says it is faster: Hugging Face
BERT, ViT and GPT-2 (from small configs, no downloads) and ``ProjectedAttention``; outputs unchanged (1e-4), one graph
under ``torch.compile``, ``restore_dense`` switches back."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.attention import HF_IMPLEMENTATION, attention_sites, hf_attention_forward
from lightning_srigl.acceleration.swap import restore_dense
from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.kernels.compiled import export_package, graph_breaks, load_package
from lightning_srigl.masking import bind_masks
from lightning_srigl.timing import Timing

transformers = pytest.importorskip("transformers")


def favouring(*winners: str) -> Callable[[Mapping[str, Callable[[], object]]], dict[str, Timing]]:
    """A timer under which the ``winners`` are twice as fast as every other candidate (without "condensed" among
    them, sparse layers keep dense)."""
    return lambda calls: {name: Timing(1.0, 1.0) if name in winners else Timing(2.0, 2.0) for name in calls}


def constant_fan_in(linear: nn.Linear, keep: int | None = None, seed: int = 0) -> Tensor:
    """A ``(out, in)`` mask with ``keep`` (default a quarter of the inputs) active inputs per output."""
    keep = keep or linear.in_features // 4
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(linear.out_features, linear.in_features, generator=generator)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, dim=1).indices, True)


def sparse(model: nn.Module, name: str) -> nn.Module:
    """``model`` in eval mode with a constant fan-in mask on the linear layer ``name`` (what makes it acceleratable)."""
    linear = model.get_submodule(name)
    weight = linear.weight
    # transformers' Conv1D (GPT-2) stores its weight (in, out)
    out, inp = weight.shape if isinstance(linear, nn.Linear) else weight.shape[::-1]
    mask = constant_fan_in(nn.Linear(inp, out))
    mask = mask if isinstance(linear, nn.Linear) else mask.T
    with torch.no_grad():
        weight.mul_(mask)
    bind_masks(model, {f"{name}.weight": mask})
    return model.eval()


def bert() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64,
    )  # fmt: skip
    ids = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0))
    padding = torch.ones(2, 21, dtype=torch.long)
    padding[1, 15:] = 0
    model = sparse(transformers.BertModel(config), "encoder.layer.0.intermediate.dense")
    return model, (ids, padding)


def vit() -> tuple[nn.Module, Tensor]:
    config = transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=4
    )
    model = sparse(transformers.ViTModel(config), "layers.0.mlp.fc1")
    return model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def gpt2() -> tuple[nn.Module, Tensor]:
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=64, n_positions=64)
    model = sparse(transformers.GPT2LMHeadModel(config), "transformer.h.0.mlp.c_fc")  # Conv1D: a sparse kind too
    return model, torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(0))


MODELS = {"bert": bert, "vit": vit, "gpt2": gpt2}


def first_tensor(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]


def run(model: nn.Module, example: object) -> Tensor:
    with torch.no_grad():
        return first_tensor(model(*example) if isinstance(example, tuple) else model(example))


def ran_the_op(model: nn.Module, example: object) -> bool:
    with torch.autograd.profiler.profile() as profile:
        run(model, example)
    return the_op_ran(profile)


def the_op_ran(profile: torch.autograd.profiler.profile) -> bool:
    """Whether ``profile`` saw the attention op: the Python op, or a C++ variant's called directly (eagerly, and
    in compiled graphs)."""
    return any(re.fullmatch(r"lightning_srigl(_\w+)?::attention", event.name) for event in profile.function_events)


@pytest.mark.parametrize("name", MODELS)
def test_hf_models_switch_to_the_op_and_keep_their_outputs(name: str) -> None:
    model, example = MODELS[name]()
    expected = run(copy.deepcopy(model), example)
    report = accelerate(model, example, timer=favouring("lightning_srigl"), model_repeats=0, verbose=False)
    assert report.attention == {"": "lightning_srigl"}
    assert model.config._attn_implementation == HF_IMPLEMENTATION
    assert transformers.AttentionInterface()[HF_IMPLEMENTATION] is hf_attention_forward
    assert ran_the_op(model, example)
    torch.testing.assert_close(run(model, example), expected, rtol=1e-4, atol=1e-4)
    assert graph_breaks(model, example) == 0
    restore_dense(model)
    assert model.config._attn_implementation == "sdpa" and not ran_the_op(model, example)


def test_a_saved_hf_model_on_the_op_runs_in_a_process_that_imported_nothing_of_the_package(tmp_path: Path) -> None:
    """The model names its attention function by a string that transformers looks up in a registry of the running
    process: a model saved whole and loaded in a fresh process registers it as it unpickles (it raised KeyError
    "`lightning_srigl` is not a valid attention implementation" at its first call)."""
    model, example = gpt2()
    accelerate(model, example, timer=favouring("lightning_srigl"), model_repeats=0, verbose=False)
    assert model.config._attn_implementation == HF_IMPLEMENTATION
    assert not any(type(m).__module__.startswith("lightning_srigl") for m in model.modules())  # its layers kept dense
    torch.save({"model": model, "example": example, "expected": run(model, example)}, tmp_path / "model.pt")
    script = (
        "import sys, torch\n"
        "saved = torch.load(sys.argv[1], weights_only=False)\n"
        "with torch.no_grad():\n"
        "    logits = saved['model'](saved['example']).logits\n"
        "torch.testing.assert_close(logits, saved['expected'], rtol=1e-4, atol=1e-4)\n"
        "print(saved['model'].config._attn_implementation)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == HF_IMPLEMENTATION
    restore_dense(model)  # back on torch's attention, the model holds nothing of the package
    assert not any(type(v).__module__.startswith("lightning_srigl") for v in vars(model).values())


def test_hf_model_keeps_torch_attention_where_it_times_faster() -> None:
    model, example = gpt2()
    report = accelerate(model, example, timer=favouring("sdpa"), model_repeats=0, verbose=False)
    assert report.attention == {"": "sdpa"} and model.config._attn_implementation == "sdpa"
    assert not ran_the_op(model, example)


def test_fast_attention_false_leaves_attention_alone() -> None:
    model, example = vit()
    report = accelerate(
        model, example, timer=favouring("lightning_srigl"), model_repeats=0, verbose=False, fast_attention=False
    )
    assert report.attention == {} and model.config._attn_implementation == "sdpa"


def test_eager_attention_is_not_a_site() -> None:
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=16, patch_size=4, attn_implementation="eager")  # fmt: skip
    assert attention_sites(transformers.ViTModel(config)) == {}


def test_compiled_bert_runs_the_op_in_one_graph() -> None:
    model, example = bert()
    expected = run(copy.deepcopy(model), example)
    report = accelerate(
        model, example, timer=favouring("lightning_srigl"), model_repeats=0, verbose=False, compile=True
    )
    assert report.attention == {"": "lightning_srigl"} and report.compile_seconds is not None
    torch.testing.assert_close(run(model, example), expected, rtol=1e-4, atol=1e-4)
    assert "attention on lightning_srigl::attention: model" in report.summary()


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 32)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        return self.head(self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0])


def sparse_encoder() -> Encoder:
    """An `Encoder` in eval mode whose attention's input projection has a constant fan-in mask."""
    torch.manual_seed(0)
    model = Encoder().eval()
    mask = constant_fan_in(nn.Linear(32, 96), 8)
    with torch.no_grad():
        model.attn.in_proj_weight.mul_(mask)
    bind_masks(model, {"attn.in_proj_weight": mask})
    return model


@pytest.mark.parametrize(("winner", "fast"), [("lightning_srigl", True), ("sdpa", False)])
def test_projected_attention_runs_the_op_where_it_times_faster(winner: str, fast: bool) -> None:
    model = sparse_encoder()
    padding = torch.zeros(3, 10, dtype=torch.bool)
    padding[0, 7:] = True
    example = (torch.randn(3, 10, 32), padding)
    expected = run(copy.deepcopy(model), example)
    report = accelerate(model, example, timer=favouring("condensed", winner), model_repeats=0, verbose=False)
    assert isinstance(model.attn, ProjectedAttention) and model.attn.fast_attention is fast
    assert report.attention == {"attn": winner} and ran_the_op(model, example) is fast
    torch.testing.assert_close(run(model, example), expected, rtol=1e-4, atol=1e-4)
    restore_dense(model)
    assert isinstance(model.attn, nn.MultiheadAttention)


class Chain(nn.Module):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(sparse_encoder() for _ in range(count))

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        for encoder in self.encoders:
            x = encoder(x, padding)
        return x


def test_projected_attention_layers_of_one_shape_are_timed_once() -> None:
    model = Chain(3).eval()
    timed: list[set[str]] = []
    favour = favouring("condensed", "lightning_srigl")

    def timer(calls: Mapping[str, Callable[[], object]]) -> dict[str, Timing]:
        timed.append(set(calls))
        return favour(calls)

    example = (torch.randn(2, 10, 32), torch.zeros(2, 10, dtype=torch.bool))
    report = accelerate(model, example, timer=timer, model_repeats=0, verbose=False)
    assert report.attention == {f"encoders.{i}.attn": "lightning_srigl" for i in range(3)}
    assert sum("lightning_srigl" in names for names in timed) == 1


def test_an_aot_package_of_a_model_on_the_op_gives_its_outputs(tmp_path) -> None:
    model = sparse_encoder()
    example = (torch.randn(2, 10, 32), torch.zeros(2, 10, dtype=torch.bool))
    accelerate(model, example, timer=favouring("condensed", "lightning_srigl"), model_repeats=0, verbose=False)
    assert model.attn.fast_attention
    package = load_package(export_package(model, example, tmp_path / "model.pt2"))
    with torch.no_grad():
        torch.testing.assert_close(package(*example), run(model, example), rtol=1e-5, atol=1e-5)


class CachedDecoder(nn.Module):
    """``token (B, 1) -> logits``: GPT-2 decoding one token after a prompt whose KV cache it keeps between calls
    (prefilled at the first call), cropped back to the prompt after each (the benchmarks' decode step)."""

    def __init__(self, model: nn.Module, prompt: Tensor) -> None:
        super().__init__()
        self.model, self.prompt, self.cache = model, prompt, None

    def forward(self, token: Tensor) -> Tensor:
        if self.cache is None:
            self.cache = self.model(self.prompt, use_cache=True).past_key_values
        logits = self.model(token, past_key_values=self.cache, use_cache=True).logits
        self.cache.crop(-1)
        return logits


def test_timing_the_attention_leaves_a_kv_cache_its_recorded_call_holds_as_it_was() -> None:
    """The attention is timed on a replay of the model's recorded call, whose KV cache the forward extends in place:
    the replay works on a copy, so the decoder's cache keeps the prompt's length and its outputs stay exact."""
    model, prompt = gpt2()
    decoder, token = CachedDecoder(model, prompt[:1]), torch.tensor([[5]])
    expected = run(copy.deepcopy(decoder), token)
    report = accelerate(decoder, token, model_repeats=0, verbose=False)
    assert set(report.attention) == {"model"}
    assert decoder.cache.get_seq_length() == prompt.shape[1]
    torch.testing.assert_close(run(decoder, token), expected, rtol=1e-4, atol=1e-4)
