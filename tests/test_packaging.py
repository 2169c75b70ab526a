"""The distribution carries its licence, its type marker and citation metadata."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch
import yaml

from lightning_srigl.kernels.cpu.build import CACHE_ENV, running_torch_build
from lightning_srigl.kernels.cpu.isa import ISA_ENV
from lightning_srigl.kernels.cpu.loader import DISABLE_ENV
from lightning_srigl.kernels.cpu.variants import TORCH_MARKER, variants_for_machine

ROOT = Path(__file__).resolve().parents[1]
WHEEL_SCRIPT = "scripts/build_wheel.py"  # what `make wheel` runs


def test_license_and_py_typed_are_declared_and_present() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert project["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["lightning_srigl"]
    assert (ROOT / "lightning_srigl" / "py.typed").is_file()
    assert project["project"]["urls"]


def test_installed_metadata_names_the_license() -> None:
    metadata = importlib.metadata.metadata("lightning-srigl")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(str(f).endswith("LICENSE") for f in importlib.metadata.distribution("lightning-srigl").files or [])


def test_citation_cites_the_paper_and_the_package() -> None:
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == importlib.metadata.version("lightning-srigl")
    paper = citation["preferred-citation"]
    assert paper["title"] == "Dynamic Sparse Training with Structured Sparsity" and paper["year"] == 2024
    assert [a["family-names"] for a in paper["authors"]] == ["Lasby", "Golubeva", "Evci", "Nica", "Ioannou"]


def test_kernel_sources_are_package_data() -> None:
    """The wheel and sdist carry ``kernels/cpu/csrc`` (so an install can build or JIT-compile the kernels)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["lightning_srigl.kernels.cpu"]
    csrc = ROOT / "lightning_srigl" / "kernels" / "cpu" / "csrc"
    shipped = {path for pattern in patterns for path in csrc.parent.glob(pattern)}
    assert set(csrc.iterdir()) <= shipped and (csrc / "ops.cpp") in shipped


def test_a_new_header_changes_the_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash that keys the JIT cache (and marks an installed library stale) covers every header in
    ``csrc/``, found by listing the folder: a header added there is hashed with no list to edit."""
    from lightning_srigl.kernels.cpu import variants

    csrc = tmp_path / "csrc"
    shutil.copytree(variants.CSRC, csrc)
    monkeypatch.setattr(variants, "CSRC", csrc)
    before = variants.source_hash()
    (csrc / "int8.h").write_text("// a new kernel header\n")
    assert variants.source_hash() != before
    assert csrc / "int8.h" in variants.headers()


def test_every_kernel_source_is_built_and_hashed() -> None:
    """Every translation unit in ``csrc/`` is in ``variants.SOURCES`` (so each variant compiles it and the source
    hash covers it), ``ops.cpp`` (the schemas and the build record) first."""
    from lightning_srigl.kernels.cpu import variants

    assert variants.SOURCES[0] == "ops.cpp"
    assert sorted(variants.sources()) == sorted(variants.CSRC.glob("*.cpp"))


def extra_closure(extras: list[str]) -> set[str]:
    """The distributions (names, lower case) that ``pip install "lightning-srigl[<extras>]"`` pulls in beyond the
    base dependencies, following extras that name the project itself."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found: set[str] = set()
    pending = list(extras)
    while pending:
        for requirement in optional[pending.pop()]:
            name, _, nested = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", requirement).groups()
            if name == "lightning-srigl":
                pending += nested.split(",")
            else:
                found.add(name.lower())
    return found


def test_cpu_extras_leave_triton_to_the_gpu_extra() -> None:
    """Triton (about 1 GB) comes only with `gpu` (and `kernels`, which still means gpu + transposable)."""
    assert extra_closure(["gpu"]) == {"triton"}
    assert extra_closure(["transposable"]) == {"scipy"}
    assert extra_closure(["kernels"]) == {"triton", "scipy"}
    assert "triton" not in extra_closure(["examples"]) | extra_closure(["hf"]) | extra_closure(["docs"])


def test_make_installs_what_the_test_suite_needs() -> None:
    """`make test` runs the GPU kernels' tests under Triton's interpreter and the examples' tests."""
    (extras,) = re.findall(r'pip install -q --no-build-isolation -e "\.\[([^\]]*)\]"', (ROOT / "Makefile").read_text())
    needed = {"triton", "scipy", "scikit-learn", "pillow", "mnist1d", "transformers", "pytest", "pytest-xdist"}
    assert needed | {"mkdocs"} <= extra_closure(extras.split(","))


@pytest.mark.parametrize("document", ["README.md", "docs/index.md", "docs/getting-started.md"])
def test_documented_install_installs_torch_first_and_what_the_cli_example_needs(document: str) -> None:
    """The install lines pin a CPU torch before the package (pip alone would fetch a CUDA build) and install
    the extras the README's CLI example (the digits MLP: scikit-learn) needs, without Triton."""
    lines = [line for line in (ROOT / document).read_text().splitlines() if line.startswith("pip install")]
    torch_line = next(i for i, line in enumerate(lines) if "torch==" in line)
    (package_line,) = [i for i, line in enumerate(lines) if "--no-build-isolation" in line]
    assert torch_line < package_line
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch_line]
    (extras,) = re.findall(r'-e "\.\[([^\]]*)\]"', lines[package_line])
    installed = extra_closure(extras.split(","))
    assert "scikit-learn" in installed and "triton" not in installed
    assert "from sklearn" in (ROOT / "example_projects/digits_mlp/datamodule.py").read_text()


# Run by the fresh venv's python from a temporary folder: one CondensedLinear forward at batch 4 and 1,
# checked against the dense product; prints where the package and its kernels came from and the warnings.
FORWARD = """
import warnings
import torch
import lightning_srigl
from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.kernels.cpu.loader import load_extension

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    weight = torch.randn(16, 64)
    mask = torch.zeros(16, 64, dtype=torch.bool).scatter_(1, torch.rand(16, 64).argsort(1)[:, :16], True)
    layer = CondensedLinear.from_dense_weight(weight, mask)
    x = torch.randn(4, 64)
    y, y1 = layer(x), layer(x[:1])
    kernel = load_extension()
expected = x @ (weight * mask).T
print("package", lightning_srigl.__file__)
print("library", kernel.library if kernel else None)
print("exact", torch.allclose(y, expected, atol=1e-5) and torch.allclose(y1, expected[:1], atol=1e-5))
print("warnings", len([w for w in caught if issubclass(w.category, RuntimeWarning)]))
"""


def run_forward(python: Path, cwd: Path, cache: Path, **env: str) -> dict[str, str]:
    """:data:`FORWARD` run by ``python`` in ``cwd`` with ``cache`` as the kernel cache and ``env`` added: its
    printed values (``package``, ``library``, ``exact``, ``warnings``) and ``stderr``."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", ISA_ENV, DISABLE_ENV)}
    done = subprocess.run(
        [str(python), "-c", FORWARD],
        cwd=cwd,
        env={**inherited, CACHE_ENV: str(cache), **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return {**printed, "stderr": done.stderr}


def pip_install(python: Path, *args: str) -> subprocess.CompletedProcess:
    """``pip install`` into ``python``'s environment, by this environment's pip (the venv has none), without
    byte-compiling (which would take most of the time for torch)."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", *args]
    return subprocess.run(command, capture_output=True, text=True)


def fresh_venv(folder: Path) -> Path:
    """A new venv (no system site-packages) with only this torch installed; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    python = folder / "bin" / "python"
    pinned = f"torch=={torch.__version__}"  # never an unpinned torch: that would fetch a CUDA build
    done = pip_install(python, pinned)
    if done.returncode != 0:
        pytest.skip(f"{pinned} is not installable here: {done.stderr[-300:]}")
    return python


@pytest.mark.slow
def test_the_wheel_runs_its_kernels_in_a_fresh_venv_without_compiling(tmp_path: Path) -> None:
    """`make wheel`'s wheel, installed beside only torch in a new venv, runs CondensedLinear from outside the
    repository on the libraries it carries (one per variant of this architecture), compiling nothing.
    Relabelled as built against another torch, they are refused and, with no compiler to rebuild them, the
    exact pure-torch path runs after one warning (tests/condensed/test_cpu_variants.py covers the rebuild)."""
    assert f"$(BIN)/python {WHEEL_SCRIPT} dist" in (ROOT / "Makefile").read_text()
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, WHEEL_SCRIPT, str(dist)], cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("lightning_srigl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    libraries = [n for n in names if n.endswith(".so")]
    expected = sorted(f"lightning_srigl/kernels/cpu/{v.library}" for v in variants_for_machine())
    assert sorted(n.split(".")[0] for n in libraries) == expected
    tracked = subprocess.check_output(["git", "ls-files", "lightning_srigl/*.py"], cwd=ROOT, text=True).split()
    assert sorted(n for n in names if n.endswith(".py")) == sorted(tracked)  # nothing stale from build/
    python = fresh_venv(tmp_path / "venv")
    installed = pip_install(python, "--no-deps", str(wheel))
    assert installed.returncode == 0, installed.stderr
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    outside, cache = tmp_path / "elsewhere", tmp_path / "cache"
    outside.mkdir()
    cache.mkdir()

    run = run_forward(python, outside, cache)
    assert Path(run["package"]).is_relative_to(site), run["package"]
    assert Path(run["library"]).parent == site / "lightning_srigl" / "kernels" / "cpu", run["library"]
    assert run["exact"] == "True" and run["warnings"] == "0", run
    assert not any(cache.iterdir()) and "building the CPU kernel" not in run["stderr"]

    recorded = running_torch_build().encode().hex().encode()
    foreign = running_torch_build().replace(torch.__version__, "9" * len(torch.__version__)).encode().hex().encode()
    for name in libraries:
        installed = site / name
        installed.write_bytes(installed.read_bytes().replace(TORCH_MARKER + recorded, TORCH_MARKER + foreign))
    run = run_forward(python, outside, cache, CXX=str(tmp_path / "no-compiler"))
    assert run["library"] == "None" and run["exact"] == "True" and run["warnings"] == "1", run
    assert "was built against torch 9999" in run["stderr"] and "could crash" in run["stderr"]
