"""The modules that moved in 0.2 (``condensed/`` split into ``kernels/`` and sub-packages; the callbacks'
``glue.py`` and ``base.py`` renamed for what they hold; ``condensed/acceleration/`` now the layer
``acceleration/``), importable by their old paths for one release:
``import lightning_srigl.condensed.linear`` gives the module now at
``lightning_srigl.condensed.layers.linear`` (the same module object, so patching either name patches both).

No file sits at an old path, so history follows the moved files. Imports nothing from the package (a leaf
module: docs/design.md); ``lightning_srigl/__init__.py`` installs the finder.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old module -> the module it is now
MOVED_MODULES: dict[str, str] = {
    f"lightning_srigl.condensed.{old}": new
    for old, new in {
        "ops": "lightning_srigl.kernels.linear",
        "conv_ops": "lightning_srigl.kernels.conv",
        "sampled": "lightning_srigl.kernels.sampled",
        "cpu_kernel": "lightning_srigl.kernels.cpu.loader",
        "cpu_build": "lightning_srigl.kernels.cpu.build",
        "cpu_isa": "lightning_srigl.kernels.cpu.isa",
        "cpu_variants": "lightning_srigl.kernels.cpu.variants",
        "triton_kernel": "lightning_srigl.kernels.triton.linear",
        "triton_conv": "lightning_srigl.kernels.triton.conv",
        "linear": "lightning_srigl.condensed.layers.linear",
        "conv": "lightning_srigl.condensed.layers.conv",
        "attention": "lightning_srigl.condensed.layers.attention",
        "csr": "lightning_srigl.condensed.layers.csr",
        "semi_structured": "lightning_srigl.condensed.layers.semi_structured",
        "validation": "lightning_srigl.kernels.validation",
        "layers.validation": "lightning_srigl.kernels.validation",
        "accelerate": "lightning_srigl.acceleration.accelerate",
        "acceleration_report": "lightning_srigl.acceleration.report",
        "layer_call": "lightning_srigl.layer_call",
        "timing": "lightning_srigl.timing",
        "acceleration.timing": "lightning_srigl.timing",
        # acceleration/ became a layer of its own above condensed/
        "acceleration": "lightning_srigl.acceleration",
        **{
            f"acceleration.{name}": f"lightning_srigl.acceleration.{name}"
            for name in ("accelerate", "planning", "dense_layers", "model_timing", "swap", "report")
        },
        "fold_chain": "lightning_srigl.condensed.fold.chain",
        "batchnorm_fold": "lightning_srigl.condensed.fold.batchnorm",
        "local_trace": "lightning_srigl.condensed.fold.local_trace",
        "registry": "lightning_srigl.condensed.kinds.registry",
        # `condensed.fold` and `condensed.kinds` are packages now that re-export the old modules' names.
    }.items()
} | {
    "lightning_srigl.callbacks.glue": "lightning_srigl.callbacks.sparsity_callback",
    "lightning_srigl.callbacks.base": "lightning_srigl.callbacks.dynamic_sparsity",
}


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the module it moved to."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the target module was executed under its own name."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of `MOVED_MODULES`. First on ``sys.meta_path``: an old package name is the new
    package, whose ``__path__`` would otherwise let the path finder load a submodule a second time under its
    old name (no file sits at an old path, so the finder shadows none)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
