"""save_condensed's exported format with the examples users pass: batch 1, a slice of a larger tensor, a
Hugging Face model with a cache, inputs by keyword. Saved programs run in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_srigl.condensed import CondensedLinear, load_condensed, save_condensed

REPO = Path(__file__).resolve().parents[2]


class TokenModel(nn.Module):
    """A custom module (so it is exported) over token ids ``(B, T)`` -> ``{"logits": (B, T, 16)}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 12)
        mask = torch.zeros(16, 12, dtype=torch.bool).scatter_(1, torch.rand(16, 12).argsort(1)[:, :3], True)
        self.head = CondensedLinear.from_dense_weight(torch.randn(16, 12), mask, torch.randn(16))

    def forward(self, input_ids: Tensor) -> dict[str, Tensor]:
        hidden = self.embed(input_ids)
        return {"logits": self.head(hidden - hidden.mean(dim=1, keepdim=True))}


def run_fresh(path: Path, cases: dict[str, object], tmp_path: Path) -> dict[str, Tensor]:
    """``{case: logits}`` of the file's model in a new process; a case is a tensor (positional) or a dict
    (keyword inputs)."""
    torch.save(cases, tmp_path / "cases.pt")
    script = textwrap.dedent(f"""
        import torch
        from lightning_srigl.condensed import load_condensed
        model = load_condensed({str(path)!r}, trust_exported=True)
        cases = torch.load({str(tmp_path / "cases.pt")!r})
        out = {{}}
        for case, x in cases.items():
            out[case] = (model(**x) if isinstance(x, dict) else model(x))["logits"]
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=REPO)
    return torch.load(tmp_path / "out.pt")


def test_a_batch_1_example_gives_a_program_for_every_batch_and_length_and_keyword_inputs(tmp_path) -> None:
    model = TokenModel().eval()
    assert save_condensed(model, tmp_path / "m.pt", example_input=torch.randint(0, 16, (1, 6))) == "exported"
    cases: dict[str, object] = {f"{b}x{t}": torch.randint(0, 16, (b, t)) for b, t in ((1, 6), (3, 6), (4, 9))}
    cases["keyword"] = {"input_ids": cases["4x9"]}
    out = run_fresh(tmp_path / "m.pt", cases, tmp_path)
    with torch.no_grad():
        for case, x in cases.items():
            expected = model(**x) if isinstance(x, dict) else model(x)
            torch.testing.assert_close(out[case], expected["logits"])


def test_a_sliced_example_is_captured_as_a_compact_copy(tmp_path) -> None:
    model = TokenModel().eval()
    parent = torch.randint(0, 16, (64, 512))
    save_condensed(model, tmp_path / "sliced.pt", example_input=parent[:2, :7])
    save_condensed(model, tmp_path / "compact.pt", example_input=parent[:2, :7].clone())
    # the parent (256 KB of int64) is not in the file: it is as large as one saved from a compact example
    assert (tmp_path / "sliced.pt").stat().st_size < (tmp_path / "compact.pt").stat().st_size + 4096
    cases = {"3x5": torch.randint(0, 16, (3, 5)), "2x7": parent[:2, :7].clone()}
    out = run_fresh(tmp_path / "sliced.pt", cases, tmp_path)
    with torch.no_grad():
        for case, x in cases.items():
            torch.testing.assert_close(out[case], model(x)["logits"])


def test_outputs_that_are_not_tensors_are_refused_naming_where(tmp_path) -> None:
    class WithState(nn.Module):
        def forward(self, x: Tensor) -> dict[str, object]:
            return {"y": x * 2, "state": object()}

    with pytest.raises(ValueError, match=r"returns a object at output\['state'\]"):
        save_condensed(WithState(), tmp_path / "m.pt", example_input=torch.randn(2, 3))


def test_keyword_inputs_with_wrong_names_are_refused(tmp_path) -> None:
    save_condensed(TokenModel().eval(), tmp_path / "m.pt", example_input=torch.randint(0, 16, (2, 4)))
    model = load_condensed(tmp_path / "m.pt", trust_exported=True)
    with pytest.raises(TypeError, match="takes 1 inputs \\(input_ids\\)"):
        model(ids=torch.randint(0, 16, (2, 4)))
    assert model.eval() is model and not model.training


def test_hugging_face_llama_with_its_cache_on_saves_and_keeps_the_cache_setting(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.config.use_cache
    assert save_condensed(model, tmp_path / "llama.pt", example_input=torch.randint(0, 32, (1, 5))) == "exported"
    assert model.config.use_cache  # restored after the capture
    cases = {"2x8": torch.randint(0, 32, (2, 8))}
    out = run_fresh(tmp_path / "llama.pt", cases, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(out["2x8"], model(cases["2x8"]).logits)
