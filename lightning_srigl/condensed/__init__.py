"""Inference layers for sparse models: condensed constant-fan-in linear layers, convolutions and attention
projections, and their kernels."""

from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.condensed.layers.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed
from lightning_srigl.kernels.linear import condensed_linear

__all__ = [
    "CondensedConv1d",
    "CondensedConv2d",
    "CondensedLinear",
    "ProjectedAttention",
    "condensed_linear",
    "load_condensed",
    "save_condensed",
]
