"""save_condensed / load_condensed: safe formats that need only torch and lightning_srigl to load."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_srigl.condensed import CondensedLinear, load_condensed, save_condensed

REPO = Path(__file__).resolve().parents[2]


def condensed_layer(out: int, inp: int, fan_in: int, seed: int) -> CondensedLinear:
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(out, inp, generator=g), dim=1)[:, :fan_in]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, order, True)
    mask[::3] = False  # ablated neurons
    return CondensedLinear.from_dense_weight(torch.randn(out, inp, generator=g), mask, torch.randn(out, generator=g))


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(16),
        condensed_layer(24, 16, 4, seed=0),
        nn.GELU(),
        nn.Dropout(0.1),
        condensed_layer(8, 24, 6, seed=1),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),
    ).eval()


class Residual(nn.Module):
    """A custom module: its forward cannot be rebuilt from attributes, so it needs torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = condensed_layer(16, 16, 5, seed=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.layer(x))


def test_standard_module_tree_round_trips_as_spec(tmp_path):
    model = mlp()
    assert save_condensed(model, tmp_path / "mlp.pt") == "spec"
    loaded = load_condensed(tmp_path / "mlp.pt")
    assert isinstance(loaded[1], CondensedLinear) and loaded[1].indices.dtype == torch.int16
    assert not loaded.training
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bfloat16_model_keeps_its_dtype(tmp_path):
    model = mlp().to(torch.bfloat16)
    save_condensed(model, tmp_path / "bf16.pt")
    loaded = load_condensed(tmp_path / "bf16.pt")
    assert loaded[1].values.dtype == torch.bfloat16
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_custom_module_needs_example_input_then_exports(tmp_path):
    model = Residual().eval()
    with pytest.raises(ValueError, match="example_input"):
        save_condensed(model, tmp_path / "res.pt")
    x = torch.randn(3, 16)
    assert save_condensed(model, tmp_path / "res.pt", example_input=x) == "exported"
    with pytest.raises(ValueError, match="trust_exported=True"):  # torch.export.load unpickles
        load_condensed(tmp_path / "res.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_condensed(tmp_path / "res.pt", trust_exported=True)(x), model(x))


def test_rejects_files_not_written_by_save_condensed(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="save_condensed"):
        load_condensed(tmp_path / "other.pt")


def test_loads_in_a_fresh_process_with_only_torch_and_lightning_srigl(tmp_path):
    x = torch.randn(2, 16)
    model, residual = mlp(), Residual().eval()
    save_condensed(model, tmp_path / "mlp.pt")
    save_condensed(residual, tmp_path / "res.pt", example_input=x)
    with torch.no_grad():
        torch.save({"x": x, "mlp": model(x), "res": residual(x)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from lightning_srigl.condensed import load_condensed\n"
        "d = sys.argv[1]\n"
        "e = torch.load(d + '/expected.pt')\n"
        "with torch.no_grad():\n"
        "    for name in ('mlp', 'res'):\n"
        "        loaded = load_condensed(d + f'/{name}.pt', trust_exported=name == 'res')\n"
        "        torch.testing.assert_close(loaded(e['x']), e[name])\n"
        "assert 'lightning' not in sys.modules and 'tests' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
