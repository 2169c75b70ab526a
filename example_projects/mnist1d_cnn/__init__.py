"""MNIST-1D 1-D CNN: four convolutions over the ``mnist1d`` package's signals (generated offline, no download)."""
