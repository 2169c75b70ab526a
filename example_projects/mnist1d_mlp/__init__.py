"""MNIST-1D MLP: the ``mnist1d`` package's procedural 1-D digits (generated offline, no download)."""
