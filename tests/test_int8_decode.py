"""scripts/int8_decode.py's pieces on the tiny models: `CacheStep` is one decode step of the Hugging Face model with
its cache as tensors, and int8 acceleration quantizes every sparse layer of GPT-2 (``Conv1D``) and Llama; compiled
(with the script's dynamic cache length), the int8 step decodes a growing cache without recompiling."""

from __future__ import annotations

import copy
import runpy
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.model_timing import dense_reference
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.kernels.compiled import eager_forward
from tests.condensed.test_int8_attention import int8_fastest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["gpt2", "llama_decode"])
def test_cache_step_decodes_one_token_and_int8_acceleration_quantizes_the_decoder(name: str) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "int8_decode.py"))
    cache_step, flat_cache = script["CacheStep"], script["flat_cache"]
    masked = script["hf_model"](name, True)
    dense = cache_step(dense_reference(masked)).eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, masked.config.vocab_size, (1, 12))
    with torch.no_grad():
        prefill = dense.model(prompt, use_cache=True)
        past = flat_cache(prefill.past_key_values)
        token = prefill.logits[:, -1:].argmax(-1)
        logits, *present = dense(token, *past)
        whole = dense.model(torch.cat([prompt, token], dim=1)).logits[:, -1:]
    torch.testing.assert_close(logits, whole, atol=1e-4, rtol=1e-4)
    assert len(present) == len(past) and all(t.shape[2] == 13 for t in present)
    int8 = cache_step(copy.deepcopy(masked)).eval()
    report = accelerate(int8, (token, *past), quantize="int8-condensed", timer=int8_fastest, verbose=False,
                        model_repeats=0)  # fmt: skip
    assert report.rows and all(row.chosen == "int8_condensed" for row in report.rows)
    assert sum(isinstance(m, Int8CondensedLinear) for m in int8.modules()) == len(report.rows)
    with torch.no_grad():
        out = int8(token, *past)[0]
    assert (out - logits).norm() / logits.norm() < 0.05
    tokens = script["greedy"](script["torch_step"](int8), token, past, 3)
    assert len(tokens) == 3 and all(0 <= t < masked.config.vocab_size for t in tokens)


def test_the_compiled_int8_decode_step_serves_every_cache_length_with_one_graph() -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "int8_decode.py"))
    masked = script["hf_model"]("llama_decode", True)
    dense = script["CacheStep"](dense_reference(masked)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        prefill = dense.model(torch.randint(0, masked.config.vocab_size, (1, 12)), use_cache=True)
    past = script["flat_cache"](prefill.past_key_values)
    token = prefill.logits[:, -1:].argmax(-1)
    int8 = script["CacheStep"](copy.deepcopy(masked)).eval()
    example = (token, *script["dynamic_length"](past))  # the script's example: the cache length marked dynamic
    # compiled as the script compiles it
    accelerate(int8, example, quantize="int8-condensed", timer=int8_fastest, verbose=False, model_repeats=0,
               compile=True, module_guards=False)  # fmt: skip
    assert any(isinstance(m, Int8CondensedLinear) for m in int8.modules())
    graphs = counters["stats"]["unique_graphs"]
    eager = eager_forward(int8)
    with torch.no_grad():
        for _ in range(4):  # the cache grows by one position a token
            logits, *present = int8(token, *past)
            expected, *expected_present = eager(token, *past)
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
            assert all(t.shape[2] == past[0].shape[2] + 1 for t in present)
            token, past = logits[:, -1:].argmax(-1), present
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile per token
