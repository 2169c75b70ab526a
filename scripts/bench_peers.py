"""The same 90 %-sparse models through ours and the engines users deploy, one process per engine (docs/peers.md).

Usage (from the repository root, in an interpreter with torch, transformers, onnx, onnxscript and the
engines to compare; DeepSparse runs in its own interpreter)::

    LIGHTNING_SRIGL_DEEPSPARSE_PYTHON=/path/to/deepsparse-venv/bin/python \\
        python scripts/bench_peers.py --doc                       # every model, batch 1 and 8, 1 and 2 threads
    python scripts/bench_peers.py --smoke --seconds 0.05 --out /tmp/peers   # tiny models, the tests' run

For each model (the whole-model benchmark's ViT-B/16, ResNet-50, GPT-2 small and BERT-base, with its
90 % SRigL masks: ``scripts/bench_whole_models.py``) and batch size, the parent process exports the
masked dense model to ONNX (dynamo exporter), and the inputs and the masked dense model's outputs for
the DeepSparse worker. Then each engine runs in a process of its own, which rebuilds the same masked
model (same seed) and times the engine against torch dense eager in that process, interleaved rounds,
the fastest sample (at 1 thread process CPU time, since ONNX Runtime, OpenVINO and DeepSparse compute
on threads of their own; otherwise wall time), and checks the engine's output against the masked dense
model's (within 1e-4). The engines: ``ours_eager`` (``accelerate()``), ``ours_compiled``
(``accelerate(compile=True)``), ``torch_compiled_dense``, ``onnxruntime``, ``openvino`` (fp32 pinned)
and ``deepsparse`` (``$LIGHTNING_SRIGL_DEEPSPARSE_PYTHON``, a Python with ``deepsparse==1.8.0``; that
interpreter has no torch, so DeepSparse is timed against ONNX Runtime in its process and related to
torch dense eager through ONNX Runtime's ratio in the ``onnxruntime`` process). An engine that is not
installed (or not configured) gets a column that says so; nothing fails.

The int8 engines, **not exact** (their output is checked against the masked dense model's within a relative
L2 error of ``INT8_TOLERANCE``, and tabled apart): ``ours_int8`` (``accelerate(quantize="int8-condensed")``),
``onnxruntime_int8`` (ONNX Runtime's dynamic int8 quantization of the dense export) and ``deepsparse_int8``
(the dense export statically quantized, ``QLinearMatMul``, calibrated on 4 other batches; related to torch dense
eager through ``onnxruntime_int8``, as ``deepsparse`` is through ``onnxruntime``): `onnx_int8`.

Writes ``<out>/peers.csv`` and each acceleration report (``<out>/work/accelerate_*.csv``: per layer the
candidates' times and the kernel chosen); with ``--doc`` also docs/peers.md (``--doc PATH``: that file instead).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_whole_models import cases  # noqa: E402 - scripts/ is this script's directory

from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.acceleration.model_timing import dense_reference  # noqa: E402
from lightning_srigl.benchmark.machine import machine_fields  # noqa: E402
from lightning_srigl.benchmark.onnx_int8 import (  # noqa: E402
    INT8_TOLERANCE,
    quantize_dynamic_int8,
    quantize_static_int8,
    relative_l2,
)
from lightning_srigl.benchmark.peers import (  # noqa: E402
    ENGINES,
    INT8_ENGINES,
    LogitsOnly,
    export_onnx,
    missing_reason,
    onnx_runner,
    peers_markdown,
)
from lightning_srigl.benchmark.whole_model import ModelCase, masked_model  # noqa: E402
from lightning_srigl.kernels.compiled import compile_in_place  # noqa: E402
from lightning_srigl.timing import hot_times  # noqa: E402

DOC = ROOT / "docs" / "peers.md"
DEEPSPARSE_ENV = "LIGHTNING_SRIGL_DEEPSPARSE_PYTHON"
ONNX_ENGINES = ("onnxruntime", "openvino", "deepsparse")
# The ONNX file each engine runs (a key of a prepared case): the fp32 export, its dynamic or static int8 form.
ONNX_FILE = {**dict.fromkeys(ONNX_ENGINES, "onnx"), "onnxruntime_int8": "int8", "deepsparse_int8": "static"}
# The engine in whose process ONNX Runtime relates each DeepSparse engine to torch dense eager.
BRIDGE = {"deepsparse": "onnxruntime", "deepsparse_int8": "onnxruntime_int8"}
CALIBRATION_BATCHES = 4
MODELS = ("vit_b16", "resnet50", "gpt2", "bert")


def inputs_of(case: ModelCase, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The model's inputs at ``batch`` (seeded: the same in every process)."""
    torch.manual_seed(seed + batch)
    inputs = case.example(batch)
    return inputs if isinstance(inputs, tuple) else (inputs,)


def prepare(job: dict, work: Path) -> list[dict]:
    """Export each (model, batch) to ONNX with its inputs and the masked dense model's outputs, and with
    ``job["int8"]`` its int8 forms; the DeepSparse worker's cases (a failed export or quantization is a case
    with its reason under ``"<file key>_error"``)."""
    prepared = []
    for name in job["models"]:
        case = cases(job["smoke"])[name]
        dense = LogitsOnly(
            dense_reference(masked_model(case, job["sparsity"], job["seed"])),
            case.logits,
        ).eval()
        for batch in job["batches"]:
            inputs = inputs_of(case, batch, job["seed"])
            stem = work / f"{name}_b{batch}"
            entry = {
                "model": name,
                "batch": batch,
                "onnx": f"{stem}.onnx",
                "inputs": f"{stem}.npz",
                "reference": f"{stem}.npy",
                **({"int8": f"{stem}.int8.onnx", "static": f"{stem}.static.onnx"} if job.get("int8") else {}),
            }
            prepared.append(entry)
            reuse = job.get("reuse_exports") and all(
                Path(entry[key]).exists() for key in ("onnx", "inputs", "reference")
            )
            if reuse and all(Path(entry[key]).exists() for key in ("int8", "static") if key in entry):
                continue  # an earlier run's export of the same model, batch and seed
            if reuse and job.get("int8"):
                quantize_forms(entry, calibration_batches(case, batch, job["seed"]))
                continue  # an earlier run's export, quantized now
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    export_onnx(dense, inputs, Path(entry["onnx"]))
            except Exception as error:
                entry["onnx_error"] = f"export failed: {type(error).__name__}"
            np.savez(entry["inputs"], *[t.numpy() for t in inputs])
            with torch.no_grad():
                np.save(entry["reference"], dense(*inputs).numpy())
            if job.get("int8"):
                quantize_forms(entry, calibration_batches(case, batch, job["seed"]))
    return prepared


def calibration_batches(case: ModelCase, batch: int, seed: int) -> list[list[np.ndarray]]:
    """`CALIBRATION_BATCHES` batches of the model's inputs other than the timed one (other seeds)."""
    return [[t.numpy() for t in inputs_of(case, batch, seed + 1 + i)] for i in range(CALIBRATION_BATCHES)]


def quantize_forms(entry: dict, calibration: list[list[np.ndarray]]) -> None:
    """Write ``entry``'s dynamic and static int8 forms of its export (or their ``"<key>_error"``)."""
    for key, quantize in (("int8", quantize_dynamic_int8), ("static", quantize_static_int8)):
        if "onnx_error" in entry:
            entry[f"{key}_error"] = entry["onnx_error"]
            continue
        try:
            extra = (calibration,) if key == "static" else ()
            quantize(Path(entry["onnx"]), Path(entry[key]), *extra)
        except Exception as error:
            entry[f"{key}_error"] = f"quantization failed: {type(error).__name__}"


def engine_call(
    engine: str,
    masked: torch.nn.Module,
    case: ModelCase,
    inputs: tuple,
    onnx: Path,
    threads: int,
    report_csv: Path,
) -> tuple[Callable[[], object], dict[str, object]]:
    """``(() -> output, facts)`` for one engine on one (model, batch) at ``threads`` threads (ours: the
    acceleration report is written to ``report_csv``)."""
    if engine in ("onnxruntime", "openvino", "onnxruntime_int8"):
        run = onnx_runner(engine.removesuffix("_int8"), onnx, threads)
        arrays = [t.numpy() for t in inputs]
        return (lambda: run(arrays)), {}
    model = copy.deepcopy(masked)
    facts: dict[str, object] = {}
    if engine == "torch_compiled_dense":
        model = dense_reference(model)
        facts["compile_s"] = round(compile_in_place(model, inputs), 1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = accelerate(
                model,
                inputs,
                verbose=False,
                model_repeats=0,
                compile=engine == "ours_compiled",
                quantize="int8-condensed" if engine == "ours_int8" else None,
            )
        report.to_csv(report_csv)
        chosen = [row.chosen for row in report.rows]
        facts["chosen"] = " ".join(f"{kind}:{chosen.count(kind)}" for kind in sorted(set(chosen)))
        if report.compile_seconds is not None:
            facts["compile_s"] = round(report.compile_seconds, 1)
    return (lambda: case.logits(model(*inputs))), facts


@torch.no_grad()
def worker(engine: str, job: dict) -> None:
    """Time ``engine`` against torch dense eager on every (model, batch, threads) of ``job``; one JSON row each."""
    machine = machine_fields()
    prepared = {(c["model"], c["batch"]): c for c in job["prepared"]}
    for name in job["models"]:
        case = cases(job["smoke"])[name]
        masked = masked_model(case, job["sparsity"], job["seed"])
        dense = dense_reference(masked)
        for batch in job["batches"]:
            inputs = inputs_of(case, batch, job["seed"])
            reference = case.logits(dense(*inputs))
            entry = prepared.get((name, batch), {})
            for threads in job["threads"]:
                torch.set_num_threads(threads)
                row = {
                    "model": name,
                    "batch": batch,
                    "threads": threads,
                    "engine": engine,
                    **machine,
                }
                error = entry.get(f"{ONNX_FILE[engine]}_error") if engine in ONNX_FILE else None
                if error is not None:
                    print(json.dumps(row | {"status": error}), flush=True)
                    continue
                try:
                    report_csv = Path(job["work"]) / f"accelerate_{engine}_{name}_b{batch}_t{threads}.csv"
                    onnx = Path(entry.get(ONNX_FILE.get(engine, "onnx"), ""))
                    run, facts = engine_call(engine, masked, case, inputs, onnx, threads, report_csv)
                    out = torch.as_tensor(run())
                    clock = time.process_time if threads == 1 else time.perf_counter
                    calls = {"dense": lambda: dense(*inputs), "engine": run}
                    times = hot_times(
                        calls, threads=threads, min_run_time=job["seconds"], device=torch.device("cpu"), warmup=1,
                        min_samples=5, clock=clock,
                    )  # fmt: skip
                except Exception as error:
                    print(
                        json.dumps(row | {"status": f"failed: {type(error).__name__}"[:80]}),
                        flush=True,
                    )
                    continue
                exact = bool(torch.allclose(out, reference, rtol=1e-4, atol=1e-4))
                if engine in INT8_ENGINES:  # not exact: within a relative L2 error instead
                    facts["rel_error"] = relative_l2(out.numpy(), reference.numpy())
                    exact = facts["rel_error"] <= INT8_TOLERANCE
                print(json.dumps(row | facts | {
                    "status": "ok", "engine_ms": times["engine"].min * 1e3, "dense_ms": times["dense"].min * 1e3,
                    "speedup": times["dense"].min / times["engine"].min,
                    "max_diff": float((out - reference).abs().max()), "exact": exact,
                    "clock": "process CPU time" if threads == 1 else "wall", "load": os.getloadavg()[0],
                }), flush=True)  # fmt: skip


def run_engine(engine: str, job: dict, work: Path) -> list[dict]:
    """The rows of one engine's process (or rows saying why it did not run)."""
    pairs = [(m, b, t) for m in job["models"] for b in job["batches"] for t in job["threads"]]
    missing = lambda reason: [  # noqa: E731
        {"model": m, "batch": b, "threads": t, "engine": engine, "status": reason} for m, b, t in pairs
    ]
    job_path = work / f"job_{engine}.json"
    if engine in BRIDGE:
        python = os.environ.get(DEEPSPARSE_ENV)
        if not python:
            return missing(f"not configured (${DEEPSPARSE_ENV})")
        key, bridge = ONNX_FILE[engine], ONNX_FILE[BRIDGE[engine]]
        ds_job = {
            "cases": [c for c in job["prepared"] if f"{key}_error" not in c and f"{bridge}_error" not in c],
            "threads": job["threads"],
            "seconds": job["seconds"],
            "engine": engine,
            "model_key": key,
            "bridge_key": bridge,
            "rel_tolerance": INT8_TOLERANCE if engine in INT8_ENGINES else None,
        }
        job_path.write_text(json.dumps(ds_job))
        command = [python, str(ROOT / "scripts" / "peers_deepsparse.py"), str(job_path)]
    else:
        reason = missing_reason(engine)
        if reason is not None:
            return missing(reason)
        job_path.write_text(json.dumps(job))
        command = [sys.executable, __file__, "--worker", engine, "--job", str(job_path)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    print(
        f"[{time.strftime('%H:%M:%S')}] {engine}: {' '.join(command)}",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if rows and "model" not in rows[0]:  # the worker's interpreter lacks the engine
        return missing(rows[0]["status"])
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        done = {(r["model"], r["batch"], r["threads"]) for r in rows}
        rows += [
            r | {"status": f"failed (exit {result.returncode})"}
            for r in missing("")
            if (r["model"], r["batch"], r["threads"]) not in done
        ]
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """``rows`` as CSV at ``path`` (the union of their keys as columns)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def merged_rows(paths: list[Path]) -> list[dict]:
    """The rows of the CSVs at ``paths``; a later file's row replaces an earlier one's for the same model, batch,
    threads and engine (a later run of some models)."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        with path.open() as handle:
            for row in map(_parsed, csv.DictReader(handle)):
                merged[(row["model"], row["batch"], row["threads"], row["engine"])] = row
    return list(merged.values())


def _parsed(row: dict[str, str]) -> dict:
    """A CSV row with its numbers and flags as numbers and flags."""
    parsed: dict = {}
    for key, value in row.items():
        if key in ("batch", "threads"):
            parsed[key] = int(value)
        elif key in ("engine_ms", "dense_ms", "speedup", "max_diff", "load", "ds_ms", "ort_ms", "rel_error") and value:
            parsed[key] = float(value)
        elif key == "exact":
            parsed[key] = value == "True"
        else:
            parsed[key] = value
    return parsed


def relate_deepsparse(rows: list[dict]) -> list[dict]:
    """DeepSparse's rows with ``speedup`` over torch dense eager: its ratio over ONNX Runtime (same process, on
    the file of the engine in `BRIDGE`) times that engine's over torch dense eager (in its own process)."""
    ort = {
        (r["engine"], r["model"], r["batch"], r["threads"]): r
        for r in rows
        if r["engine"] in BRIDGE.values() and r["status"] == "ok"
    }
    related = []
    for row in rows:
        if row["engine"] in BRIDGE and row["status"] == "ok":
            base = ort.get((BRIDGE[row["engine"]], row["model"], row["batch"], row["threads"]))
            if base is None:
                row = row | {
                    "status": "ok",
                    "engine_ms": row["ds_ms"],
                    "speedup": float("nan"),
                }
            else:
                ratio = row["ort_ms"] / row["ds_ms"] * base["speedup"]
                row = row | {
                    "engine_ms": row["ds_ms"],
                    "dense_ms": "",
                    "speedup": ratio,
                }
        related.append(row)
    return related


def not_condensed(work: Path) -> str:
    """From ``accelerate()``'s reports in ``work`` (the ``ours_eager`` process): every layer that did not get
    the condensed kernel, with the candidates' times (the shapes where the sparse kernels lose)."""
    lines = [
        "## Layers `accelerate()` did not condense",
        "",
        "From the acceleration reports of the `ours_eager` process (`<out>/work/accelerate_*.csv`): each layer",
        "that kept dense or took im2col, with the candidates' times (µs, fastest interleaved sample).",
        "",
        "| report | layer | in→out (fan-in positions) | chosen | dense µs | condensed µs | im2col µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in sorted(work.glob("accelerate_ours_eager_*.csv")):
        label = report.stem.removeprefix("accelerate_ours_eager_")
        with report.open() as handle:
            for row in csv.DictReader(handle):
                if row["chosen"] != "condensed":
                    times = " | ".join(row.get(f"{c}_us") or "—" for c in ("dense", "condensed", "im2col"))
                    lines.append(f"| {label} | {row['layer']} | {row['shape']} | {row['chosen']} | {times} |")
    return "\n".join(lines) + "\n"


def stored_run(doc: Path) -> str:
    """Where the run behind the page ``doc`` is kept, relative to the repository: docs/assets/peers/ for
    docs/peers.md, docs/assets/peers/<cpu>/ for docs/peers-<cpu>.md (one page per CPU measured)."""
    cpu = doc.stem.removeprefix("peers").lstrip("-")
    return "docs/assets/peers" + (f"/{cpu}" if cpu else "")


def rewrite_command(doc: Path, *runs: str) -> str:
    """The command that rewrites the page ``doc`` from its stored run (merged with ``runs``' CSVs)."""
    page = doc.resolve()
    where = "" if page == DOC else " " + str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else doc)
    stored = stored_run(doc)
    csvs = " ".join([f"{stored}/peers.csv", *runs])
    return f"python scripts/bench_peers.py --from-csv {csvs} --out {stored} --doc{where}"


def other_cpus(doc: Path) -> list[str]:
    """Links to the pages of the other CPUs measured (the ``peers*.md`` beside ``doc``), named by their CPU."""
    links = []
    for page in sorted(p for p in doc.parent.glob("peers*.md") if p.resolve() != doc.resolve()):
        with (ROOT / stored_run(page) / "peers.csv").open() as handle:
            cpu = next(csv.DictReader(handle))["cpu_model"]
        links.append(f"[{cpu}]({page.name})")
    return links


def write_doc(rows: list[dict], engines: list[str], loads: tuple[float, float], path: Path, work: Path) -> None:
    """docs/peers.md (at ``path``): how it was measured, the tables, ours against the best peer, and the
    layers ``accelerate()`` did not condense (its reports in ``work``)."""
    machine = next((r for r in rows if r.get("cpu_model")), {})
    commands = list(dict.fromkeys(str(r["command"]) for r in rows if r.get("command")))
    ds = next((r for r in rows if r["engine"] == "deepsparse" and r.get("version")), {})
    threaded = any(int(r["threads"]) > 1 for r in rows)
    siblings = other_cpus(path)
    lines = [
        f"# Ours beside the engines users deploy: {machine.get('cpu_model', 'CPU not recorded')}",
        "",
        "The same 90 %-sparse models (the [whole-model benchmark](whole-models.md)'s SRigL masks) through",
        "`accelerate()` (eager and compiled), `torch.compile` of the dense model, and the masked dense model",
        "exported to ONNX (dynamo exporter) for ONNX Runtime, OpenVINO (fp32 pinned) and DeepSparse, **one",
        "process per engine**, each timed against torch dense eager in its own process: interleaved rounds,",
        "the fastest sample, at 1 thread process CPU time, at 2 threads wall time. Every engine's output is",
        "compared with the masked dense model's; ✗ marks one that is not within 1e-4. Cells: speed-up over torch",
        "dense eager, **bold**, and the engine's ms per call. DeepSparse's interpreter has no torch: its ratio",
        "is over ONNX Runtime in its own process, times ONNX Runtime's ratio over torch dense eager in the",
        "ONNX Runtime process. Llama decoding with the KV cache is not here (the engines need an exported",
        "cache loop); it is in [whole models](whole-models.md) (and int8 decoding in [int8](int8.md)).",
        "",
        "```bash",
        *commands,
        "```",
        "",
        *(
            ["The CSV records each row's command; a later run replaced the earlier one's rows of its models.", ""]
            if len(commands) > 1
            else []
        ),
        f"This page is rewritten from the stored run (its CSV and acceleration reports in `{stored_run(path)}/`,",
        f"copied from `--out`) by `{rewrite_command(path)}`.",
        "",
        *([f"The same benchmark on another CPU: {', '.join(siblings)}.", ""] if siblings else []),
        f"* CPU: {machine.get('cpu_model', '?')}; our kernel variant: {machine.get('kernel_variant', '?')}; "
        f"ATen capability {machine.get('aten_capability', '?')}; torch {machine.get('torch', '?')}"
        + (f"; DeepSparse {ds['version']}" if ds else "")
        + ".",
        f"* Measured: batch {', '.join(map(str, sorted({int(r['batch']) for r in rows})))}; "
        f"{', '.join(map(str, sorted({int(r['threads']) for r in rows})))} thread(s).",
        f"* Machine: a shared 2-vCPU VM with other work running; load average {min(loads):.1f}–{max(loads):.1f} "
        "during the run." + (" At 2 threads (wall time) the figures are the least reliable." if threaded else ""),
        "",
        peers_markdown(
            [r for r in rows if r["engine"] not in INT8_ENGINES], [e for e in engines if e not in INT8_ENGINES]
        ),
    ]
    fp32 = judged(rows, [e for e in ENGINES if e.startswith("ours") and e not in INT8_ENGINES], ONNX_ENGINES)
    path.write_text("\n".join(lines) + "\n" + fp32 + "\n" + int8_section(rows, engines, path) + not_condensed(work))


def int8_section(rows: list[dict], engines: list[str], doc: Path) -> str:
    """The int8 table (not exact) and ours int8 against the fastest int8 peer; empty without int8 rows."""
    int8 = [e for e in engines if e in INT8_ENGINES]
    here = [r for r in rows if r["engine"] in INT8_ENGINES]
    if not int8 or not here:
        return ""
    measured = [float(r["load"]) for r in here if r.get("load") not in (None, "")]
    loads = f"{min(measured):.1f}–{max(measured):.1f}" if measured else "not recorded"
    text = [
        "## int8 (not bit-exact)",
        "",
        "The same models through int8 engines, timed as above. **None is exact**: each output is compared with the",
        f"masked dense fp32 model's by relative L2 error (shown in each cell), ✗ above {INT8_TOLERANCE}. ONNX",
        "Runtime's is its dynamic int8 quantization (`quantize_dynamic`, QInt8) of the dense export; DeepSparse's",
        "runs that export statically quantized (`quantize_static`, operator format: MatMul, Gemm and Conv become",
        "`QLinearMatMul`/`QLinearConv`, int8 weights, u8 activations calibrated on 4 other batches), its speed-up",
        'related to torch dense eager through ONNX Runtime int8\'s; ours is `accelerate(quantize="int8-condensed")`',
        "(the int8 layers kept where timed faster, each within the default error budget 0.02; what it chose in the",
        "CSV's `chosen`). DeepSparse 1.8 aborts (an assertion in its planner) on the dynamic form",
        "(`DynamicQuantizeLinear`, `MatMulInteger`) and runs the QDQ form (`QuantizeLinear`/`DequantizeLinear`) but",
        f"much slower, hence the operator form. Load average {loads} during these rows. Re-run and merge into the",
        "stored CSV (the other rows are kept) and this page:",
        "",
        "```bash",
        "LIGHTNING_SRIGL_DEEPSPARSE_PYTHON=<deepsparse venv>/bin/python python scripts/bench_peers.py --models vit_b16 "
        "bert --batches 1 8 --threads 1 --seconds 0.5 --engines onnxruntime_int8 deepsparse_int8 ours_int8 --out "
        f"/tmp/peers_int8 && {rewrite_command(doc, '/tmp/peers_int8/peers.csv')}",
        "```",
        "",
        peers_markdown(here, int8),
    ]
    return "\n".join(text) + "\n" + judged(rows, ["ours_int8"], ("onnxruntime_int8", "deepsparse_int8"), "int8") + "\n"


def judged(rows: list[dict], mine: list[str], peers: tuple[str, ...], label: str = "") -> str:
    """Per (model, batch, threads): our best speed-up among the ``mine`` engines over the best of ``peers``'."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("exact", True) and r["speedup"] == r["speedup"]]
    lines = [
        f"## Ours against the fastest {label + ' ' if label else ''}peer",
        "",
        "| model | batch | threads | ours | fastest peer | ours ÷ peer |",
        "|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["model"], r["batch"], r["threads"]) for r in ok):
        here = [r for r in ok if (r["model"], r["batch"], r["threads"]) == key]
        ours = max(
            (r for r in here if r["engine"] in mine),
            key=lambda r: r["speedup"],
            default=None,
        )
        peer = max(
            (r for r in here if r["engine"] in peers),
            key=lambda r: r["speedup"],
            default=None,
        )
        if ours and peer:
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {ours['speedup']:.2f}× ({ours['engine']}) | "
                f"{peer['speedup']:.2f}× ({peer['engine']}) | {ours['speedup'] / peer['speedup']:.2f} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="seconds of samples per engine, model, batch, threads",
    )
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny models (for the tests)")
    parser.add_argument(
        "--reuse-exports", action="store_true", help="keep the ONNX exports, inputs and references already in --out"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "peers")
    parser.add_argument(
        "--doc",
        nargs="?",
        type=Path,
        const=DOC,
        help="write docs/peers.md (or this path)",
    )
    parser.add_argument(
        "--from-csv", type=Path, nargs="+",
        help="write the doc from these runs' peers.csv (merged: a later file's row replaces an earlier one's for the "
        "same model, batch, threads and engine; several files are merged into --out/peers.csv) and --out's reports",
    )  # fmt: skip
    parser.add_argument("--worker", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, json.loads(args.job.read_text()))
    if args.from_csv:  # rewrite the doc from runs' CSVs (merged into --out/peers.csv) and --out's reports
        rows = merged_rows(args.from_csv)
        if len(args.from_csv) > 1:
            write_csv(rows, args.out / "peers.csv")
        engines = list(dict.fromkeys(r["engine"] for r in rows))
        loads = [float(r["load"]) for r in rows if r.get("load")] or [float("nan")]
        write_doc(rows, engines, (min(loads), max(loads)), args.doc or DOC, args.out / "work")
        return None
    unknown = [m for m in args.models if m not in cases(args.smoke)]
    if unknown:
        parser.error(f"unknown or unavailable models {unknown}; choose from {sorted(cases(args.smoke))}")
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    job = {
        k: getattr(args, k)
        for k in (
            "models",
            "batches",
            "threads",
            "seconds",
            "sparsity",
            "seed",
            "smoke",
            "reuse_exports",
        )
    }
    start_load = os.getloadavg()[0]
    job["work"] = str(work)
    job["int8"] = bool(set(args.engines) & {"onnxruntime_int8", "deepsparse_int8"})
    job["prepared"] = prepare(job, work) if set(args.engines) & set(ONNX_FILE) else []
    command = "python scripts/bench_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if set(BRIDGE) & set(args.engines):
        command = f"{DEEPSPARSE_ENV}=<deepsparse venv>/bin/python {command}"
    rows: list[dict] = []
    for engine in args.engines:  # the CSV and the doc after every engine, so a long run keeps what it measured
        rows += [row | {"command": command} for row in run_engine(engine, job, work)]
        related = relate_deepsparse(rows)
        write_csv(related, args.out / "peers.csv")
        if args.doc:
            write_doc(related, args.engines, (start_load, os.getloadavg()[0]), args.doc, work)
    print(peers_markdown(relate_deepsparse(rows), args.engines))
    print(f"wrote {args.out / 'peers.csv'}" + (f" and {args.doc}" if args.doc else ""))
    return None


if __name__ == "__main__":
    main()
