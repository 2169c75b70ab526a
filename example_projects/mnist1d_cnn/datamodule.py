"""The MNIST-1D data of ``mnist1d_mlp``: the CNN reads the same ``(B, 40)`` signals (generated offline)."""

from __future__ import annotations

from example_projects.mnist1d_mlp.datamodule import MNIST1DDataModule, load_mnist1d_tensors

__all__ = ["MNIST1DDataModule", "load_mnist1d_tensors"]
