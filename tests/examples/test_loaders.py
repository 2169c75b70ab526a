"""The example data pipelines read their datasets' real formats and produce the documented shapes."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from example_projects.cifar10_resnet18.datamodule import (
    CIFAR10DataModule,
    pad_crop_flip,
    read_batches,
    read_label_names,
)
from example_projects.common.classification import Recipe, lr_factor
from example_projects.common.imagefolder import (
    ImageNetDataModule,
    eval_transform,
    random_resized_box,
    train_transform,
)
from example_projects.digits_mlp.datamodule import DigitsDataModule, split_indices

from .conftest import CIFAR_CLASSES, write_cifar_batches


def test_cifar_pickle_batches_are_read(cifar_dir: Path) -> None:
    images, labels = read_batches(cifar_dir, ("data_batch_1", "data_batch_2"))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (16,) and int(labels.max()) < 10
    assert read_label_names(cifar_dir) == CIFAR_CLASSES


def test_cifar_row_major_channel_layout(tmp_path: Path) -> None:
    """CIFAR stores each image as 1024 red, then green, then blue values in row-major order."""
    root = write_cifar_batches(tmp_path / "c", per_batch=2)
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    images, _ = read_batches(root, ("test_batch",))
    assert images[1, 2, 0, 5].item() == raw[1, 2 * 1024 + 5]
    assert images[0, 0, 3, 0].item() == raw[0, 3 * 32]


def test_cifar_datamodule_batches(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(str(cifar_dir), batch_size=4, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert len(dm.train_set) == 40 and len(dm.test_set) == 8


def test_cifar_missing_files_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10DataModule(str(tmp_path)).setup("fit")


def test_pad_crop_flip_keeps_shape_and_content() -> None:
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    out = pad_crop_flip(image, padding=2)
    assert out.shape == image.shape
    # every output pixel comes from the reflect-padded image, so values stay within the input's range
    assert out.min() >= image.min() and out.max() <= image.max()


def test_image_folder_datamodule(imagenet_dir: Path) -> None:
    dm = ImageNetDataModule(str(imagenet_dir), image_size=16, batch_size=5, num_workers=0)
    dm.setup("fit")
    assert dm.train_set.classes == ["n00000000", "n00000001", "n00000002"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 16, 16) and y.shape == (5,)
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (5, 3, 16, 16)


def test_image_folder_errors_point_at_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        ImageNetDataModule(str(tmp_path)).setup("fit")


def test_random_resized_box_inside_image() -> None:
    torch.manual_seed(0)
    for _ in range(50):
        left, top, w, h = random_resized_box(40, 30)
        assert 0 <= left and 0 <= top and left + w <= 40 and top + h <= 30 and w > 0 and h > 0


def test_transforms_normalise_a_constant_image() -> None:
    gray = Image.new("RGB", (50, 40), (124, 116, 104))  # ~ the ImageNet channel means
    for out in (train_transform(gray, 8), eval_transform(gray, 8)):
        assert out.shape == (3, 8, 8)
        assert out.abs().max() < 0.02


def test_digits_split_is_a_partition() -> None:
    train, val, test = split_indices(100, 0.1, 0.3, seed=0)
    assert (len(train), len(val), len(test)) == (60, 10, 30)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="sum below 1"):
        split_indices(100, 0.5, 0.5, seed=0)


def test_digits_datamodule_uses_bundled_data() -> None:
    dm = DigitsDataModule(batch_size=16)
    dm.setup()
    assert sum(len(s) for s in dm.splits.values()) == 1797
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_mnist1d_is_generated_offline_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("mnist1d", reason="the mnist1d package is not installed (pip install -e '.[examples]')")
    from example_projects.mnist1d_mlp.datamodule import load_mnist1d_tensors

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    np.random.seed(7)
    expected_next = np.random.get_state()[1][:4].copy()
    load_mnist1d_tensors.cache_clear()
    x, y, x_test, y_test = load_mnist1d_tensors()
    assert (x.shape, y.shape, x_test.shape, y_test.shape) == ((4000, 40), (4000,), (1000, 40), (1000,))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).min() > 350 and set(y_test.tolist()) == set(range(10))
    assert list(tmp_path.iterdir()) == [], "the generator wrote a file"
    assert (np.random.get_state()[1][:4] == expected_next).all(), "NumPy's global RNG state was not restored"


def test_mnist1d_datamodule_splits() -> None:
    pytest.importorskip("mnist1d", reason="the mnist1d package is not installed (pip install -e '.[examples]')")
    from example_projects.mnist1d_mlp.datamodule import MNIST1DDataModule

    dm = MNIST1DDataModule(batch_size=16)
    dm.setup()
    assert {name: len(split) for name, split in dm.splits.items()} == {"train": 3600, "val": 400, "test": 1000}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 40) and y.shape == (16,)
    again = MNIST1DDataModule()
    again.setup()
    assert torch.equal(again.splits["val"].tensors[0], dm.splits["val"].tensors[0])
    with pytest.raises(ValueError, match="val_fraction"):
        MNIST1DDataModule(val_fraction=1.0)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0.0, 0.1), (2.5, 0.55), (5.0, 1.0), (29.9, 1.0), (30.0, 0.1), (70.0, 0.01), (95.0, 0.001)],
)
def test_warmup_step_schedule(epoch: float, expected: float) -> None:
    recipe = Recipe(schedule="step", milestones=(30, 70, 90), gamma=0.1, warmup_epochs=5, warmup_start_factor=0.1)
    assert lr_factor(epoch, recipe, max_epochs=100) == pytest.approx(expected)


def test_cosine_schedule_after_warmup() -> None:
    recipe = Recipe(schedule="cosine", warmup_epochs=10)
    assert lr_factor(10.0, recipe, 110) == pytest.approx(1.0)
    assert lr_factor(60.0, recipe, 110) == pytest.approx(0.5)
    assert lr_factor(110.0, recipe, 110) == pytest.approx(0.0)
