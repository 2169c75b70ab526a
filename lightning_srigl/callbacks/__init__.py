"""Lightning callbacks for dynamic sparse training and condensed inference."""

from lightning_srigl.callbacks.accelerate import AccelerateCallback
from lightning_srigl.callbacks.dynamic_sparsity import DynamicSparsityCallback
from lightning_srigl.callbacks.nm import NMSparsityCallback
from lightning_srigl.callbacks.rigl import RigLCallback
from lightning_srigl.callbacks.srigl import SRigLCallback

__all__ = [
    "AccelerateCallback",
    "DynamicSparsityCallback",
    "NMSparsityCallback",
    "RigLCallback",
    "SRigLCallback",
]
