"""One training run of ``findings_sweep.py``: the setting, the model recipe, the run and what it records.

A run trains one MNIST-1D model (the MLP of ``example_projects/mnist1d_mlp`` or the 1-D CNN of
``example_projects/mnist1d_cnn``) on one CPU thread with one method (dense, ``RigLCallback`` or
``SRigLCallback``) and returns its test accuracy, the real number of active weights of every sparse
layer, and the active neurons (mask rows with at least one weight, so RigL's implicitly emptied
neurons count like SRigL's explicitly ablated ones) of every layer at 0, 10, ..., 100 % of training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor, nn

from example_projects.mnist1d_mlp.datamodule import MNIST1DDataModule
from lightning_srigl import RigLCallback, SRigLCallback
from lightning_srigl.masking import mask_of
from lightning_srigl.sparsity import fan_in

STEPS_PER_EPOCH = 29  # ceil(3,600 training signals / batch 128)
TRACE_POINTS = 10  # active neurons are recorded at 0, 1/10, ..., 10/10 of the training steps


@dataclass(frozen=True)
class ModelSpec:
    """A model family and its training recipe: ``epochs`` at batch 128, a topology update every ``delta_t`` steps."""

    title: str
    model: type[LightningModule]
    kwargs: dict[str, Any] = field(hash=False)
    epochs: int
    delta_t: int


@dataclass(frozen=True)
class Setting:
    """One training run: ``method`` is ``"dense"``, ``"rigl"`` or ``"srigl"`` (with ``gamma_sal``)."""

    model: str
    schedule: str
    method: str
    sparsity: float
    seed: int
    gamma_sal: float | None = None
    init_std_quirk: bool = False
    # RigL's own ``sparsity`` argument where the sweep matched RigL's weight count to the count SRigL's
    # constant fan-in holds (`findings_sweep.match_rigl_counts`); None: ``sparsity``.
    rigl_sparsity: float | None = None

    @property
    def label(self) -> str:
        """The method as the tables name it, e.g. ``"SRigL γ=0.3"`` or ``"RigL, init 2/fan_in"``."""
        name = (
            f"SRigL γ={self.gamma_sal:g}" if self.method == "srigl" else {"dense": "dense", "rigl": "RigL"}[self.method]
        )
        return f"{name}, init 2/fan_in" if self.init_std_quirk else name


@dataclass
class RunResult:
    """A finished run: test accuracy (0-1), active weights and neurons per sparse layer, CPU seconds.

    ``trace`` holds ``(fraction of training, {layer: active neurons})`` pairs; at the end,
    ``weights`` is ``{sparse layer: active weights}``, ``neurons`` ``{layer: active neurons}``,
    ``rows`` ``{layer: output neurons}`` and ``fan_in`` ``{layer: (mean, max) fan-in of the active rows}``.
    """

    setting: Setting
    accuracy: float | None
    error: str | None
    cpu_seconds: float
    weights: dict[str, int] = field(default_factory=dict)
    neurons: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    fan_in: dict[str, tuple[float, int]] = field(default_factory=dict)
    trace: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict of the run (the setting flattened in)."""
        record = {key: value for key, value in asdict(self).items() if key != "setting"}
        return {**asdict(self.setting), "label": self.setting.label, **record}


def layer_names(net: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of every ``Linear`` and ``Conv1d`` in order, named ``conv1``..., ``fc1``..."""
    names: dict[str, nn.Module] = {}
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            kind = "conv" if isinstance(module, nn.Conv1d) else "fc"
            names[f"{kind}{sum(name.startswith(kind) for name in names) + 1}"] = module
    return names


def _mask(layer: nn.Module) -> Tensor:
    mask = mask_of(layer)
    return mask if mask is not None else torch.ones_like(layer.weight, dtype=torch.bool)


def fan_in_of_active_rows(layer: nn.Module) -> tuple[float, int]:
    """Mean and maximum fan-in of the rows of ``layer``'s mask that have at least one weight."""
    counts = fan_in(_mask(layer))
    active = counts[counts > 0]
    return (round(float(active.float().mean()), 2), int(active.max())) if active.numel() else (0.0, 0)


def active_neurons(net: nn.Module) -> dict[str, int]:
    """``{layer: rows of its mask with at least one active weight}`` (dense layers: every row)."""
    return {name: int((fan_in(_mask(layer)) > 0).sum()) for name, layer in layer_names(net).items()}


class NeuronTrace(Callback):
    """Records `active_neurons` before training and after each tenth of the training steps.

    Runs after the sparsity callback (it is listed after it), so a point that falls on an update
    step sees the updated masks.
    """

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, int]]] = []
        self._next = 1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.points = [(0.0, active_neurons(pl_module))]
        self._next = 1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        total = trainer.estimated_stepping_batches
        while self._next <= TRACE_POINTS and trainer.global_step >= total * self._next / TRACE_POINTS:
            self.points.append((self._next / TRACE_POINTS, active_neurons(pl_module)))
            self._next += 1


def sparsity_callbacks(setting: Setting, delta_t: int) -> list[Callback]:
    """The method's callback with the paper's defaults (ERK, alpha 0.3, updates stop at 75 %)."""
    if setting.method == "dense":
        return []
    common = dict(
        sparsity=setting.sparsity, delta_t=delta_t, seed=setting.seed, report=False,
        init_std_quirk=setting.init_std_quirk,
    )  # fmt: skip
    if setting.method == "rigl":
        if setting.rigl_sparsity is not None:
            common["sparsity"] = setting.rigl_sparsity
        return [RigLCallback(**common)]
    return [SRigLCallback(gamma_sal=setting.gamma_sal, **common)]


def _trainer(callbacks: list[Callback], **limits: Any) -> Trainer:
    """A quiet single-process CPU trainer without validation, checkpoints or logger."""
    return Trainer(
        accelerator="cpu", devices=1, logger=False, limit_val_batches=0, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        **limits,
    )  # fmt: skip


def active_weights_at_start(setting: Setting, spec: ModelSpec) -> int:
    """The active weights of ``setting``'s sparse layers once its masks are drawn (a fit of zero steps)."""
    model = spec.model(**spec.kwargs)
    _trainer(sparsity_callbacks(setting, spec.delta_t), max_steps=0).fit(model, MNIST1DDataModule(batch_size=128))
    return sum(int(_mask(layer).sum()) for layer in layer_names(model).values() if mask_of(layer) is not None)


def train_one(setting: Setting, spec: ModelSpec) -> RunResult:
    """Fit one setting on one CPU thread; accuracy is the final model's on the 1,000 test signals."""
    torch.set_num_threads(1)
    seed_everything(setting.seed, verbose=False)
    model, data = spec.model(**spec.kwargs), MNIST1DDataModule(batch_size=128)
    trace = NeuronTrace()
    trainer = _trainer([*sparsity_callbacks(setting, spec.delta_t), trace], max_epochs=spec.epochs)
    start = time.process_time()
    try:
        trainer.fit(model, data)
    except ValueError as error:  # e.g. a layer whose budget cannot give every neuron one weight
        return RunResult(setting, None, str(error).splitlines()[0], time.process_time() - start)
    data.setup("test")
    x, y = data.splits["test"].tensors
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(x).argmax(dim=-1) == y).float().mean())
    layers = layer_names(model)
    return RunResult(
        setting, accuracy, None, time.process_time() - start,
        weights={name: int(_mask(layer).sum()) for name, layer in layers.items() if mask_of(layer) is not None},
        neurons=active_neurons(model), fan_in={name: fan_in_of_active_rows(layer) for name, layer in layers.items()},
        rows={name: layer.weight.shape[0] for name, layer in layers.items()},
        trace=trace.points,
    )  # fmt: skip
