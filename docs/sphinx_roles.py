"""A Griffe extension (listed in ``mkdocs.yml``) that shows Sphinx roles in docstrings as Sphinx would.

The package's docstrings cross-reference with Sphinx roles (``:func:`~pkg.mod.name```), which
mkdocstrings does not parse, so the site showed them as literal text. Each role becomes inline code of
the text Sphinx displays: the last dotted part where the target starts with ``~``, the whole target
otherwise. Explicit ``[`name`][pkg.mod.name]`` links are left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc|py:\w+):`(~?)([^`]+)`")


def sphinx_display(text: str) -> str:
    """``text`` with every Sphinx role replaced by inline code of what Sphinx displays for it."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring when Griffe loads its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = sphinx_display(obj.docstring.value)
