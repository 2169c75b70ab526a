"""The sparse module kinds and their candidate inference layers: the table (``registry.py``) and the
candidate constructors beyond the layers' own ``from_masked`` (``candidates.py``)."""

import importlib


def __getattr__(name: str) -> object:
    """The names of the module ``lightning_srigl.condensed.kinds`` was before 0.2 (now ``kinds.candidates``)."""
    return getattr(importlib.import_module("lightning_srigl.condensed.kinds.candidates"), name)
