"""DeepSparse worker of scripts/bench_peers.py: runs in DeepSparse's own interpreter (numpy, onnxruntime,
deepsparse; no torch), so it cannot time torch dense eager itself.

Usage: ``python scripts/peers_deepsparse.py JOB.json`` where the job (written by bench_peers.py) names the
ONNX files, inputs (``.npz``) and reference outputs (``.npy``) of each (model, batch), the thread counts and
the seconds per pair. For each it times DeepSparse and ONNX Runtime interleaved (process CPU time at 1
thread, wall time otherwise; minimum per call), checks DeepSparse's output against the masked dense
model's, and prints one JSON row per (model, batch, threads): ``ds_ms``, ``ort_ms`` (ONNX Runtime in this
process, which bench_peers.py uses to relate DeepSparse to torch dense eager), ``max_diff``, ``exact``.
The job's ``engine`` names the rows; DeepSparse runs each case's ``model_key`` file (``onnx``: the fp32
export; ``static``: its static int8 form) and ONNX Runtime its ``bridge_key`` file; with ``rel_tolerance`` (int8)
the output is checked by relative L2 error (``rel_error``) instead of within 1e-4.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable


def interleaved_min(calls: dict[str, Callable[[], object]], seconds: float, threads: int) -> dict[str, float]:
    """Seconds per call of each function: one warm-up call, then interleaved samples (one untimed call
    before each) until each has at least 5 samples and ``seconds`` measured; the minimum sample."""
    clock = time.process_time if threads == 1 else time.perf_counter
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    while any(len(s) < 5 or sum(s) < seconds for s in samples.values()):
        for name, fn in calls.items():
            fn()
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return {name: min(s) for name, s in samples.items()} | {
        f"{n}_median": statistics.median(s) for n, s in samples.items()
    }


def main(job_path: str) -> None:
    import numpy as np

    job = json.loads(open(job_path).read())
    try:
        import deepsparse
        import onnxruntime as ort
    except ImportError as error:
        print(json.dumps({"status": f"not installed ({error.name})"}))
        return
    for case in job["cases"]:
        inputs = list(np.load(case["inputs"]).values())
        reference = np.load(case["reference"])
        for threads in job["threads"]:
            row = {
                "model": case["model"],
                "batch": case["batch"],
                "threads": threads,
                "engine": job.get("engine", "deepsparse"),
            }
            try:
                model_file, bridge_file = case[job.get("model_key", "onnx")], case[job.get("bridge_key", "onnx")]
                engine = deepsparse.Engine(model_file, batch_size=case["batch"], num_cores=threads)
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                session = ort.InferenceSession(bridge_file, options, providers=["CPUExecutionProvider"])
                names = [i.name for i in session.get_inputs()]
                out = engine.run(inputs)[0]
                times = interleaved_min(
                    {"ds": lambda: engine.run(inputs), "ort": lambda: session.run(None, dict(zip(names, inputs)))},
                    job["seconds"], threads,
                )  # fmt: skip
            except Exception as error:
                print(
                    json.dumps(row | {"status": f"failed: {type(error).__name__}"[:80]}),
                    flush=True,
                )
                continue
            diff = float(np.abs(out - reference).max())
            exact = bool(np.allclose(out, reference, rtol=1e-4, atol=1e-4))
            if job.get("rel_tolerance") is not None:  # int8: not exact, within a relative L2 error
                row["rel_error"] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
                exact = row["rel_error"] <= job["rel_tolerance"]
            print(json.dumps(row | {
                "status": "ok", "ds_ms": times["ds"] * 1e3, "ort_ms": times["ort"] * 1e3,
                "ds_median_ms": times["ds_median"] * 1e3, "max_diff": diff, "exact": exact,
                "version": deepsparse.__version__, "load": os.getloadavg()[0],
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
