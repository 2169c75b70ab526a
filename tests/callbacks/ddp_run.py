"""A user's DDP script with default callback arguments: ``fit`` (2 CPU processes, gloo), then ``test``.

Run by ``tests/callbacks/test_ddp.py`` as ``python -m tests.callbacks.ddp_run <folder> [--accelerate]
[--fit-only] [--spawn]``; Lightning's DDP launcher starts rank 1 by running the same command again
(``--spawn``: ``strategy="ddp_spawn"``, which pickles the callbacks into two new processes; only
the masks are saved then, by the ranks, and the script ends after fit). Each rank
saves, into ``<folder>``, its masks at the end of fit (``rank<r>_masks.pt``, before any acceleration),
its update history, its model state after ``trainer.test`` (``rank<r>_final.pt``; after fit with
``--fit-only``, where the script ends right after fit, as a training script does) and the collectives
it entered, in order: ranks that enter different ones (a collective in rank-zero-only code) can
deadlock, or pair messages meant for other calls, depending on the backend and message sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from lightning_srigl.callbacks import AccelerateCallback, SRigLCallback
from lightning_srigl.masking import masked_weights
from tests.callbacks.tiny import TinyClassifier, loader


class SaveMasks(Callback):
    """Listed after SRigLCallback and before AccelerateCallback: each rank saves its masks at fit end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        masks = {m.fqn: m.mask.clone() for m in masked_weights(pl_module)}
        torch.save(masks, self.folder / f"rank{trainer.global_rank}_masks.pt")


class RecordingDDPStrategy(DDPStrategy):
    """``strategy="ddp"`` that notes every collective this rank enters through the strategy."""

    def __init__(self) -> None:
        super().__init__()
        self.collectives: list[str] = []

    def broadcast(self, obj, src=0):  # noqa: ANN001, ANN201 - the strategy's signature
        self.collectives.append("broadcast")
        return super().broadcast(obj, src)

    def barrier(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.collectives.append("barrier")
        return super().barrier(*args, **kwargs)

    def all_gather(self, tensor, group=None, sync_grads=False):  # noqa: ANN001, ANN201
        self.collectives.append("all_gather")
        return super().all_gather(tensor, group, sync_grads)

    def reduce(self, tensor, group=None, reduce_op="mean"):  # noqa: ANN001, ANN201
        self.collectives.append("reduce")
        return super().reduce(tensor, group, reduce_op)


def main(folder: Path, accelerate: bool, test: bool, spawn: bool) -> None:
    pl.seed_everything(0)
    srigl = SRigLCallback()
    callbacks = [srigl, SaveMasks(folder)] + ([AccelerateCallback()] if accelerate else [])
    if spawn:
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=150, default_root_dir=folder,
            callbacks=callbacks, enable_progress_bar=False,
        )  # fmt: skip
        trainer.fit(TinyClassifier(), loader(0))
        return
    strategy = RecordingDDPStrategy()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=150, default_root_dir=folder,
        callbacks=callbacks, enable_progress_bar=False,
    )  # fmt: skip
    model = TinyClassifier()
    trainer.fit(model, loader(0))
    metrics = trainer.test(model, loader(1), verbose=False)[0] if test else {}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    steps = [h["step"] for h in srigl.history]
    record = {"state": state, "steps": steps, "metrics": metrics, "collectives": strategy.collectives}
    torch.save(record, folder / f"rank{trainer.global_rank}_final.pt")


if __name__ == "__main__":
    flags = sys.argv[2:]
    spawn = "--spawn" in flags
    main(Path(sys.argv[1]), accelerate="--accelerate" in flags, test="--fit-only" not in flags, spawn=spawn)
