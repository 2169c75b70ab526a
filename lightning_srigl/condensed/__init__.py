"""Inference layers for sparse models: condensed constant-fan-in linear layers and their kernels."""

from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.ops import condensed_linear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed

__all__ = ["CondensedLinear", "condensed_linear", "load_condensed", "save_condensed"]
