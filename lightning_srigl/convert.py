"""One-shot conversion of a trained model to N:M or constant fan-in sparsity (+ AdaPrune).

``convert_to_structured`` takes a dense or unstructured-sparse trained model and, per selected layer,

1. keeps the largest-magnitude weights under the structure: N:M along the input dimension
   ([`nm_mask`][lightning_srigl.sparsity.nm.nm_mask]) or the same number ``k`` per output row
   (constant fan-in, ``rowwise_topk_mask``);
2. optionally reconstructs the layer as AdaPrune does (Hubara et al., NeurIPS 2021): the inputs and
   outputs of every selected layer of the **original** model are cached on a few calibration batches,
   then each layer is optimised on its own with Adam on the kept weights and the bias to minimise
   the MSE between its output and the original output, re-masking after every step. Optionally the
   pruned weights of a group/row are first folded into the kept ones ("absorb mean").

Masks are installed as ``<param>_mask`` buffers ([`MaskedParameters`][lightning_srigl.masking.MaskedParameters])
and the weights are zero outside them, exactly what the callbacks and ``AccelerateCallback`` expect.
Batch-norm re-calibration, which AdaPrune also offers, is not done here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.masking import MaskedParameters, select_structured_parameters
from lightning_srigl.sparsity.nm import check_nm, nm_group_view, nm_mask, nm_ungroup_view
from lightning_srigl.sparsity.structure import Structure
from lightning_srigl.sparsity.topk import as_rows, rowwise_topk_mask
from lightning_srigl.sparsity.validation import as_integer, check_sparsity

__all__ = [
    "ConversionReport",
    "LayerConversion",
    "convert_and_evaluate",
    "convert_to_structured",
    "evaluate_accuracy",
]

_Kind = Literal["n:m", "constant_fan_in"]
_RECONSTRUCTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerConversion:
    """What happened to one layer: its structure, kept magnitude and reconstruction error.

    ``mse_before`` is the calibration MSE of the masked layer before reconstruction, ``mse_after``
    after it (``None`` when no calibration data reached the layer).
    """

    name: str
    structure: str
    shape: tuple[int, ...]
    density: float
    kept_magnitude_fraction: float
    mse_before: float | None = None
    mse_after: float | None = None


@dataclass(frozen=True)
class ConversionReport:
    """Per-layer results of [`convert_to_structured`][lightning_srigl.convert.convert_to_structured], layers left dense
    and their reasons."""

    layers: list[LayerConversion]
    skipped: dict[str, str] = field(default_factory=dict)
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def format_table(self) -> str:
        """A plain-text table, one row per converted layer, then skipped layers and accuracy."""
        lines = [f"{'layer':<32} {'structure':<16} {'density':>7} {'kept|W|':>7} {'mse before':>11} {'mse after':>11}"]
        for r in self.layers:
            before = "-" if r.mse_before is None else f"{r.mse_before:.3e}"
            after = "-" if r.mse_after is None else f"{r.mse_after:.3e}"
            lines.append(
                f"{r.name:<32} {r.structure:<16} {r.density:>7.3f} {r.kept_magnitude_fraction:>7.3f} "
                f"{before:>11} {after:>11}"
            )
        lines += [f"dense: {name} ({reason})" for name, reason in self.skipped.items()]
        if self.accuracy_before is not None and self.accuracy_after is not None:
            lines.append(f"accuracy: {self.accuracy_before:.4f} before -> {self.accuracy_after:.4f} after")
        return "\n".join(lines)


def _check_fan_in_shape(shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``shape`` is a weight shape ``(out, *fan_in_dims)``."""
    if len(shape) < 2:
        raise ValueError(f"Constant fan-in needs a weight of at least 2 dims, got {tuple(shape)}.")


def _magnitude_mask(weight: Tensor, structure: _Kind, n: int, m: int, sparsity: float | None) -> Tensor:
    """Bool mask ``weight.shape`` of the largest ``|weight|`` under the structure."""
    if structure == "n:m":
        return nm_mask(weight.abs(), n, m)
    rows = as_rows(weight.abs())
    keep = round(rows.shape[1] * (1.0 - check_sparsity(sparsity)))
    if keep < 1:
        raise ValueError(
            f"sparsity={sparsity} keeps no weight per row of a {tuple(weight.shape)} weight; lower the "
            "sparsity or exclude the layer."
        )
    return rowwise_topk_mask(rows, keep).reshape(weight.shape)


def _grouped(t: Tensor, structure: _Kind, m: int) -> Tensor:
    """``(G, g)`` view of ``t``: N:M groups or constant fan-in rows."""
    return nm_group_view(t, m) if structure == "n:m" else as_rows(t)


@torch.no_grad()
def _absorb_pruned_(weight: Tensor, mask: Tensor, structure: _Kind, m: int) -> None:
    """Fold each group's (row's) pruned weights into its kept ones: kept += sum(pruned) / n_kept."""
    groups, keep = _grouped(weight, structure, m), _grouped(mask, structure, m)
    shift = (groups * ~keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp(min=1)
    absorbed = (groups + shift) * keep
    weight.copy_(nm_ungroup_view(absorbed, weight.shape) if structure == "n:m" else absorbed.reshape(weight.shape))


def _batch_inputs(batch: Any) -> Any:
    """The model input of a calibration batch: the tensor itself or the first item of ``(x, y, ...)``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(f"Calibration batches must be tensors or (inputs, ...) tuples, got {type(batch).__name__}.")


@torch.no_grad()
def _cache_layer_io(
    model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[Any]
) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """Record ``(input, output)`` of each module on every batch, running ``model`` unchanged in eval mode."""
    cache: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in modules}

    def recorder(name: str) -> Any:
        return lambda _module, args, output: cache[name].append((args[0].detach(), output.detach()))

    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            model(_batch_inputs(batch).to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return cache


@torch.no_grad()
def _layer_mse(module: nn.Module, samples: list[tuple[Tensor, Tensor]]) -> float:
    """Mean squared error of ``module`` against the cached original outputs, over all samples."""
    total = sum(F.mse_loss(module(x).float(), y.float(), reduction="sum").item() for x, y in samples)
    return total / sum(y.numel() for _, y in samples)


def _reconstruct(
    module: nn.Module, mask: Tensor, samples: list[tuple[Tensor, Tensor]], steps: int, lr: float, bias_lr: float
) -> tuple[float, float]:
    """AdaPrune on one layer: Adam on the kept weights and bias, re-masked every step.

    Returns ``(mse_before, mse_after)``; the weights are reverted if the optimisation did not help.
    """
    weight, bias = module.weight, module.bias
    mse_before = _layer_mse(module, samples)
    start = [t.detach().clone() for t in (weight, bias) if t is not None]
    trainable = [t for t in (weight, bias) if t is not None]
    grad_flags = [t.requires_grad for t in trainable]
    groups = [{"params": [weight], "lr": lr}] + ([{"params": [bias], "lr": bias_lr}] if bias is not None else [])
    optimizer = torch.optim.Adam(groups)
    try:
        for t in trainable:
            t.requires_grad_(True)
        with torch.enable_grad():
            for step in range(steps):
                x, y = samples[step % len(samples)]
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(module(x).float(), y.float()).backward()
                weight.grad.mul_(mask)
                optimizer.step()
                with torch.no_grad():
                    weight.mul_(mask)
    finally:
        for t, flag in zip(trainable, grad_flags):
            t.requires_grad_(flag)
            t.grad = None
    mse_after = _layer_mse(module, samples)
    if mse_after > mse_before:
        with torch.no_grad():
            for t, saved in zip(trainable, start):
                t.copy_(saved)
        mse_after = mse_before
    return mse_before, mse_after


def convert_to_structured(
    model: nn.Module,
    structure: str | Structure = "n:m",
    n: int | None = None,
    m: int | None = None,
    sparsity: float | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_first_dense: bool = True,
    keep_last_dense: bool = True,
    calibration_batches: Iterable[Any] | None = None,
    reconstruction_steps: int = 200,
    lr: float = 1e-3,
    bias_lr: float = 1e-2,
    absorb_mean: bool = False,
) -> ConversionReport:
    """Make a trained model N:M or constant fan-in sparse in place, optionally reconstructing layers.

    Args:
        model: dense or unstructured-sparse trained network (modified in place).
        structure: an N:M pattern such as ``"2:4"`` (or ``"n:m"`` with ``n`` and ``m``), or
            ``"constant_fan_in"`` (``round(fan_in * (1 - sparsity))`` weights per output row; needs
            ``sparsity``): any spelling `Structure.parse` takes.
        n: with ``structure="n:m"``, the weights kept in every group of ``m`` consecutive inputs (default 2).
        m: with ``structure="n:m"``, the size of the groups (default 4); layers whose input dim ``m`` does
            not divide stay dense.
        sparsity: per-layer sparsity for constant fan-in (ignored for N:M, which is ``1 - n/m``).
        include: ``fnmatch`` patterns of the parameter names to convert (default: every eligible
            weight); an explicit ``include`` of a weight that cannot carry the structure is an error.
        exclude: ``fnmatch`` patterns of parameter names to leave dense.
        keep_first_dense: leave the model's first sparsifiable weight dense (e.g. a 3-channel stem).
        keep_last_dense: leave the model's last sparsifiable weight dense (e.g. the classifier head).
        calibration_batches: a few batches (tensors or ``(x, y)`` tuples, e.g. a short DataLoader)
            to reconstruct with; ``None`` does magnitude pruning only.
        reconstruction_steps: Adam steps per layer (one cached batch per step).
        lr: Adam learning rate of the kept weights during reconstruction.
        bias_lr: Adam learning rate of the bias during reconstruction.
        absorb_mean: before reconstruction, add each group's pruned weight sum, divided by the number
            kept, to its kept weights (AdaPrune's initialisation).

    Returns:
        A [`ConversionReport`][lightning_srigl.convert.ConversionReport].
    """
    parsed = Structure.parse(structure, n, m)  # an impossible pattern raises: it would skip every layer
    kind: _Kind = "constant_fan_in" if parsed.nm is None else "n:m"
    if parsed.nm is None:
        if sparsity is None:
            raise ValueError("structure='constant_fan_in' needs sparsity=..., e.g. sparsity=0.9.")
        sparsity = check_sparsity(sparsity)
        n = m = 0  # unused by constant fan-in
    else:
        n, m = parsed.nm
    reconstruction_steps = as_integer(reconstruction_steps, "reconstruction_steps", 0)
    check_shape = (lambda shape: check_nm(shape, n, m)) if kind == "n:m" else _check_fan_in_shape
    selected, skipped = select_structured_parameters(
        model, check_shape, include, exclude, keep_first_dense, keep_last_dense
    )
    reconstructable = {p.fqn: p.module for p in selected if isinstance(p.module, _RECONSTRUCTABLE)}
    cache = _cache_layer_io(model, reconstructable, calibration_batches) if calibration_batches is not None else {}
    masks = {p.fqn: _magnitude_mask(p.weight.detach(), kind, n, m, sparsity) for p in selected}
    masked = MaskedParameters(selected)
    masked.install_(masks)
    layers = []
    for p in selected:
        mask = masked.mask(p.fqn)
        weight = p.weight.detach()
        kept = float((weight.abs() * mask).sum() / weight.abs().sum().clamp(min=1e-30))
        if absorb_mean:
            _absorb_pruned_(p.weight.data, mask, kind, m)
        with torch.no_grad():
            p.weight.mul_(mask)
        mse = (None, None)
        if cache.get(p.fqn):
            mse = _reconstruct(p.module, mask, cache[p.fqn], reconstruction_steps, lr, bias_lr)
        label = f"{n}:{m}" if kind == "n:m" else f"fan-in {int(as_rows(mask)[0].sum())}"
        layers.append(LayerConversion(p.fqn, label, tuple(p.shape), mask.float().mean().item(), kept, *mse))
    return ConversionReport(layers=layers, skipped=skipped)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataloader: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` batches (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for x, y, *_ in dataloader:
            prediction = model(x.to(device)).argmax(dim=-1)
            correct += int((prediction == y.to(device)).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("The evaluation dataloader yielded no samples.")
    return correct / total


def convert_and_evaluate(
    model: nn.Module,
    eval_dataloader: Iterable[Any],
    calibration_dataloader: Iterable[Any] | None = None,
    calibration_batches: int = 8,
    **convert_kwargs: Any,
) -> ConversionReport:
    """Measure accuracy, convert with [`convert_to_structured`][lightning_srigl.convert.convert_to_structured], measure
    again.

    Args:
        model: trained classifier (modified in place).
        eval_dataloader: ``(x, y)`` batches for top-1 accuracy before and after.
        calibration_dataloader: batches for reconstruction (``None`` = magnitude pruning only); the
            first ``calibration_batches`` of them are used.
        convert_kwargs: forwarded to [`convert_to_structured`][lightning_srigl.convert.convert_to_structured]
            (``structure``, ``n``, ``m``, ...).

    Returns:
        The report with ``accuracy_before`` and ``accuracy_after`` filled in.
    """
    before = evaluate_accuracy(model, eval_dataloader)
    batches = None
    if calibration_dataloader is not None:
        batches = [b for _, b in zip(range(calibration_batches), calibration_dataloader)]
    report = convert_to_structured(model, calibration_batches=batches, **convert_kwargs)
    return replace(report, accuracy_before=before, accuracy_after=evaluate_accuracy(model, eval_dataloader))
