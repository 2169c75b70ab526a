"""Sparse training under FSDP2 (``ModelParallelStrategy`` + ``fully_shard``) against DDP, CPU processes (gloo).

``tests/callbacks/test_fsdp.py`` starts `run_rank` in every rank's process at once, with the environment
``torchrun`` gives a user's script (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``: Lightning then launches no
processes of its own); the processes are forked from a server that imported this module once, so no rank pays
for importing Lightning again. The scenarios run one after the other in the same processes and process group;
for each, each rank writes what it holds into ``<folder>/<scenario>_rank<r>.pt`` (and its fits' files under
``<folder>/<scenario>/``):

* ``match``: per case (``SRigLCallback()``, SRigL with strong ablation, ``RigLCallback()``) the model state
  after an FSDP2 fit (this rank's rows of every tensor, and where they start) and after the same fit
  under DDP (whole tensors);
* ``resume``: the FSDP2 state after an uninterrupted fit, after a fit resumed from the sharded checkpoint
  written mid-run, and after the same fit under DDP, with the callback's ``state_dict`` of each.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.utils.data import DataLoader

from lightning_srigl.callbacks import AccelerateCallback, DynamicSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.condensed import save_condensed
from lightning_srigl.masking import is_sharded, local_part, row_sharding
from tests.callbacks.tiny import TinyClassifier, loader


class ShardedClassifier(TinyClassifier):
    """``TinyClassifier`` (32 -> 64 -> 64 -> 4) whose linear layers ``fully_shard`` under ModelParallelStrategy."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()

    def configure_model(self) -> None:
        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or is_sharded(self.net[0].weight):
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


def local_state(model: nn.Module) -> dict[str, Any]:
    """Each tensor of the state dict as this rank holds it, with the first row it holds (0 when whole)."""
    state = {}
    for key, value in model.state_dict().items():
        sharding = row_sharding(value) if is_sharded(value) else None
        state[key] = (local_part(value).detach().clone(), 0 if sharding is None else sharding.start)
    return state


def fit(
    strategy: pl.strategies.Strategy,
    sparsity: DynamicSparsityCallback,
    steps: int,
    extra: list[Callback] = (),  # type: ignore[assignment]
    ckpt_path: str | None = None,
    folder: Path | None = None,
    data: DataLoader | None = None,
    model_class: type[ShardedClassifier] = ShardedClassifier,
    **trainer_args: Any,
) -> tuple[ShardedClassifier, pl.Trainer]:
    trainer = pl.Trainer(
        **trainer_args,
        accelerator="cpu", devices=processes(), strategy=strategy, max_steps=steps, logger=False,
        callbacks=[sparsity, *extra], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in extra), default_root_dir=folder,
    )  # fmt: skip
    model = model_class()
    trainer.fit(model, data if data is not None else loader(0), ckpt_path=ckpt_path)
    return model, trainer


def processes() -> int:
    """How many ranks run (Lightning's teardown drops ``WORLD_SIZE`` from the environment; the group stays)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else int(os.environ["WORLD_SIZE"])


def fsdp() -> ModelParallelStrategy:
    return ModelParallelStrategy(data_parallel_size=processes(), tensor_parallel_size=1, process_group_backend="gloo")


def ddp() -> DDPStrategy:
    return DDPStrategy(process_group_backend="gloo", broadcast_buffers=False)


CASES = {
    "srigl": (SRigLCallback, {}, 150),  # default arguments: one update, at step 100
    "ablation": (SRigLCallback, {"gamma_sal": 0.95, "delta_t": 12, "sparsity": 0.8}, 60),
    "rigl": (RigLCallback, {}, 150),
}


def match(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for case, (cls, kwargs, steps) in CASES.items():
        sharded, _ = fit(fsdp(), cls(**kwargs), steps, folder=folder / case / "fsdp")  # the report on, as by default
        whole, _ = fit(ddp(), cls(**kwargs), steps, folder=folder / case / "ddp")
        record[case] = {"fsdp": local_state(sharded), "ddp": local_state(whole)}
    return record


def resume(folder: Path) -> dict[str, Any]:
    """Every rank trains on all the data as one batch per epoch (no distributed sampler), so every step sees the
    same batch and a resumed fit sees the data the uninterrupted one sees however Lightning restarts the epoch
    it was saved in. The checkpoint at step 9 falls in the gradient window of the update at 10; the one at 27
    holds the end of the uninterrupted fit."""

    def callback() -> SRigLCallback:
        return SRigLCallback(report=False, delta_t=5, grad_accumulation_n=3, gamma_sal=0.5)

    same_data = {"use_distributed_sampler": False}
    data = loader(0, batch_size=96)
    checkpoint = ModelCheckpoint(dirpath=folder / "checkpoints", every_n_train_steps=9, save_top_k=-1)
    whole_run = callback()
    model, _ = fit(fsdp(), whole_run, 27, extra=[checkpoint], folder=folder, data=data, **same_data)
    resumed = callback()
    path = str(folder / "checkpoints" / "epoch=8-step=9.ckpt")
    resumed_model, _ = fit(fsdp(), resumed, 27, ckpt_path=path, folder=folder, data=data, **same_data)
    ddp_run = callback()
    ddp_model, _ = fit(ddp(), ddp_run, 27, folder=folder, data=data, **same_data)
    return {
        "whole": (local_state(model), whole_run.state_dict(), [h["step"] for h in whole_run.history]),
        "resumed": (local_state(resumed_model), resumed.state_dict(), [h["step"] for h in resumed.history]),
        "ddp": (local_state(ddp_model), ddp_run.state_dict(), [h["step"] for h in ddp_run.history]),
    }


class HybridShardedClassifier(ShardedClassifier):
    """``ShardedClassifier`` under HSDP: a (replicate, shard) mesh of 2 x (ranks / 2), rows split over ``shard``."""

    def configure_model(self) -> None:
        if is_sharded(self.net[0].weight):
            return
        mesh = init_device_mesh("cpu", (2, processes() // 2), mesh_dim_names=("replicate", "shard"))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


def hybrid(folder: Path) -> dict[str, Any]:
    """SRigL (ablation on, as by default; an update every 5 steps) under HSDP and under DDP on the same ranks."""

    def callback() -> SRigLCallback:
        return SRigLCallback(delta_t=5, report=False)

    sharded_run, ddp_run = callback(), callback()
    sharded, _ = fit(fsdp(), sharded_run, 20, folder=folder / "hsdp", model_class=HybridShardedClassifier)
    whole, _ = fit(ddp(), ddp_run, 20, folder=folder / "ddp")
    return {
        "hsdp": local_state(sharded),
        "ddp": local_state(whole),
        "steps": ([h["step"] for h in sharded_run.history], [h["step"] for h in ddp_run.history]),
    }


class MetaInitClassifier(TinyClassifier):
    """``TinyClassifier`` whose layers are created in ``configure_model`` on the meta device, then sharded;
    ``ModelParallelStrategy`` materialises them (``reset_parameters``) after sharding."""

    def __init__(self) -> None:
        super().__init__()
        del self.net

    def configure_model(self) -> None:
        if isinstance(self, FSDPModule):
            return  # built and sharded already (configure_model runs again for trainer.test)
        with torch.device("meta"):
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)


class SaveWholeModel(Callback):
    """Listed before ``AccelerateCallback``: the whole masked dense state dict at fit end, gathered on every rank."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = StateDictOptions(full_state_dict=True)
        self.state = {k: v.clone() for k, v in get_model_state_dict(pl_module, options=options).items()}


def accelerate(folder: Path) -> dict[str, Any]:
    """``SRigLCallback()`` then ``AccelerateCallback()`` on a model built in ``configure_model``, ``trainer.test``,
    and rank 0 saves the condensed network."""
    whole = SaveWholeModel()
    accelerated = AccelerateCallback(verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=processes(), strategy=fsdp(), max_steps=150, logger=False,
        callbacks=[SRigLCallback(), whole, accelerated], enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=folder,
    )  # fmt: skip
    model = MetaInitClassifier()
    trainer.fit(model, loader(0))
    metrics = trainer.test(model, loader(1), verbose=False)[0]
    if trainer.is_global_zero:
        save_condensed(model.net, folder / "condensed.pt")
    kinds = {row.name: row.chosen for row in accelerated.report.rows} if accelerated.report else {}
    return {"dense": whole.state, "test_metrics": metrics, "kinds": kinds}


def run_rank(folder: Path, scenarios: list[str], processes: int, rank: int, port: int) -> None:
    """One rank of a run: its environment as ``torchrun`` sets it, its output into ``<folder>/rank<r>.log``, then
    the ``scenarios``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(processes), NODE_RANK="0", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    with (folder / f"rank{rank}.log").open("w") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
        main(folder, scenarios)


def main(folder: Path, scenarios: list[str]) -> None:
    for scenario in scenarios:
        pl.seed_everything(0)
        (folder / scenario).mkdir(exist_ok=True)
        scenarios_by_name = {"match": match, "resume": resume, "accelerate": accelerate, "hybrid": hybrid}
        record = scenarios_by_name[scenario](folder / scenario)
        rank = torch.distributed.get_rank()
        torch.save(record, folder / f"{scenario}_rank{rank}.pt")
