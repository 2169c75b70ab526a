"""Two-process DDP on CPU (gloo): both ranks end with identical masks and weights."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from lightning_srigl.callbacks import SRigLCallback
from lightning_srigl.sparsity import is_constant_fan_in
from tests.callbacks.tiny import TinyNet, trainer


class SavePerRank(Callback):
    """Each rank writes its masks, weights and update history to ``<folder>/rank<r>.pt`` at fit end."""

    def __init__(self, folder: Path, sparsity: SRigLCallback) -> None:
        self.folder, self.sparsity = folder, sparsity

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        steps = [h["step"] for h in self.sparsity.history]
        torch.save({"state": state, "steps": steps}, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated")
def test_ddp_ranks_hold_identical_masks(tmp_path: Path) -> None:
    srigl = SRigLCallback(sparsity=0.8, delta_t=2, gamma_sal=0.5, report=False)
    # broadcast_buffers=False: DDP must not paper over diverging masks by syncing rank 0's buffers.
    # fork, not spawn: spawn pickles tensors through shared-memory file descriptors, unavailable in some sandboxes.
    strategy = DDPStrategy(start_method="fork", process_group_backend="gloo", broadcast_buffers=False)
    fit = trainer(callbacks=[srigl, SavePerRank(tmp_path, srigl)], max_steps=8, devices=2, strategy=strategy)
    fit.fit(TinyNet())

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == [2, 4]  # 4 steps/epoch per rank, t_end = 6
    masks = [k for k in rank0["state"] if k.endswith("_mask")]
    assert masks == ["net.0.weight_mask", "net.2.weight_mask", "net.4.weight_mask"]
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    assert all(is_constant_fan_in(rank0["state"][k]) for k in masks)
