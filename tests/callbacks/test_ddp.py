"""Two-process DDP on CPU (gloo): both ranks end with identical masks and weights, with default arguments."""

from __future__ import annotations

import os
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[2]


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
    srigl = SRigLCallback(sparsity=0.8, delta_t=2, gamma_sal=0.5)  # report on: rank 0 alone writes it
    # broadcast_buffers=False: DDP must not paper over diverging masks by syncing rank 0's buffers.
    # fork, not spawn: spawn pickles tensors through shared-memory file descriptors, unavailable in some sandboxes.
    strategy = DDPStrategy(start_method="fork", process_group_backend="gloo", broadcast_buffers=False)
    fit = trainer(
        callbacks=[srigl, SavePerRank(tmp_path, srigl)], max_steps=8, devices=2, strategy=strategy,
        default_root_dir=tmp_path,
    )  # fmt: skip
    fit.fit(TinyNet())

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == [2, 4]  # 4 steps/epoch per rank, t_end = 6
    masks = [k for k in rank0["state"] if k.endswith("_mask")]
    assert masks == ["net.0.weight_sparsity_mask", "net.2.weight_sparsity_mask", "net.4.weight_sparsity_mask"]
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    assert all(is_constant_fan_in(rank0["state"][k]) for k in masks)
    assert (tmp_path / "active_neurons.png").exists()


@pytest.mark.parametrize(
    ("accelerate", "test"),
    [(False, False), (False, True), (True, True)],
    ids=["fit", "fit-test", "fit-accelerate-test"],
)
def test_a_ddp_script_with_default_arguments_ends_with_identical_ranks(
    tmp_path: Path, accelerate: bool, test: bool
) -> None:
    """``python script.py`` as a user runs it (Lightning starts rank 1); a deadlock fails by timeout."""
    command = [sys.executable, "-m", "tests.callbacks.ddp_run", str(tmp_path)]
    command += (["--accelerate"] if accelerate else []) + ([] if test else ["--fit-only"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the DDP run did not finish (deadlock?): {str(error.stderr)[-3000:]}")
    assert result.returncode == 0, result.stderr[-4000:]
    masks = [torch.load(tmp_path / f"rank{r}_masks.pt") for r in (0, 1)]
    final = [torch.load(tmp_path / f"rank{r}_final.pt") for r in (0, 1)]
    assert final[0]["collectives"] == final[1]["collectives"]  # no collective in rank-zero-only code
    assert masks[0].keys() == masks[1].keys() and masks[0]
    for fqn, mask in masks[0].items():
        assert torch.equal(mask, masks[1][fqn]), fqn
        assert is_constant_fan_in(mask), fqn
    density = sum(int(m.sum()) for m in masks[0].values()) / sum(m.numel() for m in masks[0].values())
    assert density < 0.15  # the default sparsity 0.9 (ERK keeps the small head denser)
    assert final[0]["steps"] == final[1]["steps"] == [100]  # default delta_t = 100; t_end = 0.75 * 150
    assert ("test_loss" in final[0]["metrics"]) == test
    assert final[0]["state"].keys() == final[1]["state"].keys()
    for key, value in final[0]["state"].items():
        assert torch.equal(value, final[1]["state"][key]), key
    swapped = not any(k.endswith("_mask") for k in final[0]["state"])
    assert swapped == accelerate
    assert (next(tmp_path.rglob("acceleration.csv"), None) is not None) == accelerate
    assert next(tmp_path.rglob("active_neurons.png"), None) is not None


def test_ddp_spawn_with_default_arguments_ends_with_identical_masks(tmp_path: Path) -> None:
    """``strategy="ddp_spawn"`` pickles the callback into each process: it must hold nothing unpicklable
    (a ``torch.Generator`` did, and both processes died)."""
    command = [sys.executable, "-m", "tests.callbacks.ddp_run", str(tmp_path), "--spawn"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the ddp_spawn run did not finish: {str(error.stderr)[-3000:]}")
    assert result.returncode == 0, result.stderr[-4000:]
    masks = [torch.load(tmp_path / f"rank{r}_masks.pt") for r in (0, 1)]
    assert masks[0].keys() == masks[1].keys() and masks[0]
    for fqn, mask in masks[0].items():
        assert torch.equal(mask, masks[1][fqn]), fqn
        assert is_constant_fan_in(mask), fqn
        assert 0 < int(mask.sum()) < mask.numel(), fqn
