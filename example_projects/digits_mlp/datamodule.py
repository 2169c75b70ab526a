"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes) as a LightningDataModule."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from example_projects.common.tensor_splits import TensorSplitsDataModule


@lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """Features ``(1797, 64)`` float32 scaled to [0, 1] and labels ``(1797,)`` int64 (read once, cached).

    Uses the copy of the dataset that ships inside scikit-learn: nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("digits_mlp needs scikit-learn: pip install 'lightning-srigl[examples]'") from err
    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.int64)
    return x, y


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded random partition of ``range(n)`` into train, val and test index tensors."""
    if not 0.0 <= val_fraction < 1.0 or not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


class DigitsDataModule(TensorSplitsDataModule):
    """Train/val/test splits of scikit-learn's digits.

    Args:
        batch_size: training batch size (evaluation uses 512).
        val_fraction: share of the 1,797 samples held out for validation.
        test_fraction: share held out for the test split.
        split_seed: seed of the split (fixed across methods so they see the same test set).
    """

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.3, split_seed: int = 0
    ) -> None:
        super().__init__(batch_size, eval_batch_size=512)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y = load_digits_tensors()
        train, val, test = split_indices(len(y), self.val_fraction, self.test_fraction, self.split_seed)
        self.splits = {
            name: TensorDataset(x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))
        }
