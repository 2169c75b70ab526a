"""Tampered condensed files and malformed layers are rejected with a clear error, never a crash.

The loading happens in a subprocess, so an out-of-bounds read in a kernel (a segfault) fails the test
instead of killing the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lightning_srigl.condensed import CondensedLinear, load_condensed, save_condensed
from lightning_srigl.condensed.csr import CSRLinear

REPO = Path(__file__).resolve().parents[2]


def condensed_model() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(8, 16, dtype=torch.bool).scatter_(1, torch.rand(8, 16, generator=g).argsort(1)[:, :4], True)
    mask[2] = False  # an ablated neuron
    layer = CondensedLinear.from_dense_weight(torch.randn(8, 16, generator=g), mask, torch.randn(8, generator=g))
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), layer).eval()


def _set(key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, Any]], None]:
    def edit(payload: dict[str, Any]) -> None:
        payload["state_dict"][key] = make(payload["state_dict"][key])

    return edit


def _set_type(path: tuple[str, ...], type_name: object) -> Callable[[dict[str, Any]], None]:
    def edit(payload: dict[str, Any]) -> None:
        spec = payload["spec"]
        for child in path:
            spec = spec["children"][child]
        spec["type"] = type_name

    return edit


def _widen(payload: dict[str, Any]) -> None:
    payload["spec"]["children"]["0"]["args"]["in_features"] = 10**12  # built on meta: no 4 TB allocation


TAMPERED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "index_out_of_range": (
        _set("2.indices", lambda t: t.index_fill(1, torch.tensor([3]), 16)),
        r"indices must lie in \[0, 16\)",
    ),
    "negative_index": (
        _set("2.indices", lambda t: t.index_fill(1, torch.tensor([0]), -1)),
        r"indices must lie in \[0, 16\)",
    ),
    "huge_index": (
        _set("2.indices", lambda t: t.int().index_fill(1, torch.tensor([3]), 2**31 - 1)),
        r"indices must lie in \[0, 16\)",
    ),
    "unsorted_indices": (_set("2.indices", lambda t: t.flip(1)), r"indices must increase strictly"),
    "row_out_of_range": (_set("2.active_rows", lambda t: t + 100), r"active_rows must lie in \[0, 8\)"),
    "values_wrong_shape": (
        _set("2.values", lambda t: torch.cat([t, t], dim=1)),
        r"indices has shape \(7, 4\).*\(7, 8\)",
    ),
    "float_indices": (_set("2.indices", lambda t: t.float()), r"indices must be int16 or int32"),
    "bias_wrong_shape": (_set("2.bias", lambda t: t[:3]), r"bias must be a \(8,\) tensor"),
    "linear_wrong_shape": (_set("0.weight", lambda t: t[:, :5]), r"do not fit the architecture"),
    "huge_linear": (_widen, r"do not fit the architecture"),
    "function_as_type": (
        _set_type(("2",), "lightning_srigl.condensed.serialization.load_condensed"),
        r"refusing to build",
    ),
    "builtin_as_type": (_set_type(("1",), "builtins.eval"), r"refusing to build 'builtins.eval'"),
    "non_string_type": (_set_type((), 42), r"refusing to build 42"),
    "bias_deleted": (lambda payload: payload["state_dict"].pop("2.bias"), r"bias=True but 2.bias is missing"),
    "noncontiguous_values": (_set("2.values", lambda t: t.t().contiguous().t()), r"values must be contiguous"),
}


def test_tampered_files_are_rejected_with_a_clear_error_in_a_subprocess(tmp_path: Path) -> None:
    save_condensed(condensed_model(), tmp_path / "good.pt")
    for name, (edit, _) in TAMPERED.items():
        payload = torch.load(tmp_path / "good.pt", weights_only=True)
        edit(payload)
        torch.save(payload, tmp_path / f"{name}.pt")
    script = (
        "import sys, torch\n"
        "from lightning_srigl.condensed import load_condensed\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        model = load_condensed(path)\n"
        "        with torch.no_grad():\n"
        "            model(torch.randn(3, 16))\n"
        "        print(path, 'LOADED', flush=True)\n"
        "    except ValueError as error:\n"
        "        print(path, 'REJECTED', str(error).replace(chr(10), ' '), flush=True)\n"
    )
    paths = [str(tmp_path / "good.pt")] + [str(tmp_path / f"{name}.pt") for name in TAMPERED]
    result = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, f"the loader crashed (signal {-result.returncode}): {result.stderr[-2000:]}"
    outcome = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert outcome[str(tmp_path / "good.pt")] == "LOADED"
    for name, (_, message) in TAMPERED.items():
        line = outcome[str(tmp_path / f"{name}.pt")]
        assert line.startswith("REJECTED"), (name, line)
        assert __import__("re").search(message, line), (name, line)


def test_layer_constructors_validate_once_and_loading_state_revalidates() -> None:
    layer = condensed_model()[2]
    args = (layer.values, layer.indices, layer.active_rows, layer.bias, 16, 8)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 12\)"):
        CondensedLinear(*args[:4], 12, 8)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        CondensedLinear(*args[:4], 0, 8)
    with pytest.raises(ValueError, match=r"int16 indices cannot address in_features=40000"):
        CondensedLinear(*args[:4], 40000, 8)
    with pytest.raises(ValueError, match="bias is torch.float64"):
        CondensedLinear(*args[:3], layer.bias.double(), 16, 8)
    tampered = {**layer.state_dict(), "indices": layer.indices.index_fill(1, torch.tensor([0]), -1)}
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
        layer.load_state_dict(tampered)
    bad_csr = torch.sparse_csr_tensor(
        torch.tensor([0, 1, 2]), torch.tensor([0, 9]), torch.ones(2), (2, 4), check_invariants=False
    )
    with pytest.raises(ValueError, match="the CSR weight is corrupt"):
        CSRLinear(bad_csr, None)


def test_unreadable_files_raise_value_error_without_advising_weights_only_false(tmp_path: Path) -> None:
    save_condensed(condensed_model(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "text": b"hello\n" * 50}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not a condensed model file") as caught:
            load_condensed(tmp_path / name)
        assert "weights_only=False" not in str(caught.value), name
    with pytest.raises(FileNotFoundError):
        load_condensed(tmp_path / "missing.pt")


def test_active_rows_of_another_integer_dtype_load_as_int64_and_run_at_every_batch(tmp_path: Path) -> None:
    model = condensed_model()
    save_condensed(model, tmp_path / "good.pt")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["state_dict"]["2.active_rows"] = payload["state_dict"]["2.active_rows"].to(torch.int16)
    torch.save(payload, tmp_path / "int16_rows.pt")
    loaded = load_condensed(tmp_path / "int16_rows.pt")
    assert loaded[2].active_rows.dtype == torch.int64
    x = torch.randn(3, 16)
    with torch.no_grad():
        for batch in (1, 3):
            torch.testing.assert_close(loaded(x[:batch]), model(x[:batch]))
    layer = condensed_model()[2]
    with pytest.raises(ValueError, match="active_rows must be int64"):
        layer.load_state_dict({**layer.state_dict(), "active_rows": layer.active_rows.to(torch.int16)}, assign=True)
