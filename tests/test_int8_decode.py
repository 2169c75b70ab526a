"""scripts/int8_decode.py's pieces on the tiny models: `CacheStep` is one decode step of the Hugging Face model with
its cache as tensors, and int8 acceleration quantizes every sparse layer of GPT-2 (``Conv1D``) and Llama."""

from __future__ import annotations

import copy
import runpy
from pathlib import Path

import pytest
import torch

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.model_timing import dense_reference
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
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
