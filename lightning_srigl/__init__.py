"""lightning_srigl: Structured RigL dynamic sparse training for PyTorch Lightning, and fast condensed inference.

The user-facing API::

    from lightning_srigl import SRigLCallback, AccelerateCallback
    trainer = Trainer(callbacks=[SRigLCallback(sparsity=0.9), AccelerateCallback()])
"""

from lightning_srigl.callbacks import (
    AccelerateCallback,
    DynamicSparsityCallback,
    NMSparsityCallback,
    RigLCallback,
    SRigLCallback,
)
from lightning_srigl.condensed.accelerate import accelerate
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed
from lightning_srigl.convert import convert_to_structured

__version__ = "0.1.0"

__all__ = [
    "AccelerateCallback",
    "CondensedLinear",
    "DynamicSparsityCallback",
    "NMSparsityCallback",
    "RigLCallback",
    "SRigLCallback",
    "accelerate",
    "convert_to_structured",
    "load_condensed",
    "save_condensed",
]
