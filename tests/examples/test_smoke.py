"""Every example's smoke.yaml trains a few steps through the real ``lightning-srigl`` CLI on generated
data in the dataset's real format; every config.yaml parses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_srigl.cli import main, run

EXAMPLES = Path(__file__).resolve().parents[2] / "example_projects"
NAMES = ["digits_mlp", "mnist1d_mlp", "cifar10_resnet18", "imagenet_resnet50", "imagenet_vit_b16"]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when both ``args`` and ``sys.argv`` carry arguments."""
    monkeypatch.setattr(sys, "argv", ["lightning-srigl"])


def _mask_density(model: torch.nn.Module) -> float:
    masks = [b for name, b in model.named_buffers() if name.endswith("_mask")]
    assert masks, "SRigLCallback installed no masks"
    return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def _data_args(name: str, cifar_dir: Path, imagenet_dir: Path) -> list[str]:
    if name == "cifar10_resnet18":
        return ["--data.init_args.data_dir", str(cifar_dir)]
    if name.startswith("imagenet"):
        return ["--data.init_args.data_dir", str(imagenet_dir)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_smoke_config_trains_sparse(name: str, cifar_dir: Path, imagenet_dir: Path, tmp_path: Path) -> None:
    args = ["fit", "--config", str(EXAMPLES / name / "smoke.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    cli = run(args + _data_args(name, cifar_dir, imagenet_dir))
    assert cli.trainer.global_step == cli.trainer.max_steps
    assert _mask_density(cli.model) == pytest.approx(0.1, abs=0.02)
    for name_, buffer in cli.model.named_buffers():
        if name_.endswith("_mask"):
            weight = cli.model.get_parameter(name_.removesuffix("_sparsity_mask"))
            assert not weight[~buffer].any(), f"{name_}: weights outside the mask are not zero"


@pytest.mark.parametrize("name", NAMES)
def test_config_parses(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXAMPLES / name / "config.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"class_path: example_projects.{name}." in printed
    assert "SRigLCallback" in printed


@pytest.mark.parametrize("name", NAMES)
def test_example_folder_is_complete(name: str) -> None:
    folder = EXAMPLES / name
    for file in ("__init__.py", "model.py", "datamodule.py", "config.yaml", "smoke.yaml", "README.md"):
        assert (folder / file).is_file(), f"{folder / file} is missing"
