"""Folding before acceleration: BatchNorms into the sparse convolutions before them (``batchnorm.py``) and
ablated neurons into the next layer (``neurons.py``), along chains of modules (``chain.py``) found in
local traces of the model (``local_trace.py``)."""

import importlib


def __getattr__(name: str) -> object:
    """The names of the module ``lightning_srigl.condensed.fold`` was before 0.2 (now ``fold.neurons``)."""
    return getattr(importlib.import_module("lightning_srigl.condensed.fold.neurons"), name)
