"""Each callback argument is declared once, in the class that owns it, and still reaches the CLI.

A subclass declares only its own arguments and forwards the rest with ``**kwargs`` to
``super().__init__``; jsonargparse (LightningCLI) follows that call, so ``--help`` and YAML configs
of a subclass still list every argument with its type, default and documentation.
"""

from __future__ import annotations

import inspect

import pytest
from jsonargparse import ArgumentParser

from lightning_srigl.callbacks import NMSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.callbacks.dynamic_sparsity import DynamicSparsityCallback
from lightning_srigl.callbacks.sparsity_callback import SparsityCallback

NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def own_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The named arguments ``cls.__init__`` declares itself (none when it inherits ``__init__``)."""
    if "__init__" not in vars(cls):
        return {}
    parameters = inspect.signature(vars(cls)["__init__"]).parameters.values()
    return {p.name: p for p in parameters if p.kind in NAMED and p.name != "self"}


def redeclared(cls: type) -> list[str]:
    """The arguments ``cls`` declares that a base class of the package declares too."""
    bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("lightning_srigl.")]
    return sorted(name for name in own_arguments(cls) if any(name in own_arguments(base) for base in bases))


def package_callbacks(root: type = SparsityCallback) -> list[type]:
    """``root`` and every subclass of it the package defines (tests' own subclasses left out)."""
    found = [root]
    for sub in root.__subclasses__():
        if sub.__module__.startswith("lightning_srigl."):
            found += package_callbacks(sub)
    return found


def every_argument(cls: type) -> dict[str, inspect.Parameter]:
    """Each argument of ``cls`` and its bases, by name, as the class that declares it declares it."""
    merged: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        merged.update(own_arguments(klass))
    return merged


def test_the_package_s_sparsity_callbacks_are_all_found() -> None:
    assert {SRigLCallback, RigLCallback, NMSparsityCallback, DynamicSparsityCallback} <= set(package_callbacks())


@pytest.mark.parametrize("cls", package_callbacks(), ids=lambda cls: cls.__name__)
def test_no_callback_redeclares_an_argument_of_its_base(cls: type) -> None:
    assert redeclared(cls) == [], (
        f"{cls.__name__}.__init__ re-declares {redeclared(cls)} of its base class: declare only its own "
        "arguments and pass the others on with **kwargs to super().__init__"
    )


def test_the_check_catches_a_redeclared_argument() -> None:
    class Redeclaring(SRigLCallback):
        def __init__(self, sparsity: float = 0.5, **kwargs: object) -> None:
            super().__init__(sparsity=sparsity, **kwargs)

    assert redeclared(Redeclaring) == ["sparsity"]


@pytest.mark.parametrize("cls", [SRigLCallback, RigLCallback, NMSparsityCallback], ids=lambda cls: cls.__name__)
def test_the_cli_lists_every_argument_with_its_default_and_documentation(cls: type) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "callback")
    listed = {action.dest.removeprefix("callback."): action for action in parser._actions}
    declared = every_argument(cls)
    assert set(declared) <= set(listed), f"the CLI misses {sorted(set(declared) - set(listed))}"
    entries = {entry.split()[0]: " ".join(entry.split()) for entry in parser.format_help().split("\n  --")[1:]}
    for name, parameter in declared.items():
        assert listed[name].default == parameter.default, name
        assert listed[name].help, f"{cls.__name__}'s docstrings do not document {name}"
        assert "(type: " in entries[f"callback.{name}"] and "default: " in entries[f"callback.{name}"], name


def test_a_base_argument_set_on_a_subclass_reaches_the_base() -> None:
    srigl = SRigLCallback(sparsity=0.8, delta_t=7, gamma_sal=0.1)
    assert (srigl.sparsity, srigl.delta_t, srigl.gamma_sal) == (0.8, 7, 0.1)
    with pytest.raises(TypeError, match="sparsty"):
        SRigLCallback(sparsty=0.8)


def test_a_positional_argument_is_refused_rather_than_taken_for_another() -> None:
    """``SRigLCallback(0.8)`` meant ``sparsity=0.8`` before the shared arguments moved to the base."""
    with pytest.raises(TypeError, match="positional"):
        SRigLCallback(0.8)
