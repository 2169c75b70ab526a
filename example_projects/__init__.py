"""Example projects that use ``lightning_srigl`` the way a user would: a LightningModule, a
LightningDataModule and LightningCLI configs per project (see each folder's README)."""
