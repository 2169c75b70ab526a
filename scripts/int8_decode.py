"""int8 decoding, time per generated token: GPT-2 small and the Llama-style decoder at 90 % sparsity, ours
(``accelerate(quantize="int8-condensed")``) against ONNX Runtime's dynamic int8 of the dense model and torch
dense fp32, side by side at 1 thread, on the same tokens.

The models and masks are ``scripts/bench_whole_models.py``'s (``gpt2``: GPT-2 small from ``GPT2Config()``;
``llama_decode``: the Llama-style decoder of about 100 M parameters; random weights, 90 % SRigL masks). Every
engine runs one function, `CacheStep`: ``(token (1, 1), past keys and values (1, heads, P, head dim) per
layer) -> (logits (1, 1, vocab), the keys and values with the token's appended)``, so each is given the same
cache and token and returns its own cache. Engines, on the same weights:

* ``dense fp32``: torch eager, masks removed (Hugging Face's ``DynamicCache`` built from the tensors);
* ``ours fp32``: ``accelerate(step, (token, *past))``, exact kernels only;
* ``ours int8``: ``accelerate(step, (token, *past), quantize="int8-condensed")``; the layers are timed on
  their decode-step input (one row);
* ``ours fp32 compiled``, ``ours int8 compiled``: the same two accelerated with ``compile=True,
  module_guards=False`` (one inductor graph with freezing, our ops opaque, no per-call checks of the model's
  modules: `lightning_srigl.kernels.compiled.compile_lazily`); the uncompiled engines above are these very models'
  eager forwards. The example cache's length is marked dynamic (``torch._dynamo.mark_dynamic``), so
  one graph serves every cache length: generating compiles nothing more (the table counts the graphs compiled
  after ``accelerate``, over every engine's steps and tokens);
* ``ours int8 compiled, C++ wrapper``: ``ours int8`` accelerated once more, with ``compile_options={"cpp_wrapper":
  True}`` too (the graph's wrapper, which calls its kernels and ops, in C++ instead of Python; a longer compile);
* ``ours int8 layers``: only the int8 layers of ``ours int8``, called on their inputs of one step (what of its
  time per token the sparse layers take; the rest is the model's other operations);
* ``ORT fp32``, ``ORT int8``: ``CacheStep`` of the dense model exported with ``torch.onnx.export(dynamo=True)``,
  the cache as graph inputs and outputs with a dynamic length, and that graph quantized by
  ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights; every MatMul it quantizes, the LM head too),
  1 intra-op thread.

Per token: one decode step after a 128-token prompt (the prompt's cache from dense fp32, the same token
for every engine), interleaved rounds, minimum, CPU time of the process (ONNX Runtime computes on its own
thread). Greedy tokens: each engine then generates ``--tokens`` tokens from the same prompt cache with its own
cache; the table gives how many agree with dense fp32's, and each engine's first-step logits' relative L2 error
against dense fp32. Needs onnxruntime, onnx, onnxscript and transformers::

    PYTHONPATH=. python scripts/int8_decode.py --models gpt2 llama_decode --out runs/int8_decode.md

``--no-compile`` leaves the compiled engines out.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_whole_models import DecodeStep, cases  # noqa: E402

from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.acceleration.model_timing import dense_reference  # noqa: E402
from lightning_srigl.benchmark.machine import load_averages  # noqa: E402
from lightning_srigl.benchmark.peers import ONNX_IR_VERSION, ONNX_OPSET  # noqa: E402
from lightning_srigl.benchmark.whole_model import masked_model  # noqa: E402
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear  # noqa: E402
from lightning_srigl.kernels.compiled import eager_forward  # noqa: E402
from lightning_srigl.kernels.cpu.isa import cpu_model, requested_variant  # noqa: E402
from lightning_srigl.timing import hot_times  # noqa: E402

Step = Callable[[Tensor, Sequence[Tensor]], tuple[Tensor, list[Tensor]]]


class CacheStep(nn.Module):
    """One decode step of a Hugging Face causal LM with its cache as plain tensors:
    ``(token (B, 1), *past) -> (logits (B, 1, vocab), *present)``, ``past``/``present`` the keys and values
    ``(B, heads, P, head dim)`` of each layer in turn (``present`` has ``P + 1`` positions)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(token, past_key_values=cache, use_cache=True)
        return (out.logits, *flat_cache(out.past_key_values))


def flat_cache(cache: object) -> list[Tensor]:
    """A ``DynamicCache``'s keys and values, layer by layer."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def hf_model(name: str, smoke: bool) -> nn.Module:
    """The masked Hugging Face model of ``bench_whole_models``'s case ``name`` (its masks bound)."""
    model = masked_model(cases(smoke)[name], 0.9, 0)
    return model.model if isinstance(model, DecodeStep) else model


def torch_step(step: Callable[..., tuple[Tensor, ...]]) -> Step:
    def run(token: Tensor, past: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        logits, *present = step(token, *past)
        return logits, present

    return run


def ort_steps(dense: CacheStep, token: Tensor, past: list[Tensor], folder: Path) -> tuple[dict[str, Step], str]:
    """ONNX Runtime fp32 and dynamic int8 of ``dense`` (exported with the cache length dynamic), 1 thread;
    and how many MatMul/Gemm nodes the int8 graph quantized."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    length = torch.export.Dim("past", min=2, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            dense, (token, *past), dynamo=True, opset_version=ONNX_OPSET, external_data=False,
            dynamic_shapes=(None, tuple({2: length} for _ in past)),
        )  # fmt: skip
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    onnx.save(proto, str(folder / "fp32.onnx"))
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    ops = [node.op_type for node in onnx.load(str(folder / "int8.onnx")).graph.node]
    quantized = sum(op in ("MatMulInteger", "DynamicQuantizeMatMul", "QGemm") for op in ops)
    left = sum(op in ("MatMul", "Gemm") for op in ops)
    steps = {}
    for label, path in (("ORT fp32", folder / "fp32.onnx"), ("ORT int8", folder / "int8.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        steps[label] = _ort_step(session, names)
    return steps, f"{quantized} quantized, {left} MatMul/Gemm left fp32"


def _ort_step(session: object, names: list[str]) -> Step:
    def run(token: Tensor, past: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        arrays = [token.numpy(), *(t.numpy() if isinstance(t, Tensor) else t for t in past)]
        logits, *present = session.run(None, dict(zip(names, arrays)))
        return torch.from_numpy(logits), present  # the cache stays numpy between ONNX Runtime steps

    return run


def int8_layer_calls(step: nn.Module, token: Tensor, past: list[Tensor]) -> Callable[[], object]:
    """``() -> None`` calling every `Int8CondensedLinear` of ``step`` on its input of one step on ``(token, past)``
    (captured from the eager forward, also of a compiled ``step``)."""
    calls: list[tuple[nn.Module, Tensor]] = []
    layers = [m for m in step.modules() if isinstance(m, Int8CondensedLinear)]
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args[0]))) for m in layers]
    try:
        eager_forward(step)(token, *past)
    finally:
        for hook in hooks:
            hook.remove()
    return lambda: [module(x) for module, x in calls]


def greedy(step: Step, token: Tensor, past: list[Tensor], count: int) -> list[int]:
    """``count`` greedy tokens after ``token`` from the cache ``past``, each step on the cache of the last."""
    tokens = []
    for _ in range(count):
        logits, past = step(token, past)
        token = logits[:, -1:].argmax(-1)
        tokens.append(int(token))
    return tokens


def dynamic_length(past: list[Tensor]) -> list[Tensor]:
    """Copies of the cache tensors ``(B, heads, P, head dim)`` with ``P`` marked dynamic for ``torch.compile`` (the
    first compile then makes the graph that every later cache length runs)."""
    copies = [t.clone() for t in past]
    for t in copies:
        torch._dynamo.mark_dynamic(t, 2)
    return copies


@torch.no_grad()
def measure(
    name: str,
    prompt_length: int,
    count: int,
    seconds: float,
    smoke: bool,
    folder: Path,
    compile: bool = True,
) -> dict:
    masked = hf_model(name, smoke)
    dense = CacheStep(dense_reference(masked)).eval()
    torch.manual_seed(1)
    prompt = torch.randint(0, masked.config.vocab_size, (1, prompt_length))
    prefill = dense.model(prompt, use_cache=True)
    past = flat_cache(prefill.past_key_values)
    token = prefill.logits[:, -1:].argmax(-1)
    fp32, int8, int8_cpp = (CacheStep(copy.deepcopy(masked)).eval() for _ in range(3))
    example = (token, *(dynamic_length(past) if compile else past))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"repeats": 3, "verbose": False, "model_repeats": 0, "compile": compile, "module_guards": False}
        accelerate(fp32, example, **options)
        report = accelerate(int8, example, quantize="int8-condensed", **options)
        compile_seconds = "-"
        if compile:
            cpp = {"compile_options": {"cpp_wrapper": True}}
            cpp_report = accelerate(
                int8_cpp, (token, *dynamic_length(past)), quantize="int8-condensed", **options, **cpp
            )
            compile_seconds = f"{report.compile_seconds:.0f} / {cpp_report.compile_seconds:.0f}"
    steps = {
        "dense fp32": torch_step(dense),
        "ours fp32": torch_step(eager_forward(fp32)),
        "ours int8": torch_step(eager_forward(int8)),
    }
    if compile:
        steps |= {
            "ours fp32 compiled": torch_step(fp32),
            "ours int8 compiled": torch_step(int8),
            "ours int8 compiled, C++ wrapper": torch_step(int8_cpp),
        }
    ort, quantized = ort_steps(dense, token, past, folder)  # torch.export: before the count of compiled graphs
    steps |= ort
    compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    reference = steps["dense fp32"](token, past)[0]
    errors = {k: float((step(token, past)[0] - reference).norm() / reference.norm()) for k, step in steps.items()}
    tokens = {label: greedy(step, token, past, count) for label, step in steps.items()}
    calls = {label: (lambda step=step: step(token, past)) for label, step in steps.items()}
    calls["ours int8 layers"] = int8_layer_calls(int8, token, past)
    timings = hot_times(
        calls, threads=1, min_run_time=seconds, device=torch.device("cpu"), clock=time.process_time, min_samples=5
    )
    chosen = [row.chosen for row in report.rows]
    recompiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - compiled_graphs
    return {
        "model": name,
        "ms": {label: timing.min * 1e3 for label, timing in timings.items()},
        "error": errors,
        "agree": {label: sum(a == b for a, b in zip(seq, tokens["dense fp32"])) for label, seq in tokens.items()},
        "tokens": tokens,
        "int8 chose": ", ".join(f"{kind} x{chosen.count(kind)}" for kind in sorted(set(chosen))),
        "ORT int8 graph": quantized,
        "recompiles": recompiled if compile else "-",
        "compile s": compile_seconds,
    }


def table(rows: list[dict], count: int, loads: tuple[str, str]) -> str:
    labels = list(rows[0]["ms"])
    ours_labels = ("ours int8", "ours int8 compiled", "ours int8 compiled, C++ wrapper")
    ours = [label for label in ours_labels if label in labels]
    ratios = [f"{label} vs {peer}" for label in ours for peer in ("ORT int8", "dense fp32")]
    lines = [
        f"CPU {cpu_model()}, kernel variant {requested_variant()}, 1 thread, CPU time (minimum), load average "
        f"{loads[0]} before and {loads[1]} after.",
        "",
        "| model | "
        + " | ".join(f"{label} ms/token" + (" (error)" if label in rows[0]["error"] else "") for label in labels)
        + " | " + " | ".join(ratios) + f" | greedy tokens = dense fp32's (of {count}) "
        "| int8 acceleration chose | ORT int8 graph | graphs compiled after accelerate "
        "| ours int8 compile s (Python / C++ wrapper) |",
        "|---|" + "---|" * (len(labels) + len(ratios) + 5),
    ]  # fmt: skip
    for row in rows:
        ms, error, agree = row["ms"], row["error"], row["agree"]
        shown = [f"{ms[label]:.2f}" + (f" ({error[label]:.3f})" if label in error else "") for label in labels]
        speedups = [f"{ms[peer] / ms[label]:.2f}x" for label in ours for peer in ("ORT int8", "dense fp32")]
        same = ", ".join(f"{label} {agree[label]}" for label in agree if label != "dense fp32")
        lines.append(
            f"| {row['model']} | {' | '.join(shown)} | {' | '.join(speedups)} | {same} | {row['int8 chose']} | "
            f"{row['ORT int8 graph']} | {row['recompiles']} | {row['compile s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama_decode"], choices=["gpt2", "llama_decode"])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (the cache length of a timed step)")
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens generated by each engine")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of samples per engine")
    parser.add_argument("--smoke", action="store_true", help="tiny models (the same code paths, for a quick check)")
    parser.add_argument("--no-compile", action="store_true", help="leave the compiled engines out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    before = load_averages()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            options = (args.prompt, args.tokens, args.seconds, args.smoke, Path(folder))
            rows.append(measure(name, *options, not args.no_compile))
            print({k: v for k, v in rows[-1].items() if k != "tokens"}, flush=True)
    after = load_averages()
    text = table(rows, args.tokens, (before, after))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
