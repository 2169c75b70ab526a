"""Per-rank peak memory and communication of one SRigL update under FSDP2 and under DDP (CPU ranks, gloo).

A real ``Trainer.fit`` of a ViT-B MLP block's two layers, ``Linear(768, 3072)`` and ``Linear(3072, 768)``
(fp32, SGD with momentum), with ``SRigLCallback(sparsity=0.9, delta_t=1, t_end_fraction=1, no_ablation=[])``
over 2 steps: the update runs once, after step 1, with neuron ablation on both layers. Under
``ModelParallelStrategy`` each layer is ``fully_shard``-ed (each rank holds half the rows); under DDP every
rank holds whole layers. As in ``scripts/update_memory.py``, probe callbacks around ``SRigLCallback`` reset
the peak RSS (``/proc/self/clear_refs``) and read it back (``VmHWM``) around its ``on_train_batch_end``
(re-mask, update, rank check, metrics), with glibc's ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB so that the RSS
follows the live tensors. Every ``torch.distributed`` collective entered in that window is counted with the
bytes of its tensor payload (what one rank contributes; the wire traffic of gloo's algorithms differs).
``fsdp2`` updates both layers in one batch (the default: the rounds do not grow with depth);
``fsdp2-per-layer`` one layer at a time, as the whole-layer (DDP) update does.

Usage (from the repository root; each strategy runs as its own job of 2 processes, or ``--ranks N``)::

    PYTHONPATH=. python scripts/fsdp_update_cost.py [--ranks N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from update_memory import PeakProbe  # scripts/ is on sys.path when this file runs as a script

from lightning_srigl.callbacks import SRigLCallback

WIDTH, HIDDEN = 768, 3072  # ViT-B/16's MLP block


class Collectives:
    """Counts the collectives (and their payload bytes) this rank enters while `on` is set."""

    def __init__(self) -> None:
        self.on = False
        self.calls: list[tuple[str, int]] = []
        for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor"):
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        original = getattr(dist, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                self.calls.append((name, sum(t.numel() * t.element_size() for t in tensors[-1:])))
            return original(*args, **kwargs)

        setattr(dist, name, counted)


class Probe(PeakProbe):
    """`PeakProbe` that also counts the collectives between the two probes (``role="start"`` turns the
    counting on, ``role="end"`` off).

    ``batch_elements`` (on the start probe) overrides how many weights one batch of layers holds in the
    update (``ShardReducer.batch_elements``; 0: layer by layer, as a whole-layer update runs)."""

    def __init__(
        self, role: str, record: dict[str, Any], collectives: Collectives, batch_elements: int | None = None
    ) -> None:
        super().__init__(role, record)
        self.collectives, self.batch_elements = collectives, batch_elements

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch_elements is not None:
            srigl = next(c for c in trainer.callbacks if isinstance(c, SRigLCallback))
            srigl._reducer.batch_elements = self.batch_elements

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_batch_end(trainer, *args)
        if trainer.global_step == 1:
            self.collectives.on = self.role == "start"


class MLPBlock(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, WIDTH))

    def configure_model(self) -> None:
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            mesh = self.device_mesh["data_parallel"]
            for layer in (self.net[0], self.net[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(self, mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def measure(strategy_name: str, folder: Path, ranks: int) -> None:
    """One fit on ``ranks`` processes; each rank writes ``<folder>/<strategy>_rank<r>.json``."""
    collectives = Collectives()
    record: dict[str, Any] = {}
    srigl = SRigLCallback(sparsity=0.9, delta_t=1, t_end_fraction=1.0, no_ablation=[], report=False)
    strategy = (
        ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1, process_group_backend="gloo")
        if strategy_name.startswith("fsdp2")
        else DDPStrategy(process_group_backend="gloo")
    )
    batch_elements = 0 if strategy_name == "fsdp2-per-layer" else None
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", devices=ranks, strategy=strategy, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Probe("start", record, collectives, batch_elements), srigl, Probe("end", record, collectives)],
    )  # fmt: skip
    trainer.fit(MLPBlock(), DataLoader(TensorDataset(torch.randn(4 * ranks, WIDTH)), batch_size=2))
    assert [h["step"] for h in srigl.history] == [1], "exactly one topology update must have run"
    record["collectives"] = len(collectives.calls)
    record["payload_bytes"] = sum(size for _, size in collectives.calls)
    (folder / f"{strategy_name}_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        measure(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return
    ranks = int(sys.argv[2]) if len(sys.argv) == 3 and sys.argv[1] == "--ranks" else 2
    folder = Path("runs/fsdp_update_cost")
    folder.mkdir(parents=True, exist_ok=True)
    weights_mib = 2 * WIDTH * HIDDEN * 4 / 2**20
    print(f"one SRigL update (sparsity 0.9, ablation on) of Linear({WIDTH}, {HIDDEN}) + Linear({HIDDEN}, {WIDTH})")
    print(f"fp32 weights {weights_mib:.1f} MiB in all; {ranks} CPU ranks, gloo; per rank:")
    for name in ("ddp", "fsdp2", "fsdp2-per-layer"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--one", name, str(folder), str(ranks)]
        subprocess.run(command, check=True, capture_output=True, env=env)
        for rank in range(ranks):
            r = json.loads((folder / f"{name}_rank{rank}.json").read_text())
            peak = (r["peak_kib"] - r["rss_kib"]) / 1024
            print(
                f"  {name:15s} rank {rank}: peak RSS increase {peak:6.1f} MiB ({peak / weights_mib:.2f}x the weights), "
                f"{r['collectives']} collectives, {r['payload_bytes']} bytes payload"
            )


if __name__ == "__main__":
    main()
