"""The end-of-fit report: dense selected layers and overall densities in the table; a plot that says when
no topology update ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_srigl.callbacks import SRigLCallback
from lightning_srigl.callbacks.report import save_active_neurons_plot
from tests.callbacks.tiny import TinyNet, trainer


def test_the_table_shows_the_dense_classifier_and_the_overall_densities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, callback = TinyNet(), SRigLCallback(sparsity=0.8, delta_t=2, dense=["net.4.weight"])
    trainer(callbacks=[callback], max_steps=4, default_root_dir=tmp_path).fit(model)
    text = capsys.readouterr().out
    assert "net.4.weight (dense)" in text and "4x32" in text
    masks = callback.masked.masks()
    sparse_nnz = sum(int(m.sum()) for m in masks.values())
    selected = sum(m.numel() for m in masks.values()) + 4 * 32
    assert f"{(sparse_nnz + 128) / selected:.4f}" in text.split("all selected layers")[1].splitlines()[0]
    parameters = sum(p.numel() for p in model.parameters())
    active = parameters - sum(m.numel() for m in masks.values()) + sparse_nnz
    assert f"{parameters:,}" in text and f"{active / parameters:.4f}" in text.split("whole model")[1]


def test_the_plot_says_when_no_update_ran(tmp_path: Path) -> None:
    """Too short a fit for an update: the line panel held no line and no word about why."""
    callback = SRigLCallback(sparsity=0.8)  # delta_t = 100: no update in 4 steps
    trainer(callbacks=[callback], max_steps=4, default_root_dir=tmp_path).fit(TinyNet())
    assert callback.history == [] and (tmp_path / "active_neurons.png").is_file()
    from matplotlib.axes import Axes

    texts: list[str] = []
    original = Axes.text

    def recording(axes: Axes, x: float, y: float, s: str, *args: object, **kwargs: object) -> object:
        texts.append(s)
        return original(axes, x, y, s, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Axes, "text", recording)
        save_active_neurons_plot(callback._layer_stats(), callback.history, tmp_path / "again.png")
    assert texts == ["no topology update ran in this fit"]
