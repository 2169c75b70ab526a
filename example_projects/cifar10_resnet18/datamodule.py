"""CIFAR-10 from the standard python-pickle batches (``data_batch_1..5``, ``test_batch``,
``batches.meta``, as in ``cifar-10-python.tar.gz``), with the paper's augmentation in plain torch."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read_batches(root: Path, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 from CIFAR pickle batch files."""
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batch files {missing} not found in {root}. Extract cifar-10-python.tar.gz and point "
            "data_dir at the 'cifar-10-batches-py' folder."
        )
    images, labels = [], []
    for name in names:
        with open(root / name, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        images.append(torch.as_tensor(entry[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(entry[b"labels"], dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def read_label_names(root: Path) -> list[str]:
    """Class names from ``batches.meta``."""
    with open(root / "batches.meta", "rb") as f:
        return [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]


def normalize(images: Tensor) -> Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 normalised with the CIFAR-10 channel statistics."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def pad_crop_flip(image: Tensor, padding: int = 4) -> Tensor:
    """Reflect-pad ``(3, H, W)`` by ``padding``, take a random ``H x W`` crop, flip with p=0.5."""
    _, h, w = image.shape
    padded = F.pad(image.unsqueeze(0), (padding,) * 4, mode="reflect").squeeze(0)
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    crop = padded[:, top : top + h, left : left + w]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


class CIFAR10Dataset(Dataset):
    """Normalised images ``(3, 32, 32)`` float32 and int labels, augmented when ``train``."""

    def __init__(self, images: Tensor, labels: Tensor, train: bool) -> None:
        self.images = images
        self.labels = labels
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = normalize(self.images[i])
        return (pad_crop_flip(image) if self.train else image), self.labels[i]


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 train (50k, augmented) and test (10k) splits; validation uses the test split, as the
    paper's code does.

    Args:
        data_dir: folder holding ``data_batch_1``..``data_batch_5``, ``test_batch`` and ``batches.meta``.
        batch_size: per-device batch size (the paper: 128 on one GPU).
        num_workers: data-loader worker processes.
    """

    def __init__(self, data_dir: str = "data/cifar-10-batches-py", batch_size: int = 128, num_workers: int = 4) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: CIFAR10Dataset | None = None
        self.test_set: CIFAR10Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CIFAR10Dataset(*read_batches(self.data_dir, TRAIN_FILES), train=True)
        if self.test_set is None:
            self.test_set = CIFAR10Dataset(*read_batches(self.data_dir, TEST_FILES), train=False)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
