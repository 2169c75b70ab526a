"""Build the wheel ``make wheel`` ships: the package with the CPU kernels of every instruction set of this
architecture, compiled against the installed torch.

    python scripts/build_wheel.py            # dist/lightning_srigl-<version>-<python>-<platform>.whl
    python scripts/build_wheel.py OUT        # into OUT

Runs ``pip wheel --no-build-isolation --no-deps`` (``setup.py`` compiles the variants). setuptools' staging
folders (``build/lib.*``, ``build/bdist.*``) are removed first: files an older source layout left there would
go into the wheel; ``build/temp.*`` is kept, so kernels whose sources did not change are not recompiled. Fails
when the wheel lacks a variant's library (``pip install`` only warns about a variant the compiler could not
build). The kernels record the torch they were built against: install the wheel beside that torch version.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lightning_srigl.kernels.cpu.variants import PACKAGE, variants_for_machine

ROOT = Path(__file__).resolve().parents[1]


def expected_libraries() -> list[str]:
    """The module names (``_cpu_avx2``, ...) of the libraries a wheel for this architecture must carry."""
    return sorted(variant.library for variant in variants_for_machine())


def wheel_libraries(wheel: Path) -> list[str]:
    """The module names of the kernel libraries inside ``wheel`` (in the kernel package's folder)."""
    folder = PACKAGE.replace(".", "/") + "/"
    names = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith(folder) and n.endswith((".so", ".pyd"))]
    return sorted(n[len(folder) :].split(".")[0] for n in names)


def build_wheel(out: Path) -> Path:
    """Build the wheel into ``out`` and return it.

    Raises:
        subprocess.CalledProcessError: the build failed.
        RuntimeError: the wheel lacks a variant's library.
    """
    for staged in [*ROOT.glob("build/lib.*"), *ROOT.glob("build/bdist.*")]:
        shutil.rmtree(staged)
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True)
    wheel = max(out.glob("lightning_srigl-*.whl"), key=lambda path: path.stat().st_mtime)  # the one just written
    if wheel_libraries(wheel) != expected_libraries():
        raise RuntimeError(
            f"{wheel.name} carries the kernels {wheel_libraries(wheel)}, not {expected_libraries()}: a variant did not "
            "compile (see the warnings above; a C++17 compiler with OpenMP and ninja are needed)."
        )
    return wheel


if __name__ == "__main__":
    print(build_wheel(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))
