"""``Structure``: the one spelling of a sparsity structure that every callback, ``convert`` and the CLI take.

A structure is either *constant fan-in* (every active neuron keeps the same number of weights; the
count comes from the sparsity) or *N:M* (``n`` of every ``m`` consecutive inputs). It is written as a
string, ``"constant_fan_in"`` or ``"N:M"`` such as ``"2:4"``, and parsed once by
:meth:`Structure.parse`, which also takes the older spellings: ``"fan_in"``, and ``convert``'s
``structure="n:m"`` with separate ``n`` and ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_srigl.sparsity.nm import check_nm

__all__ = ["CONSTANT_FAN_IN", "Structure"]

CONSTANT_FAN_IN = "constant_fan_in"
_EXAMPLE = "'constant_fan_in' or an N:M pattern such as '2:4'"


@dataclass(frozen=True)
class Structure:
    """A sparsity structure: constant fan-in (``nm is None``) or N:M (``nm == (n, m)``, ``1 <= n < m``).

    ``str(structure)`` is its canonical spelling (``"constant_fan_in"``, ``"2:4"``), which checkpoints store.
    """

    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.nm is not None:
            n, m = self.nm
            check_nm((m, m), n, m)  # an impossible pattern raises here, not as a silent no-op later

    @classmethod
    def parse(cls, value: str | Structure, n: int | None = None, m: int | None = None) -> Structure:
        """The structure ``value`` names.

        Args:
            value: a ``Structure``; ``"constant_fan_in"`` (or ``"fan_in"``); ``"N:M"`` such as ``"2:4"``;
                or ``"n:m"`` with the pattern in ``n`` and ``m`` (``convert``'s older spelling; they
                default to 2 and 4 there).
            n, m: the pattern of ``value="n:m"``; with any other ``value`` they must be ``None`` or agree.

        Raises:
            TypeError: ``value`` is not a string or ``Structure``.
            ValueError: an unknown spelling, an impossible pattern (``n >= m``), or ``n``/``m`` that
                contradict ``value``.
        """
        text = value.strip().lower() if isinstance(value, str) else None
        if text == "n:m":
            return cls((2 if n is None else n, 4 if m is None else m))
        if isinstance(value, Structure):
            structure = value
        elif text is None:
            raise TypeError(f"structure must be a string, {_EXAMPLE}, got {value!r}")
        elif text in (CONSTANT_FAN_IN, "fan_in"):
            structure = cls()
        else:
            parts = text.split(":")
            if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
                raise ValueError(f"Unknown structure {value!r}: use {_EXAMPLE}.")
            structure = cls((int(parts[0]), int(parts[1])))
        if (n, m) != (None, None) and structure.nm != (n, m):
            raise ValueError(f"structure={value!r} contradicts n={n!r}, m={m!r}; give the pattern once, e.g. '2:4'.")
        return structure

    @property
    def n(self) -> int:
        """Weights kept per group of an N:M structure (``ValueError`` for constant fan-in)."""
        return self._pattern()[0]

    @property
    def m(self) -> int:
        """Group size of an N:M structure (``ValueError`` for constant fan-in)."""
        return self._pattern()[1]

    def _pattern(self) -> tuple[int, int]:
        if self.nm is None:
            raise ValueError("a constant fan-in structure has no N:M pattern")
        return self.nm

    def __str__(self) -> str:
        return CONSTANT_FAN_IN if self.nm is None else f"{self.nm[0]}:{self.nm[1]}"
