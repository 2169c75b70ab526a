"""ImageNet in the ImageFolder layout (``<root>/<split>/<class>/<image>.JPEG``), decoded with Pillow,
with random-resized-crop / flip / normalise written in plain torch + PIL (no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def scan_image_folder(split_dir: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(path, class_index)`` for every image under ``split_dir/<class>/``, classes sorted by name."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist; expected <data_dir>/train/<class>/*.JPEG and val/.")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    samples = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise FileNotFoundError(f"No images with extensions {IMAGE_EXTENSIONS} under {split_dir}/<class>/.")
    return samples, classes


def random_resized_box(
    width: int, height: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """A random ``(left, top, w, h)`` box covering ``scale`` of the area with aspect ratio in ``ratio``
    (Inception-style; falls back to the largest central box after 10 tries)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(()).uniform_(*scale).item()
        aspect = math.exp(torch.empty(()).uniform_(*log_ratio).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()).item())
            top = int(torch.randint(0, height - h + 1, ()).item())
            return left, top, w, h
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def to_normalized_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> float32 ``(3, H, W)`` normalised with the ImageNet channel statistics."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    chw = pixels.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0
    return (chw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def train_transform(image: Image.Image, size: int) -> Tensor:
    """Random-resized-crop to ``size x size``, horizontal flip with p=0.5, normalise -> ``(3, size, size)``."""
    left, top, w, h = random_resized_box(image.width, image.height)
    crop = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if torch.rand(()) < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return to_normalized_tensor(crop)


def eval_transform(image: Image.Image, size: int, crop_fraction: float = 0.875) -> Tensor:
    """Resize the short side to ``size / crop_fraction``, centre-crop ``size x size``, normalise."""
    short = round(size / crop_fraction)
    scale = short / min(image.width, image.height)
    resized = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BILINEAR
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return to_normalized_tensor(resized.crop((left, top, left + size, top + size)))


class ImageFolderDataset(Dataset):
    """Images of one split decoded with Pillow: items ``((3, size, size) float32, label)``."""

    def __init__(self, split_dir: Path, image_size: int, train: bool) -> None:
        self.samples, self.classes = scan_image_folder(split_dir)
        self.image_size = image_size
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as raw:
            image = raw.convert("RGB")
        transform = train_transform if self.train else eval_transform
        return transform(image, self.image_size), label


class ImageNetDataModule(LightningDataModule):
    """ImageNet (or any ImageFolder-layout dataset) with ``train/`` and ``val/`` splits.

    Args:
        data_dir: folder holding ``train/<class>/*`` and ``val/<class>/*``.
        image_size: training crop and evaluation centre-crop size.
        batch_size: per-device batch size (global batch = batch_size x devices x nodes).
        num_workers: data-loader worker processes per device.
    """

    def __init__(
        self, data_dir: str = "data/imagenet", image_size: int = 224, batch_size: int = 128, num_workers: int = 8
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = ImageFolderDataset(self.data_dir / "train", self.image_size, train=True)
        if self.val_set is None:
            self.val_set = ImageFolderDataset(self.data_dir / "val", self.image_size, train=False)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
