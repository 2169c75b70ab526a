"""A LightningDataModule over in-memory ``TensorDataset`` splits (the small real data sets of the examples)."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset


class TensorSplitsDataModule(LightningDataModule):
    """Loaders over ``self.splits["train" | "val" | "test"]``, which a subclass fills in ``setup``.

    Args:
        batch_size: training batch size (shuffled).
        eval_batch_size: batch size of the validation, test and predict loaders.
    """

    def __init__(self, batch_size: int, eval_batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.splits: dict[str, TensorDataset] = {}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
