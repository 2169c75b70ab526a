"""scripts/bench_peers.py: runs end to end on a tiny model; engines absent are columns that say so."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from lightning_srigl.benchmark.onnx_int8 import INT8_TOLERANCE
from lightning_srigl.benchmark.peers import ENGINES, peers_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_runs_and_marks_the_engines_it_cannot_run(tmp_path: Path) -> None:
    doc = tmp_path / "peers.md"
    command = [
        sys.executable, "scripts/bench_peers.py", "--smoke", "--models", "resnet50", "--batches", "1", "--threads", "1",
        "--engines", "ours_eager", "deepsparse", "--seconds", "0.01", "--out", str(tmp_path), "--doc", str(doc),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_SRIGL_DEEPSPARSE_PYTHON"}
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
    with (tmp_path / "peers.csv").open() as handle:
        rows = {r["engine"]: r for r in csv.DictReader(handle)}
    ours = rows["ours_eager"]
    assert ours["status"] == "ok" and ours["exact"] == "True" and float(ours["max_diff"]) <= 1e-4
    assert float(ours["engine_ms"]) > 0 and float(ours["dense_ms"]) > 0 and ours["cpu_model"]
    assert rows["deepsparse"]["status"].startswith("not configured")
    text = doc.read_text()
    assert "not configured ($LIGHTNING_SRIGL_DEEPSPARSE_PYTHON)" in text and ENGINES["ours_eager"] in text
    assert "scripts/bench_peers.py --smoke" in text and "## Layers `accelerate()` did not condense" in text
    again = tmp_path / "again.md"
    redo = [sys.executable, "scripts/bench_peers.py", "--from-csv", str(tmp_path / "peers.csv"), "--out", str(tmp_path)]
    subprocess.run([*redo, "--doc", str(again)], cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
    table = lambda doc: [line for line in doc.splitlines() if line.startswith("| resnet50 |")]  # noqa: E731
    assert table(again.read_text()) == table(text) and len(table(text)) == 1


def test_the_tables_mark_inexact_and_missing_engines() -> None:
    row = {"model": "m", "batch": 1, "threads": 1, "dense_ms": 10.0}
    rows = [
        row
        | {
            "engine": "ours_eager",
            "status": "ok",
            "engine_ms": 2.0,
            "speedup": 5.0,
            "exact": True,
        },
        row
        | {
            "engine": "onnxruntime",
            "status": "ok",
            "engine_ms": 5.0,
            "speedup": 2.0,
            "exact": False,
        },
        row | {"engine": "openvino", "status": "openvino not installed"},
    ]
    table = peers_markdown(rows, ["ours_eager", "onnxruntime", "openvino", "deepsparse"])
    line = next(line for line in table.splitlines() if line.startswith("| m |"))
    assert line == "| m | 1 | 10.0 | **5.00×** (2.0) | **2.00×** (5.0) ✗ | openvino not installed | not run |"


def test_from_csv_merges_runs_a_later_row_replacing_an_earlier_one(tmp_path: Path) -> None:
    fields = ["model", "batch", "threads", "engine", "status", "engine_ms", "dense_ms", "speedup", "exact", "command"]
    runs = {
        "first.csv": [["a", 1, 1, "ours_eager", "ok", 2.0, 10.0, 5.0, True, "first"],
                      ["b", 1, 1, "ours_eager", "ok", 4.0, 10.0, 2.5, True, "first"]],
        "second.csv": [["b", 1, 1, "ours_eager", "ok", 1.0, 10.0, 10.0, True, "second"]],
    }  # fmt: skip
    for name, rows in runs.items():
        with (tmp_path / name).open("w", newline="") as handle:
            csv.writer(handle).writerows([fields, *rows])
    out, doc = tmp_path / "out", tmp_path / "peers.md"
    out.mkdir()
    command = [sys.executable, "scripts/bench_peers.py", "--from-csv", str(tmp_path / "first.csv"),
               str(tmp_path / "second.csv"), "--out", str(out), "--doc", str(doc)]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=600, capture_output=True)
    with (out / "peers.csv").open() as handle:
        merged = {r["model"]: r for r in csv.DictReader(handle)}
    assert merged["a"]["command"] == "first" and merged["b"]["command"] == "second"
    text = doc.read_text()
    assert "| b | 1 | 10.0 | **10.00×** (1.0) |" in text and "\nfirst\nsecond\n" in text


def test_int8_engines_are_checked_by_relative_error_and_tabled_apart(tmp_path: Path) -> None:
    doc = tmp_path / "peers.md"
    command = [
        sys.executable, "scripts/bench_peers.py", "--smoke", "--models", "vit_b16", "--batches", "1", "--threads", "1",
        "--engines", "ours_eager", "ours_int8", "onnxruntime_int8", "deepsparse_int8", "--seconds", "0.01",
        "--out", str(tmp_path), "--doc", str(doc),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_SRIGL_DEEPSPARSE_PYTHON"}
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
    with (tmp_path / "peers.csv").open() as handle:
        rows = {r["engine"]: r for r in csv.DictReader(handle)}
    ours = rows["ours_int8"]
    assert ours["status"] == "ok" and 0 < float(ours["rel_error"]) <= INT8_TOLERANCE and ours["exact"] == "True"
    assert "int8_condensed" in ours["chosen"]  # the int8 layers, attention projections among them, where faster
    assert rows["ours_eager"]["rel_error"] == "" and rows["ours_eager"]["exact"] == "True"
    assert rows["deepsparse_int8"]["status"].startswith("not configured")
    assert rows["onnxruntime_int8"]["status"] in ("ok", "onnxruntime not installed")
    fp32, _, int8 = doc.read_text().partition("## int8 (not bit-exact)")
    assert ENGINES["ours_eager"] in fp32 and ENGINES["ours_int8"] not in fp32
    line = next(line for line in int8.splitlines() if line.startswith("| vit_b16 | 1 |"))
    assert f"{float(ours['engine_ms']):.1f}, error {float(ours['rel_error']):.3f})" in line
    assert "not configured" in line and "--from-csv docs/assets/peers/peers.csv /tmp/peers_int8/peers.csv" in int8


def test_an_int8_cell_shows_its_error_and_marks_one_over_the_tolerance() -> None:
    row = {"model": "m", "batch": 1, "threads": 1, "dense_ms": 10.0, "status": "ok", "engine_ms": 2.0, "speedup": 5.0}
    rows = [
        row | {"engine": "ours_int8", "exact": True, "rel_error": 0.012},
        row | {"engine": "onnxruntime_int8", "exact": False, "rel_error": 0.2},
    ]
    table = peers_markdown(rows, ["ours_int8", "onnxruntime_int8"])
    line = next(line for line in table.splitlines() if line.startswith("| m |"))
    assert line == "| m | 1 | 10.0 | **5.00×** (2.0, error 0.012) | **5.00×** (2.0, error 0.200) ✗ |"


def test_each_cpu_page_names_its_stored_run_and_the_command_that_rewrites_it() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_peers

    amd, intel = ROOT / "docs" / "peers.md", ROOT / "docs" / "peers-intel-xeon.md"
    assert bench_peers.stored_run(amd) == "docs/assets/peers"
    assert bench_peers.stored_run(intel) == "docs/assets/peers/intel-xeon"
    assert bench_peers.rewrite_command(amd) == (
        "python scripts/bench_peers.py --from-csv docs/assets/peers/peers.csv --out docs/assets/peers --doc"
    )
    assert bench_peers.rewrite_command(intel, "/tmp/run/peers.csv") == (
        "python scripts/bench_peers.py --from-csv docs/assets/peers/intel-xeon/peers.csv /tmp/run/peers.csv "
        "--out docs/assets/peers/intel-xeon --doc docs/peers-intel-xeon.md"
    )
    for page in (amd, intel):  # the committed pages are what their own command writes, and link each other
        text = page.read_text()
        assert f"`{bench_peers.rewrite_command(page)}`" in text
        assert "The same benchmark on another CPU: " + ", ".join(bench_peers.other_cpus(page)) in text
