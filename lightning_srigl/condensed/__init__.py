"""Inference layers for sparse models: condensed constant-fan-in linear layers, convolutions and attention
projections, and their kernels."""

from lightning_srigl.condensed.attention import ProjectedAttention
from lightning_srigl.condensed.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.ops import condensed_linear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed

__all__ = [
    "CondensedConv1d",
    "CondensedConv2d",
    "CondensedLinear",
    "ProjectedAttention",
    "condensed_linear",
    "load_condensed",
    "save_condensed",
]
