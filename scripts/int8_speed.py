"""Side-by-side CPU speed of int8 condensed layers against fp32 condensed, dense fp32, torch dynamic int8 and
(where onnxruntime is importable) ONNX Runtime dynamic int8, on the same 90 %-sparse weights.

Models: one 3072->768 layer, one 768->3072 layer, and a ViT-B/16-sized MLP stack (12 x [768->3072, GELU,
3072->768]), each called on ``(B, in)`` rows (tokens) for every ``--batch`` (default 1, 8, 128: BERT-base's
tokens, and 197: ViT-B/16's). Every linear layer has a constant fan-in mask keeping 10 % of its inputs
(random weights: speed does not depend on them). 1 thread; each candidate's
samples (``--sample-ms`` of calls) are taken in interleaved rounds and the minimum CPU time
(``time.process_time``) per call is reported, with the CPU model, the kernel variant (pick it with
``LIGHTNING_SRIGL_CPU_ISA``), the int8 dot-product path and the load average beside it.

    PYTHONPATH=. python scripts/int8_speed.py --out runs/int8_speed_avx512.json
    LIGHTNING_SRIGL_CPU_ISA=avx2 PYTHONPATH=. python scripts/int8_speed.py --out runs/int8_speed_avx2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.kernels.cpu.isa import cpu_model, requested_variant
from lightning_srigl.kernels.cpu.loader import load_extension


def masked_linear(inp: int, out: int, density: float, generator: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` whose weight keeps ``round(density * inp)`` random inputs per output (zeros elsewhere)."""
    linear = nn.Linear(inp, out)
    keep = max(1, round(density * inp))
    order = torch.argsort(torch.rand(out, inp, generator=generator), dim=1)[:, :keep]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, order, True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out, inp, generator=generator) * inp**-0.5 * mask)
    return linear.requires_grad_(False)


def build_model(name: str, density: float) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    if name.startswith("layer_"):
        inp, out = (int(size) for size in name.removeprefix("layer_").split("x"))
        return nn.Sequential(masked_linear(inp, out, density, generator)).eval()
    blocks = []
    for _ in range(12):
        up, down = masked_linear(768, 3072, density, generator), masked_linear(3072, 768, density, generator)
        blocks += [up, nn.GELU(), down]
    return nn.Sequential(*blocks).eval()


def swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by ``make(linear)``."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            model.set_submodule(name, make(module))
    return model


class Int8WithoutVnni(nn.Module):
    """An `Int8CondensedLinear` run through the kernel's best path without VNNI (``mode=3``: the AVX2 window
    kernel with ``vpmaddwd``; on AVX-512, whose window needs VNNI, the gathers with ``vpmaddwd``)."""

    def __init__(self, layer: Int8CondensedLinear) -> None:
        super().__init__()
        self.layer, self.kernel = layer, load_extension()

    def forward(self, x: Tensor) -> Tensor:
        q = self.layer
        return self.kernel.int8_condensed_linear(
            x, q.weight, q.indices, q.weight_sum, q.weight_scale, q.active_rows, q.bias, q.layout, q.out_features,
            q.input_scale, q.input_zero, 3,
        )  # fmt: skip


def ort_dynamic_int8(model: nn.Module, x: Tensor) -> Callable[[], object] | None:
    """ONNX Runtime dynamic int8 (QInt8 weights) of the dense-masked ``model`` on ``x``, 1 thread; None
    without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return None
    folder = Path(tempfile.mkdtemp())
    torch.onnx.export(model, (x,), folder / "fp32.onnx", input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def candidates(model: nn.Module, x: Tensor, int8: nn.Module, without_vnni: bool) -> dict[str, Callable[[], object]]:
    """The timed calls on ``x``; ``int8``: ``model`` with `Int8CondensedLinear` layers; ``without_vnni``: time
    the best path without VNNI too."""
    fns = {
        "dense fp32": model,
        "fp32 condensed": swap_linears(model, CondensedLinear.from_masked),
        "int8 condensed": int8,
        "int8 condensed, no VNNI": _without_vnni(int8) if without_vnni else None,
        "torch dynamic int8 (dense)": torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8),
    }
    calls = {name: (lambda module=module: module(x)) for name, module in fns.items() if module is not None}
    ort_call = ort_dynamic_int8(model, x)
    if ort_call is not None:
        calls["ORT dynamic int8 (dense)"] = ort_call
    return calls


def _without_vnni(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, Int8CondensedLinear):
            model.set_submodule(name, Int8WithoutVnni(module))
    return model


def window_steps(model: nn.Module) -> int:
    """Window-kernel steps of all int8 layers of ``model`` (the layout header's ``S``; 0 without layouts)."""
    layouts = [m.layout for m in model.modules() if isinstance(m, Int8CondensedLinear) and m.layout.numel()]
    return sum(int(layout[:64].view(torch.int64)[5]) for layout in layouts)


def interleaved_min(calls: dict[str, Callable[[], object]], rounds: int, sample_ms: float) -> dict[str, float]:
    """Minimum CPU seconds per call of each candidate over ``rounds`` interleaved samples."""
    numbers = {}
    for name, call in calls.items():
        call()
        start = time.process_time()
        n = 0
        while time.process_time() - start < sample_ms / 1000 or n < 2:
            call()
            n += 1
        numbers[name] = n
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.process_time()
            for _ in range(numbers[name]):
                call()
            best[name] = min(best[name], (time.process_time() - start) / numbers[name])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 128, 197])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sample-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernel = load_extension()
    facts = {
        "cpu": cpu_model(),
        "variant": requested_variant(),
        "int8_path": kernel.int8_path(0),
        "int8_path_no_vnni": kernel.int8_path(3),
        "threads": 1,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    rows = []
    with torch.no_grad():
        for model_name in ("layer_3072x768", "layer_768x3072", "vit_b16_mlp_stack"):
            model = build_model(model_name, args.density)
            int8 = swap_linears(model, lambda lin: Int8CondensedLinear.from_condensed(CondensedLinear.from_masked(lin)))
            steps = window_steps(int8)
            for batch in args.batch:
                x = torch.randn(batch, 3072 if model_name.startswith("layer_3072") else 768)
                # Without VNNI, AVX-512 runs the gathers: minutes at hundreds of rows, so only up to 8 rows.
                without_vnni = batch <= 8 or facts["int8_path_no_vnni"].endswith("_window")
                times = interleaved_min(candidates(model, x, int8, without_vnni), args.rounds, args.sample_ms)
                rows.append({"model": model_name, "batch": batch, "seconds": times, "window_steps": steps})
                dense = times["dense fp32"]
                print(f"{model_name} B={batch} [{facts['variant']}, int8 path {facts['int8_path']}]")
                for name, seconds in times.items():
                    print(f"  {name:28s} {seconds * 1e6:10.1f} us  {dense / seconds:6.2f}x dense fp32")
                if steps:
                    ns = times["int8 condensed"] * 1e9 / (steps * batch)
                    print(f"  int8 condensed: {steps} window steps, {ns:.3f} ns per step and row (all costs included)")
    facts["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(facts))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
