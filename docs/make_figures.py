"""Generate the method figures in docs/assets/ from the library's own mask functions.

python docs/make_figures.py      # writes docs/assets/{constant_fan_in,ablation,condensed_layout}.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lightning_srigl.sparsity import random_constant_fan_in_mask, random_unstructured_mask, srigl_update

ASSETS = Path(__file__).resolve().parent / "assets"
OUT, IN, DENSITY = 12, 24, 0.25


def _show_mask(ax: plt.Axes, mask: torch.Tensor, title: str) -> None:
    ax.imshow(mask.float().numpy(), cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    fan_in = mask.sum(dim=1).tolist()
    for row, k in enumerate(fan_in):
        ax.text(mask.shape[1] + 0.3, row, str(int(k)), va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("input (fan-in)")
    ax.set_ylabel("output neuron")
    ax.set_xticks([])
    ax.set_yticks([])


def constant_fan_in() -> Path:
    """Unstructured RigL mask vs SRigL constant fan-in mask at the same density (fan-in per row on the right)."""
    g = torch.Generator().manual_seed(0)
    budget = round(OUT * IN * DENSITY)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    _show_mask(axes[0], random_unstructured_mask((OUT, IN), budget, g), "RigL: unstructured (fan-in varies)")
    _show_mask(axes[1], random_constant_fan_in_mask((OUT, IN), budget, g), "SRigL: constant fan-in (k = 6)")
    fig.tight_layout()
    return _save(fig, "constant_fan_in.png")


def ablation() -> Path:
    """One real ``srigl_update`` with ``gamma_sal=0.3`` where four neurons have little saliency."""
    g = torch.Generator().manual_seed(1)
    budget = round(OUT * IN * DENSITY)
    mask = random_constant_fan_in_mask((OUT, IN), budget, g)
    weight = torch.randn(OUT, IN, generator=g) * mask
    grad = torch.randn(OUT, IN, generator=g)
    weak = torch.tensor([2, 5, 8, 11])
    weight[weak] *= 1e-3
    grad[weak] *= 1e-3
    update = srigl_update(weight, mask, grad, budget=budget, drop_fraction=0.3, gamma_sal=0.3)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    _show_mask(axes[0], mask, "before: 12 neurons, fan-in 6")
    _show_mask(axes[1], update.mask, f"after: {len(update.ablated)} ablated, survivors fan-in {update.fan_in}")
    fig.tight_layout()
    return _save(fig, "ablation.png")


def condensed_layout() -> Path:
    """A constant fan-in mask with one ablated row, and the condensed values/indices it becomes."""
    g = torch.Generator().manual_seed(2)
    out, inp, k = 6, 12, 3
    mask = random_constant_fan_in_mask((out, inp), out * k, g)
    mask[3] = False
    active = mask.any(dim=1).nonzero().flatten()
    indices = torch.stack([mask[r].nonzero().flatten() for r in active])
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), gridspec_kw={"width_ratios": [inp, k, k]})
    _show_mask(axes[0], mask, "masked weight (6 x 12), row 3 ablated")
    for ax, title, cells in (
        (axes[1], "values (5 x 3)", [[f"w{int(r)},{int(c)}" for c in row] for r, row in zip(active, indices)]),
        (axes[2], "indices (5 x 3) int16", [[str(int(c)) for c in row] for row in indices]),
    ):
        ax.imshow(torch.zeros(len(active), k).numpy(), cmap="Greys", vmin=0, vmax=1)
        for i, row in enumerate(cells):
            for j, text in enumerate(row):
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_yticks(range(len(active)), [f"row {int(r)}" for r in active], fontsize=7)
        ax.set_xticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, "condensed_layout.png")


def _save(fig: plt.Figure, name: str) -> Path:
    ASSETS.mkdir(exist_ok=True)
    path = ASSETS / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    for make in (constant_fan_in, ablation, condensed_layout):
        print(make())
