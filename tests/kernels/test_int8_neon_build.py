"""The NEON variant's int8 path compiles for aarch64 (with a cross compiler; no ARM machine runs it here)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from lightning_srigl.kernels.cpu.variants import ARM_VARIANTS, CSRC

CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
def test_neon_variant_compiles_with_the_sdot_path(tmp_path: Path) -> None:
    """int8.cpp with the NEON variant's flags builds to an aarch64 object whose int8 dot products use ``sdot``."""
    (neon,) = ARM_VARIANTS
    includes = [f"-I{path}" for path in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    obj = tmp_path / "int8.o"
    command = [CROSS, "-std=c++20", "-fPIC", "-c", str(CSRC / "int8.cpp"), "-o", str(obj), *includes,
               *neon.build_flags("test")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        disassembly = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True, check=True).stdout
        assert "sdot" in disassembly
