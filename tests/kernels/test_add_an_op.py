"""A toy op added by docs/design.md's "Adding an op" checklist, in a copy of the package: the op tests pick it
up (they fail until it has example inputs, then check its fake against its kernel and pass), and every file it
touched is one the checklist names.

The toy is a pure-Python op (``x * 2``), so it walks the checklist's Python steps (the fake in
``kernels/fakes.py``, the op's own module, its example inputs); a C++ op's steps are held by
``test_op_schemas.py`` on the real library (its schema against the Python op's, its fake in ``CPP_FAKES``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OP_MODULE = "lightning_srigl/kernels/toy_double.py"
FAKES = "lightning_srigl/kernels/fakes.py"
OP_TESTS = "tests/kernels/test_op_schemas.py"

# Step "fakes.py": the fake (output shape from input shapes).
TOY_FAKE = '''

def toy_double(x: Tensor) -> Tensor:
    """``x (*shape)`` -> ``(*shape)``."""
    return x.new_empty(x.shape)
'''
# Step "a new module": the Python op, its fake registered, its reference.
TOY_OP = '''"""``lightning_srigl::toy_double``: ``2 * x`` (a test's toy op)."""

import torch
from torch import Tensor

from lightning_srigl.kernels import fakes


def toy_double_reference(x: Tensor) -> Tensor:
    return x * 2


@torch.library.custom_op("lightning_srigl::toy_double", mutates_args=())
def toy_double(x: Tensor) -> Tensor:
    return toy_double_reference(x)


toy_double.register_fake(fakes.toy_double)
'''
# Step "test_op_schemas.py": the op's example inputs.
TOY_EXAMPLE = '\nEXAMPLES["toy_double"] = lambda ops: (torch.randn(3, 5),)\n'


def checklist_paths() -> list[str]:
    """The paths docs/design.md's "Adding an op" checklist names (``<op>`` stands for the op's name)."""
    text = (ROOT / "docs" / "design.md").read_text()
    checklist = text.split("#### Adding an op", 1)[1].split("\n#", 1)[0]
    return re.findall(r"`((?:lightning_srigl|tests)/[^`]+?)`", checklist)


def named_by_checklist(path: str, named: list[str]) -> bool:
    return any(re.fullmatch(re.escape(p).replace(re.escape("<op>"), r"\w+"), path) for p in named)


def package_copy(tmp_path: Path) -> Path:
    """The package, the op tests and docs/design.md, copied to ``tmp_path`` (compiled files left behind)."""
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    shutil.copytree(ROOT / "lightning_srigl", tmp_path / "lightning_srigl", ignore=skip)
    (tmp_path / "tests" / "kernels").mkdir(parents=True)
    for name in ("tests/__init__.py", "tests/kernels/__init__.py", OP_TESTS, "docs/design.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def run_python_op_tests(copy: Path) -> subprocess.CompletedProcess[str]:
    """``test_op_schemas.py``'s test of the Python ops' fakes, in ``copy`` (the C++ ops' need a compiled library)."""
    command = [sys.executable, "-m", "pytest", OP_TESTS, "-q", "-p", "no:cacheprovider", "-k", "python_op_has_a_fake"]
    env = {**os.environ, "PYTHONPATH": str(copy), "LIGHTNING_SRIGL_DISABLE_CPP": "1"}
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=600)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.slow
def test_a_toy_op_added_by_the_checklist_is_picked_up_by_the_op_tests(tmp_path: Path) -> None:
    copy = package_copy(tmp_path)
    touched = [FAKES, OP_MODULE, OP_TESTS]
    named = checklist_paths()
    assert all(named_by_checklist(path, named) for path in touched), (touched, named)

    append(copy / FAKES, TOY_FAKE)
    (copy / OP_MODULE).write_text(TOY_OP)
    without_example = run_python_op_tests(copy)
    assert without_example.returncode == 1, without_example.stdout[-3000:]
    assert "add example inputs for {'toy_double'} to EXAMPLES" in without_example.stdout

    append(copy / OP_TESTS, TOY_EXAMPLE)
    complete = run_python_op_tests(copy)
    assert complete.returncode == 0, complete.stdout[-3000:] + complete.stderr[-3000:]
    assert "1 passed" in complete.stdout
