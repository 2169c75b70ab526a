"""The whole-model benchmark: SRigL masks for whole models, and the command the docs print (smoke size)."""

from __future__ import annotations

import csv
import runpy
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from lightning_srigl.benchmark.whole_model import srigl_masks
from lightning_srigl.masking import select_parameters

ROOT = Path(__file__).resolve().parents[1]


def test_srigl_masks_have_constant_fan_in_ablated_neurons_and_the_target_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4, 64), nn.Linear(64, 10))
    masks = srigl_masks(model, 0.9, "erk", 0.25, torch.Generator().manual_seed(0))
    weights = {p.fqn: p.param for p in select_parameters(model)}
    total = sum(w.numel() for w in weights.values())
    active = sum(int(masks[f].sum()) if f in masks else weights[f].numel() for f in weights)
    assert abs(active / total - 0.1) < 0.02
    for fqn, mask in masks.items():
        fan_in = mask.flatten(1).sum(dim=1)
        alive = fan_in[fan_in > 0]
        assert bool((alive == alive[0]).all()), fqn
        expected_dead = 0 if fqn == "4.weight" else int(0.25 * mask.shape[0])
        assert int((fan_in == 0).sum()) == expected_dead, fqn


def test_the_documented_command_runs_and_writes_exact_rows(tmp_path):
    command = [
        sys.executable, "scripts/bench_whole_models.py", "--smoke",
        "--models", "resnet18_cifar", "vit_b16", "llama_decode",
        "--batches", "1", "--seconds", "0.05", "--repeats", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=600, capture_output=True)
    with (tmp_path / "whole_models.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert (tmp_path / "whole_models.png").stat().st_size > 0
    variants = {(r["model"], r["variant"]) for r in rows}
    assert {
        ("resnet18_cifar", "dense_fp32"),
        ("resnet18_cifar", "dense_channels_last"),
        ("resnet18_cifar", "accelerated"),
    } <= variants
    assert {("vit_b16", "dense_fp32"), ("vit_b16", "accelerated")} <= variants
    assert {("llama_decode", "dense_fp32"), ("llama_decode", "accelerated")} <= variants  # one token per call
    for row in rows:
        if row["variant"] in ("accelerated", "dense_channels_last"):
            assert float(row["max_logit_diff"]) <= 1e-4 * float(row["logit_scale"]), row
        assert row["cpu_model"] and row["kernel_variant"] and float(row["latency_ms"]) > 0
    script = runpy.run_path(str(ROOT / "scripts" / "bench_whole_models.py"))  # its main(), in this process
    script["main"](["--from-csv", str(tmp_path / "whole_models.csv"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "whole_models.png").stat().st_size > 0
    accelerated = next(r for r in rows if r["model"] == "resnet18_cifar" and r["variant"] == "accelerated")
    dense = next(r for r in rows if r["model"] == "resnet18_cifar" and r["variant"] == "dense_fp32")
    assert "condensed" in accelerated["chosen"] or int(accelerated["weight_bytes"]) == int(dense["weight_bytes"])
