"""A file written by the release before ``condensed/`` was split (0.1, layers named by module path) loads."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.condensed.layers.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.layers.csr import CSRLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.condensed.serialization import load_condensed, module_spec

DATA = Path(__file__).resolve().parent / "data"


def test_file_saved_before_the_layout_move_loads_and_computes_the_same() -> None:
    """``saved_before_layout.pt`` and its inputs/outputs were written by ``data/write_saved_before_layout.py``
    at commit b4e9d52 (types such as ``lightning_srigl.condensed.linear.CondensedLinear``)."""
    saved = torch.load(DATA / "saved_before_layout.pt", weights_only=True)
    assert (
        saved["spec"]["children"]["mlp"]["children"]["0"]["type"] == "lightning_srigl.condensed.linear.CondensedLinear"
    )
    model = load_condensed(DATA / "saved_before_layout.pt")
    io = torch.load(DATA / "saved_before_layout_io.pt", weights_only=True)
    assert isinstance(model["conv"][0], CondensedConv2d) and isinstance(model["conv1d"], CondensedConv1d)
    assert isinstance(model["mlp"][0], CondensedLinear) and isinstance(model["mlp"][2], CSRLinear)
    assert isinstance(model["attention"], ProjectedAttention)
    with torch.no_grad():
        torch.testing.assert_close(model["conv"](io["x"]), io["conv"])
        torch.testing.assert_close(model["conv1d"](io["y"]), io["conv1d"])
        torch.testing.assert_close(model["mlp"](io["z"]), io["mlp"])
        torch.testing.assert_close(
            model["attention"](io["q"], io["q"], io["q"], need_weights=False)[0], io["attention"]
        )


def test_files_name_layers_by_stable_names() -> None:
    spec = module_spec(
        torch.nn.Sequential(CondensedLinear.from_masked(torch.nn.Linear(4, 2), torch.ones(2, 4, dtype=torch.bool)))
    )
    assert spec["children"]["0"]["type"] == "lightning_srigl.CondensedLinear"
