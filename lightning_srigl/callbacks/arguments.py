"""Constructor-argument checks shared by the callbacks: every bad value fails in ``__init__``.

Numbers may be Python numbers, numpy scalars or 0-d tensors
([`as_real`][lightning_srigl.sparsity.validation.as_real],
[`as_integer`][lightning_srigl.sparsity.validation.as_integer]);
errors are ``TypeError`` for a value of the wrong kind and ``ValueError`` for one out of range, and
name the argument and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_srigl.sparsity.validation import as_integer, as_real

__all__ = ["as_integer", "as_real", "check_choice", "check_flag", "check_patterns", "check_range", "check_range_int"]


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is a ``bool``, else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(value: object, name: str, choices: Sequence[object]) -> object:
    """``value`` if it is one of ``choices``; else ``TypeError`` (wrong kind) or ``ValueError``."""
    if value in choices:
        return value
    kinds = {type(c) for c in choices}
    error = TypeError if type(value) not in kinds else ValueError
    raise error(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_range(
    value: object,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float inside ``[low, high]`` (either end open if asked), else raise."""
    number = as_real(value, name, hint)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}" + (f"; {hint}" if hint else ""))
    return number


def check_range_int(value: object, name: str, low: int, high: int, hint: str = "") -> int:
    """``value`` as an ``int`` inside ``[low, high]``, else ``TypeError``/``ValueError`` naming ``name``."""
    number = as_integer(value, name, hint=hint)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}" + (f"; {hint}" if hint else ""))
    return number


def check_patterns(value: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    """Normalise a pattern argument; a bare string is one pattern (never a substring test)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of fnmatch patterns (strings), got {value!r}")
    return tuple(value)
