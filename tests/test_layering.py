"""The package's layering (docs/design.md): each layer imports only the layers before it.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_srigl"
# docs/design.md's order; convert.py sits at the level of condensed/ (it uses sparsity/ and masking/).
LAYERS = (
    "sparsity",
    "masking",
    "kernels",
    "condensed",
    "acceleration",
    "convert",
    "training",
    "callbacks",
    "benchmark",
    "cli",
)
ENTRY_POINTS = ("__init__", "__main__")  # the lazy exports and `python -m lightning_srigl`
WITHOUT_LIGHTNING = ("sparsity", "masking", "kernels", "condensed", "acceleration", "convert", "training")
# What training/ may use besides itself: the masks and the ops, no inference layer (condensed/, convert.py),
# and the leaf helpers (top-level modules outside LAYERS, which any layer may use).
TRAINING_USES = {"sparsity", "masking", "kernels"} | {
    path.stem for path in PACKAGE.glob("*.py") if path.stem not in (*LAYERS, *ENTRY_POINTS)
}


def layer_of(path: Path) -> str:
    """The top-level name of a file of the package: ``condensed`` for ``condensed/fold/neurons.py``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_modules(path: Path) -> list[str]:
    """Every module name ``path`` imports, at any depth (relative imports resolved to the package)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (lightning_srigl....)")
            names += [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def package_layers(path: Path) -> set[str]:
    """The package's top-level names that ``path`` imports, other than its own."""
    own = layer_of(path)
    found = {name.split(".")[1] for name in imported_modules(path) if name.startswith("lightning_srigl.")}
    return found - {own}


def test_each_layer_imports_only_the_layers_before_it() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer in ENTRY_POINTS:
            continue
        imported = package_layers(path)
        if layer in LAYERS:
            allowed = set(LAYERS[: LAYERS.index(layer)])
            bad = {name for name in imported if name in LAYERS and name not in allowed}
        else:  # a shared leaf module (no package imports of its own), which any layer may use
            bad = imported
        problems += [f"{path.relative_to(PACKAGE.parent)} imports lightning_srigl.{name}" for name in sorted(bad)]
    assert not problems, "layering broken (see docs/design.md):\n" + "\n".join(problems)


def test_lower_layers_need_no_lightning_and_sparsity_no_modules() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        names = imported_modules(path)
        if layer in WITHOUT_LIGHTNING:
            problems += [f"{path.name} imports {n}" for n in names if n == "lightning" or n.startswith("lightning.")]
        if layer == "sparsity":
            problems += [f"{path.name} imports {n}" for n in names if n in ("torch.nn", "torch.nn.Module")]
    assert not problems, "\n".join(problems)


def test_kernels_are_ops_only_and_training_uses_no_inference_layer() -> None:
    """``kernels/`` sees no masks (no masking/) and defines no ``nn.Module``; ``training/`` builds on the ops."""
    problems = []
    for path in sorted((PACKAGE / "kernels").rglob("*.py")):
        problems += [f"{path.name} imports lightning_srigl.masking" for _ in {"masking"} & package_layers(path)]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("Module" in ast.unparse(base) for base in node.bases):
                problems.append(f"{path.name} defines the module {node.name}")
    for path in sorted((PACKAGE / "training").rglob("*.py")):
        used = package_layers(path) & set(LAYERS)  # leaf helpers (not layers) are allowed everywhere
        problems += [f"{path.name} imports lightning_srigl.{name}" for name in sorted(used - TRAINING_USES)]
    assert not problems, "\n".join(problems)


def test_no_top_level_part_holds_more_than_a_quarter_of_the_code() -> None:
    """Python lines per top-level sub-package (or module): none is over 25 % of the package's."""
    lines: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        lines[layer_of(path)] = lines.get(layer_of(path), 0) + len(path.read_text().splitlines())
    total = sum(lines.values())
    too_big = {name: f"{count / total:.1%}" for name, count in lines.items() if count > total / 4}
    assert not too_big, f"split these (over a quarter of {total} lines): {too_big}"
