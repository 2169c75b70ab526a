"""save_condensed / load_condensed for every inference layer accelerate can choose, at any batch and length."""

import subprocess
import sys
import textwrap

import torch
from torch import nn

from lightning_srigl.condensed import load_condensed, save_condensed
from lightning_srigl.condensed.accelerate import accelerate
from lightning_srigl.condensed.attention import ProjectedAttention
from lightning_srigl.condensed.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.masking import mask_of
from tests.condensed.conv_cases import assert_close_to_scale, masked_conv
from tests.condensed.test_accelerate_kinds import TinyEncoder, sparsify


def test_convolutions_and_csr_layers_save_as_a_spec(tmp_path):
    conv, mask, x = masked_conv((2, 3, 10, 10, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1))
    torch.manual_seed(0)
    conv1d = nn.Conv1d(8, 4, 3, padding=1)
    linear = nn.Linear(4 * 5 * 5, 6)
    model = nn.Sequential(
        CondensedConv2d.from_masked(conv, mask), nn.ReLU(), nn.Flatten(2),
        nn.Conv1d(8, 4, 3, padding=1), nn.Flatten(1),
        CSRLinear.from_masked(linear, torch.rand(6, 100) < 0.2),
    )  # fmt: skip
    fan_in = torch.zeros(4, 24, dtype=torch.bool)
    fan_in[:, :5] = True
    model[3] = CondensedConv1d.from_masked(conv1d, fan_in.view(4, 8, 3))
    assert save_condensed(model, tmp_path / "cnn.pt") == "spec"
    loaded = load_condensed(tmp_path / "cnn.pt")
    assert [type(m) for m in loaded] == [type(m) for m in model]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded(x[:1]), model(x[:1]))


def test_attention_with_condensed_projections_saves_as_a_spec(tmp_path):
    mha = sparsify(TinyEncoder()).attention
    masks = {"in_proj_weight": mask_of(mha, "in_proj_weight")}
    attention = ProjectedAttention.from_masked(mha, masks, mask_of(mha.out_proj, "weight"))
    assert save_condensed(attention, tmp_path / "attention.pt") == "spec"
    loaded = load_condensed(tmp_path / "attention.pt")
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, x, x)[0], attention(x, x, x)[0])


def test_an_exported_model_runs_at_other_batch_sizes_and_lengths_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = sparsify(TinyEncoder())
    accelerate(model, torch.randn(2, 6, 32), candidates=("dense", "condensed"), warmup=0, repeats=1, verbose=False)
    assert save_condensed(model, tmp_path / "encoder.pt", example_input=torch.randn(2, 6, 32)) == "exported"
    inputs = {f"{b}x{t}": torch.randn(b, t, 32) for b in (1, 3) for t in (5, 9)}
    with torch.no_grad():
        expected = {name: model(x) for name, x in inputs.items()}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        from lightning_srigl.condensed import load_condensed
        model = load_condensed({str(tmp_path / "encoder.pt")!r}, trust_exported=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save({{name: model(x) for name, x in inputs.items()}}, {str(tmp_path / "outputs.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    outputs = torch.load(tmp_path / "outputs.pt")
    for name, y in expected.items():
        assert_close_to_scale(outputs[name], y)
