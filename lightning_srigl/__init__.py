"""lightning_srigl: Structured RigL dynamic sparse training for PyTorch Lightning, and fast condensed inference.

The user-facing API::

    from lightning_srigl import SRigLCallback, AccelerateCallback
    trainer = Trainer(callbacks=[SRigLCallback(sparsity=0.9), AccelerateCallback()])

Names are imported on first use, so loading a condensed model (``lightning_srigl.condensed``) needs
only torch: Lightning is imported only with the callbacks. So are the package's modules: after
``import lightning_srigl``, ``lightning_srigl.masking.without_masks(state)`` imports ``masking`` there.
Informational lines go to the ``lightning_srigl`` logger (see [`lightning_srigl.logs`][lightning_srigl.logs]).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from lightning_srigl import _moved
from lightning_srigl.logs import configure_package_logger

__version__ = "0.1.0"

configure_package_logger()
_moved.install()  # the modules moved out of condensed/ keep their old import paths for one release

_EXPORTS = {
    "AccelerateCallback": "lightning_srigl.callbacks",
    "DynamicSparsityCallback": "lightning_srigl.callbacks",
    "NMSparsityCallback": "lightning_srigl.callbacks",
    "RigLCallback": "lightning_srigl.callbacks",
    "SRigLCallback": "lightning_srigl.callbacks",
    "accelerate": "lightning_srigl.acceleration.accelerate",
    "CondensedLinear": "lightning_srigl.condensed.layers.linear",
    "load_condensed": "lightning_srigl.condensed.serialization",
    "restore_dense": "lightning_srigl.acceleration.swap",
    "save_condensed": "lightning_srigl.condensed.serialization",
    "convert_to_structured": "lightning_srigl.convert",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from lightning_srigl.acceleration.accelerate import accelerate
    from lightning_srigl.acceleration.swap import restore_dense
    from lightning_srigl.callbacks import (
        AccelerateCallback,
        DynamicSparsityCallback,
        NMSparsityCallback,
        RigLCallback,
        SRigLCallback,
    )
    from lightning_srigl.condensed.layers.linear import CondensedLinear
    from lightning_srigl.condensed.serialization import load_condensed, save_condensed
    from lightning_srigl.convert import convert_to_structured


def __getattr__(name: str) -> Any:
    """Import an exported name from its module, or a module of the package (``lightning_srigl.masking``), on first
    access (PEP 562): what a process has imported before does not decide which attributes resolve."""
    module = f"{__name__}.{name}"
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(module) is not None:
        value = importlib.import_module(module)
    else:
        raise AttributeError(f"module 'lightning_srigl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
