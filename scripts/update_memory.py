"""Peak memory of one SRigL topology update, against the bytes of the layer's weight.

A real ``Trainer.fit`` of one ``nn.Linear(size, size)`` (fp32, SGD with momentum, batch 1) with
``SRigLCallback(delta_t=1, t_end_fraction=1)`` over 2 steps: the update runs once, after step 1, in
``on_train_batch_end``. The layer is the model's last, so SRigL protects it from ablation by default;
``--ablate`` (``no_ablation=[]``) measures the update with the neuron-ablation step as well. Two probe callbacks sit
around ``SRigLCallback`` in the callback list, so
only its ``on_train_batch_end`` (re-mask, then the update) runs between them: the first resets the
process's peak RSS (``/proc/self/clear_refs``, Linux) and records the RSS, the second reads the new
peak. The figure is ``(peak - rss before) / weight bytes``; the target is <= 3.

Each child runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB: every tensor buffer is then its
own mapping, returned to the system when freed, so the RSS follows the live tensors. With glibc's default
(a threshold that grows to the largest freed block), which blocks stay cached inside the process depends
on which thread freed what, and the same update reads anywhere from 2x to 4x.

Each sparsity runs in its own process. Usage (from the repository root)::

    PYTHONPATH=. python scripts/update_memory.py --size 4096 --sparsity 0.5 0.99 [--ablate]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_srigl.callbacks import SRigLCallback


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


class PeakProbe(Callback):
    """``role="start"``: reset the peak RSS and note the RSS; ``role="end"``: note the peak."""

    def __init__(self, role: str, record: dict[str, int]) -> None:
        self.role, self.record = role, record

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step != 1:
            return
        if self.role == "start":
            Path("/proc/self/clear_refs").write_text("5")
            self.record["rss_kib"] = _status_kib("VmRSS")
        else:
            self.record["peak_kib"] = _status_kib("VmHWM")


class OneLayer(pl.LightningModule):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.layer = nn.Linear(size, size, bias=False)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def measure(size: int, sparsity: float, ablate: bool) -> dict[str, float]:
    """Run the update once in this process; returns the peak increase in MiB and its ratio to the weight."""
    torch.manual_seed(0)
    record: dict[str, int] = {}
    srigl = SRigLCallback(
        sparsity=sparsity, delta_t=1, t_end_fraction=1.0, report=False, no_ablation=[] if ablate else None
    )
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[PeakProbe("start", record), srigl, PeakProbe("end", record)],
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(2, size)), batch_size=1)
    trainer.fit(OneLayer(size), data)
    assert [h["step"] for h in srigl.history] == [1], "exactly one topology update must have run"
    weight_mib = size * size * 4 / 2**20
    peak_mib = (record["peak_kib"] - record["rss_kib"]) / 1024
    return {"weight_mib": weight_mib, "peak_increase_mib": peak_mib, "ratio": peak_mib / weight_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.99])
    parser.add_argument("--ablate", action="store_true", help="let the layer ablate neurons (no_ablation=[])")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one sparsity
    args = parser.parse_args()
    if args.one:
        result = measure(args.size, args.sparsity[0], args.ablate)
        print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))
        return
    torch_threads = torch.get_num_threads()
    ablation = "with neuron ablation" if args.ablate else "output layer, no ablation"
    print(
        f"one SRigL update of a {args.size}x{args.size} fp32 layer ({ablation}, {torch_threads} threads), "
        "peak RSS increase:"
    )
    for sparsity in args.sparsity:
        command = [sys.executable, __file__, "--one", "--size", str(args.size), "--sparsity", str(sparsity)]
        command += ["--ablate"] if args.ablate else []
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
        run = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        output = run.stdout.strip().splitlines()[-1]
        print(f"  sparsity {sparsity}: {output}")


if __name__ == "__main__":
    main()
