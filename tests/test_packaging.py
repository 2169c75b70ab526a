"""The distribution carries its licence, its type marker and citation metadata."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
