"""The engines a user could deploy a sparse model with, run on the same masked model: ONNX export, runners, rows.

``scripts/bench_peers.py`` times one masked model through each engine in a process of its own, against
torch dense eager in that process. This module holds what does not depend on the script's models:

* `ENGINES`: every engine and what it is; `missing_reason` says why one cannot run here;
* `export_onnx`: the masked dense model as ONNX (the dynamo exporter; the legacy one fails on
  GPT-2's ``aten::diff``), at a static batch size, in an IR version DeepSparse 1.8 (``onnx<1.15``) reads;
* `onnx_runner`: ONNX Runtime or OpenVINO on ``threads`` threads, fp32 (OpenVINO's default
  inference precision on CPUs with AVX-512 BF16 is bf16: it is pinned to f32 here);
* `peers_markdown`: the tables of docs/peers.md from the rows the workers wrote.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ENGINES",
    "INT8_ENGINES",
    "LogitsOnly",
    "export_onnx",
    "missing_reason",
    "onnx_runner",
    "peers_markdown",
]

Row = dict[str, Any]

# Engine name -> what it runs (the column header of docs/peers.md).
ENGINES: dict[str, str] = {
    "ours_eager": "ours, `accelerate()` (eager)",
    "ours_compiled": "ours, `accelerate(compile=True)`",
    "torch_compiled_dense": "torch.compile dense (freezing)",
    "onnxruntime": "ONNX Runtime fp32 (dense)",
    "openvino": "OpenVINO fp32 (dense)",
    "deepsparse": "DeepSparse (sparse)",
    "ours_int8": 'ours, `accelerate(quantize="int8-condensed")`',
    "onnxruntime_int8": "ONNX Runtime dynamic int8 (dense)",
    "deepsparse_int8": "DeepSparse int8 (static, QLinearMatMul)",
}
# The int8 engines: not exact, checked against the masked dense model within a relative L2 error
# (`lightning_srigl.benchmark.onnx_int8.INT8_TOLERANCE`) and tabled apart.
INT8_ENGINES = ("ours_int8", "onnxruntime_int8", "deepsparse_int8")
# The Python modules each engine needs in its worker's interpreter.
ENGINE_MODULES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "deepsparse": "deepsparse",
    "onnxruntime_int8": "onnxruntime",
    "deepsparse_int8": "deepsparse",
}
# The IR version DeepSparse 1.8's onnx (< 1.15) reads.
ONNX_IR_VERSION = 8
ONNX_OPSET = 18  # the dynamo exporter's lowest; converting down to 17 breaks GPT-2's Split


def missing_reason(engine: str) -> str | None:
    """Why ``engine`` cannot run in this interpreter (its module is not installed), or None."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    module = ENGINE_MODULES.get(engine)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} not installed"
    return None


class LogitsOnly(nn.Module):
    """``model`` with its output reduced to one tensor by ``logits`` (what the engines are compared on)."""

    def __init__(self, model: nn.Module, logits: Callable[[Any], Tensor]) -> None:
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.logits(self.model(*inputs))


def export_onnx(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> Path:
    """Export ``model`` on ``inputs`` (static shapes) to ``path`` with the dynamo exporter, opset
    `ONNX_OPSET`, IR version `ONNX_IR_VERSION`, weights inside the file."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(model, inputs, dynamo=True, opset_version=ONNX_OPSET, external_data=False)
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    onnx.save(proto, str(path))
    return path


def onnx_runner(engine: str, path: Path, threads: int) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """``inputs -> first output`` of the ONNX model at ``path`` through ONNX Runtime or OpenVINO (CPU, fp32,
    ``threads`` intra-op threads, one stream)."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda inputs: session.run(None, dict(zip(names, inputs)))[0]
    if engine == "openvino":
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = ov.Core().compile_model(str(path), "CPU", config | {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda inputs: request.infer(list(inputs))[compiled.output(0)]
    raise ValueError(f"onnx_runner runs onnxruntime or openvino, not {engine!r}")


def peers_markdown(rows: Sequence[Row], engines: Sequence[str]) -> str:
    """Per thread count, one table: a line per (model, batch), dense eager ms, then per engine its speed-up
    over torch dense eager (its time in ms; an int8 engine's relative L2 error after it), ``not installed``/
    ``failed`` where it did not run, and ``✗`` where its output is not within 1e-4 (int8: within the tolerance)
    of the masked dense model."""
    lines = []
    for threads in sorted({int(r["threads"]) for r in rows}):
        lines += [
            f"**{threads} thread{'s' if threads > 1 else ''}** (× torch dense eager, ms per call)",
            "",
        ]
        lines += ["| model | batch | dense eager ms | " + " | ".join(ENGINES[e] for e in engines) + " |"]
        lines += ["|---|---|---|" + "---|" * len(engines)]
        pairs = dict.fromkeys((r["model"], int(r["batch"])) for r in rows if int(r["threads"]) == threads)
        for model, batch in pairs:
            here = {
                r["engine"]: r
                for r in rows
                if (r["model"], int(r["batch"]), int(r["threads"])) == (model, batch, threads)
            }
            dense = [float(r["dense_ms"]) for r in here.values() if r.get("status") == "ok" and r.get("dense_ms")]
            cells = [model, str(batch), f"{min(dense):.1f}" if dense else "—"]
            cells += [_cell(here.get(engine)) for engine in engines]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(row: Row | None) -> str:
    if row is None:
        return "not run"
    if row["status"] != "ok":
        return str(row["status"])
    mark = "" if row["exact"] else " ✗"
    error = f", error {float(row['rel_error']):.3f}" if row.get("rel_error") not in (None, "") else ""
    return f"**{float(row['speedup']):.2f}×** ({float(row['engine_ms']):.1f}{error}){mark}"
