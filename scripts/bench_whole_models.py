"""End-to-end latency of whole sparse models, accelerated vs dense, in one run (docs/whole-models.md).

Usage (from the repository root)::

    python scripts/bench_whole_models.py                      # this CPU's best kernels, 1 thread
    python scripts/bench_whole_models.py --isa avx2           # the AVX2 machine class (see below)
    python scripts/bench_whole_models.py --models resnet18_cifar --batches 1 --seconds 1

Models: the example projects' CIFAR-10 ResNet-18 (32x32), ImageNet ResNet-50 and ViT-B/16 (224x224),
and, only when ``transformers`` is installed, GPT-2 small built from a ``GPT2Config`` (128 tokens),
BERT-base (``BertConfig()``, 128 tokens), and a Llama-style decoder of about 100 M parameters
(``LlamaConfig``: 12 layers, width 768, MLP 2048, vocabulary 8192) at 128-token prefill
(``llama_prefill``) and decoding one token after a 128-token prompt with the KV cache
(``llama_decode``: time per generated token).
Each gets 90 % SRigL masks (ERK for the ResNets, uniform for the transformers) with a share of
ablated neurons, then is timed end to end as dense fp32, dense channels-last (ResNets), dense bf16
(where the CPU has native bf16) and accelerated, at each batch size.

``--isa avx2`` re-runs the benchmark in a subprocess limited to AVX2: our kernels through
``LIGHTNING_SRIGL_CPU_ISA=avx2`` and torch's dense kernels through ``ATEN_CPU_CAPABILITY=avx2``,
``MKL_ENABLE_INSTRUCTIONS=AVX2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``, which stands in for an AVX2-only CPU
(same caches and clock as the host). At 1 thread the samples are the timing thread's CPU time, robust
on a shared machine; with more threads, wall time (run those in a quiet window).
Writes ``<out>/whole_models.csv`` and ``<out>/whole_models.png`` (default ``runs/whole_models``, ignored
by git); with ``--doc`` also the table in ``docs/whole-models.md`` and its CSV and plot in
``docs/assets`` (the documented rows of the (model, batch) pairs not measured in this run are kept, each
with the command that measured it).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # example_projects

from example_projects.cifar10_resnet18.model import ResNet18  # noqa: E402
from example_projects.imagenet_resnet50.model import ResNet50  # noqa: E402
from example_projects.imagenet_vit_b16.model import VisionTransformer  # noqa: E402
from lightning_srigl.benchmark.machine import emulation_env, is_emulating  # noqa: E402
from lightning_srigl.benchmark.whole_model import ModelCase, benchmark_model  # noqa: E402
from lightning_srigl.benchmark.whole_model_report import markdown_table, plot_speedups, rich_table  # noqa: E402

DOC = ROOT / "docs" / "whole-models.md"
DOC_CSV = ROOT / "docs" / "assets" / "whole_models.csv"
DOC_MARKER = "<!-- results -->"


def images(side: int):
    return lambda batch: torch.randn(batch, 3, side, side)


def gpt2_case(smoke: bool) -> ModelCase | None:
    """GPT-2 small from its config (or a 2-layer one for --smoke), or None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("transformers is not installed: GPT-2 skipped (pip install transformers)", file=sys.stderr)
        return None
    shape = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 500} if smoke else {}
    config = GPT2Config(**shape, use_cache=False)
    tokens = 16 if smoke else 128
    return ModelCase(
        "gpt2", lambda: GPT2LMHeadModel(config), lambda batch: torch.randint(0, config.vocab_size, (batch, tokens)),
        distribution="uniform", ablated=0.1, logits=lambda out: out.logits,
    )  # fmt: skip


class DecodeStep(nn.Module):
    """One token of greedy decoding with the KV cache: ``(token (B, 1), prompt (B, P)) -> logits (B, 1, vocab)``.

    The first call (or a new prompt) prefills the cache with ``prompt`` through this module's own model;
    every call then decodes ``token`` after the prompt and crops the cache back to the prompt, so each
    call times one generated token at the same cache length.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cache: object | None = None
        self.prompt: torch.Tensor | None = None

    def forward(self, token: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        if self.prompt is not prompt:
            self.cache = self.model(prompt, use_cache=True).past_key_values
            self.prompt = prompt
        logits = self.model(token, past_key_values=self.cache, use_cache=True).logits
        self.cache.crop(-token.shape[1])  # drop the token just decoded
        return logits


def hf_cases(smoke: bool, tokens: int) -> dict[str, ModelCase]:
    """BERT-base (``BertConfig()``) and a Llama-style decoder of about 100 M parameters at ``tokens``-token
    prefill, and that decoder's token-by-token decode with the KV cache (a ``tokens``-token prompt), or
    nothing without transformers."""
    try:
        from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
    except ImportError:
        print("transformers is not installed: BERT and Llama skipped (pip install transformers)", file=sys.stderr)
        return {}
    small = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    bert = BertConfig(**(small | {"vocab_size": 500} if smoke else {}))
    llama = LlamaConfig(**(small | {"vocab_size": 500, "num_key_value_heads": 4} if smoke else {
        "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_key_value_heads": 12, "vocab_size": 8192,
    }))  # fmt: skip
    ids = lambda vocab, length: lambda batch: torch.randint(0, vocab, (batch, length))  # noqa: E731
    prompt_and_token = lambda batch: (  # noqa: E731
        torch.randint(0, llama.vocab_size, (batch, 1)),
        ids(llama.vocab_size, tokens)(batch),
    )
    return {
        "bert": ModelCase(
            "bert", lambda: BertModel(bert, add_pooling_layer=False), ids(bert.vocab_size, tokens),
            distribution="uniform", logits=lambda out: out.last_hidden_state,
        ),
        "llama_prefill": ModelCase(
            "llama_prefill", lambda: LlamaForCausalLM(llama), ids(llama.vocab_size, tokens),
            distribution="uniform", logits=lambda out: out.logits,
        ),
        "llama_decode": ModelCase(
            "llama_decode", lambda: DecodeStep(LlamaForCausalLM(llama)), prompt_and_token, distribution="uniform",
        ),
    }  # fmt: skip


def cases(smoke: bool) -> dict[str, ModelCase]:
    """The benchmark's models; ``smoke`` makes each tiny (same code paths, for the tests)."""
    vit = {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128} if smoke else {}
    found = {
        "resnet18_cifar": ModelCase(
            "resnet18_cifar", lambda: ResNet18(10, 8 if smoke else 64), images(32), "erk", 0.1, True
        ),
        "resnet50": ModelCase(
            "resnet50", lambda: ResNet50(10, 8, (1, 1, 1, 1)) if smoke else ResNet50(), images(32 if smoke else 224),
            "erk", 0.1, True,
        ),
        "vit_b16": ModelCase("vit_b16", lambda: VisionTransformer(**vit), images(32 if smoke else 224), "uniform", 0.3),
    }  # fmt: skip
    gpt2 = gpt2_case(smoke)
    if gpt2 is not None:
        found["gpt2"] = gpt2
    return found | hf_cases(smoke, 16 if smoke else 128)


def write_doc(rows: list[dict]) -> None:
    """Replace everything after the results marker of docs/whole-models.md with the table of ``rows``, and
    under it how each command's rows were measured."""
    text = DOC.read_text()
    head = text.split(DOC_MARKER)[0]
    facts = []
    for command in dict.fromkeys(r["command"] for r in rows):
        run = [r for r in rows if r["command"] == command]
        first = run[0]
        shown = re.sub(r" --out \S+", "", command)  # --doc writes into docs/ wherever --out points
        facts.append(
            f"* {', '.join(dict.fromkeys(r['model'] for r in run))}: `{shown}`. CPU: {first['cpu_model']}; kernels: "
            f"{first['kernel_variant']}; ATen capability: {first['aten_capability']}; "
            f"ISA limits: {first['isa_limits']}; "
            f"{first['threads']} thread(s); clock: {first['clock']}; load average "
            f"{min(float(r['load_average']) for r in run)}–{max(float(r['load_average']) for r in run)}."
        )
    body = f"{markdown_table(rows)}\n" + "\n".join(facts) + "\n\n![speedups](assets/whole_models.png)\n"
    DOC.write_text(f"{head}{DOC_MARKER}\n\n{body}")


def merged_with_documented(rows: list[dict]) -> list[dict]:
    """The documented rows (``docs/assets/whole_models.csv``) of the (model, batch) pairs this run did not
    measure, then this run's rows: a run of some models or batch sizes updates their rows, keeps the others."""
    measured = {(r["model"], int(r["batch"])) for r in rows}
    if not DOC_CSV.exists():
        return rows
    with DOC_CSV.open() as handle:
        kept = [_parsed(r) for r in csv.DictReader(handle) if (r["model"], int(r["batch"])) not in measured]
    return kept + rows


def document(rows: list[dict]) -> list[dict]:
    """Merge ``rows`` into the documented ones and rewrite docs/whole-models.md, its CSV and its plot;
    returns the merged rows."""
    rows = merged_with_documented(rows)
    write_csv(rows, DOC_CSV)
    plot_speedups(rows, DOC.parent / "assets" / "whole_models.png")
    write_doc(rows)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _parsed(row: dict[str, str]) -> dict:
    """A CSV row with its numbers as numbers."""
    numbers = {
        "batch": int,
        "threads": int,
        "weight_bytes": int,
        "speedup": float,
        "latency_ms": float,
        "max_logit_diff": float,
    }
    return {k: numbers[k](v) if k in numbers else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_cifar", "resnet50", "vit_b16", "gpt2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of samples per variant and batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per candidate layer in accelerate()")
    parser.add_argument("--isa", choices=["native", "avx2", "avx512", "scalar"], default="native")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "whole_models", help="this run's CSV and plot")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/whole-models.md")
    parser.add_argument("--smoke", action="store_true", help="tiny models (for the tests)")
    parser.add_argument(
        "--from-csv",
        type=Path,
        help="redraw the plot from a run's CSV (with --doc: add its rows to the documented ones)",
    )
    args = parser.parse_args(argv)
    if args.from_csv is not None:  # e.g. a run without --doc, to add to the documented rows
        with args.from_csv.open() as handle:
            rows = [_parsed(row) for row in csv.DictReader(handle)]
        rows = document(rows) if args.doc else rows
        plot_speedups(rows, args.out / "whole_models.png")
        return
    if args.isa != "native" and not is_emulating(args.isa):  # the limits must be set before torch loads
        env = {**os.environ, **emulation_env(args.isa)}
        argv = argv if argv is not None else sys.argv[1:]
        sys.exit(subprocess.run([sys.executable, __file__, *argv], env=env, check=False).returncode)
    available = cases(args.smoke)
    optional = ("gpt2", "bert", "llama_prefill", "llama_decode")  # need transformers
    unknown = [m for m in args.models if m not in available and m not in optional]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(available)}")
    command = "python scripts/bench_whole_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for name in [m for m in args.models if m in available]:
        rows += benchmark_model(
            available[name], args.batches, sparsity=args.sparsity, threads=args.threads,
            min_run_time=args.seconds, accelerate_repeats=args.repeats,
        )  # fmt: skip
        rows = [{**row, "command": command} for row in rows]
        Console(width=200).print(rich_table([r for r in rows if r["model"] == name], f"{name}: end-to-end latency"))
        write_csv(rows, args.out / "whole_models.csv")  # after every model, so a long run keeps what it measured
    rows = document(rows) if args.doc else rows
    plot_speedups(rows, args.out / "whole_models.png")
    print(f"wrote {args.out / 'whole_models.csv'} and {args.out / 'whole_models.png'}")


if __name__ == "__main__":
    main()
