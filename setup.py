"""Builds the condensed CPU kernels at install time: one shared library per instruction set.

``pip install --no-build-isolation .`` (or ``-e .``) compiles the sources of
``lightning_srigl/kernels/cpu/csrc/`` (``variants.SOURCES``) once per variant of
``lightning_srigl/kernels/cpu/variants.py`` (AVX-512, AVX2 and a scalar baseline on x86-64; NEON on aarch64)
against the installed torch, with ``torch.utils.cpp_extension``; each library records that torch's version and
C++11 ABI flag, and is not loaded under another (``build.py``). The build needs a C++17 compiler with OpenMP
(g++ 9 or newer, or clang) and ``ninja``. A variant the compiler cannot build is skipped with a warning;
without torch in the build environment (an isolated build) or without a compiler the package installs without
prebuilt kernels, which are then compiled on first use, or replaced by the pure-torch fallback (see
docs/acceleration.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def load_variants():
    """``lightning_srigl/kernels/cpu/variants.py``, loaded without importing the package."""
    spec = importlib.util.spec_from_file_location("cpu_variants", ROOT / "lightning_srigl/kernels/cpu/variants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def extensions_and_commands():
    """One ``CppExtension`` per variant, and the build command; nothing when torch is not importable."""
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "lightning_srigl: torch is not importable in the build environment, so no CPU kernels are "
            "prebuilt (install with `pip install --no-build-isolation .`); they are compiled on first use.",
            file=sys.stderr,
        )
        return [], {}
    variants = load_variants()
    # Recorded in each library: the loader refuses a library built against another torch (cpu_build.py).
    torch_build = variants.torch_build(torch.__version__, bool(torch._C._GLIBCXX_USE_CXX11_ABI))

    class BuildVariants(BuildExtension):
        """Builds the variants one after the other (they share one ninja file); one that fails to compile
        is skipped with a warning."""

        skipped: set[str] = set()

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as error:  # an old compiler without -mavx512f, say: keep the other variants
                self.skipped.add(ext.name)
                print(f"lightning_srigl: skipping {ext.name} ({type(error).__name__}: {error})", file=sys.stderr)

        def built(self) -> list:
            return [ext for ext in self.extensions if ext.name not in self.skipped]

        def copy_extensions_to_source(self) -> None:
            self.extensions = self.built()
            super().copy_extensions_to_source()

        def get_outputs(self) -> list[str]:
            self.extensions = self.built()
            return super().get_outputs()

    # Each variant compiles its own copy of each source: object files are named after their source, so one
    # shared source would give every variant the same object file.
    generated = ROOT / "build" / "lightning_srigl_variants"
    generated.mkdir(parents=True, exist_ok=True)
    extensions = []
    for variant in variants.variants_for_machine():
        copies = []
        for original in variants.sources():
            source = generated / f"{original.stem}_{variant.name}.cpp"
            text = f'#include "{original}"\n'
            if not source.exists() or source.read_text() != text:
                source.write_text(text)
            copies.append(str(source))
        extensions.append(
            CppExtension(
                name=f"{variants.PACKAGE}.{variant.library}",
                sources=copies,
                depends=[str(path) for path in (*variants.sources(), *variants.headers())],
                extra_compile_args={"cxx": variant.build_flags(torch_build)},
                extra_link_args=["-fopenmp"],
            )
        )
    return extensions, {"build_ext": BuildVariants}


ext_modules, cmdclass = extensions_and_commands()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
