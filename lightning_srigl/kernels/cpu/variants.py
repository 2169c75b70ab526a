"""The CPU kernel variants: one build of the ``csrc/`` sources per instruction set, and their compiler flags.

Plain Python with no imports from the package or torch, so ``setup.py`` can read it before anything is
installed. Each variant is its own shared library ``lightning_srigl/kernels/cpu/_cpu_<name>*.so`` that
registers its ops in the ``torch.ops.lightning_srigl_<name>`` namespace; ``build.py`` loads them and
``isa.py`` picks one for the host.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
# The translation units of one variant's library: ops.cpp (the library definition: every op's schema, and the
# build record) first, then one source per op family, which registers its ops' kernels (TORCH_LIBRARY_IMPL).
SOURCES = ("ops.cpp", "linear.cpp", "conv.cpp", "sampled.cpp", "int8.cpp", "attention.cpp")
PACKAGE = "lightning_srigl.kernels.cpu"
# Common flags: OpenMP for at::parallel_for, fused multiply-adds where the ISA has them, and hidden
# symbols: torch.ops.load_library opens libraries with RTLD_GLOBAL, so an exported inline function of
# one variant could otherwise be bound to another library's copy, compiled for another instruction set.
# No debug information (-g0): it would triple the libraries' size and the build time.
BASE_FLAGS = (
    "-O3",
    "-g0",
    "-fopenmp",
    "-ffp-contract=fast",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-Wno-unknown-pragmas",
)


@dataclass(frozen=True)
class Variant:
    """One instruction-set build: its name, ATen's CPU_CAPABILITY, the compiler's ``-m`` flags, and the CPU
    features it needs (keys of ``torch.cpu.get_capabilities()``); ``batch1`` tells whether it has the
    gather-free batch-1 kernel (``csrc/batch1.h``: it needs a vector permute)."""

    name: str
    capability: str
    machine_flags: tuple[str, ...]
    requires: tuple[str, ...] = ()
    batch1: bool = False

    @property
    def library(self) -> str:
        """The extension's module name inside the package, e.g. ``_cpu_avx2``."""
        return f"_cpu_{self.name}"

    @property
    def namespace(self) -> str:
        """The ``torch.ops`` namespace its ops are registered in, e.g. ``lightning_srigl_avx2``."""
        return f"lightning_srigl_{self.name}"

    def compile_flags(self) -> list[str]:
        """Every flag for this variant's translation unit."""
        defines = [f"-DCPU_CAPABILITY={self.capability}", f"-DLSR_OPS_NAMESPACE={self.namespace}"]
        if self.capability != "DEFAULT":
            defines.append(f"-DCPU_CAPABILITY_{self.capability}")
        return [*BASE_FLAGS, *self.machine_flags, *defines]

    def build_flags(self, torch_build: str) -> list[str]:
        """`compile_flags` plus the sources' hash and ``torch_build`` (see `torch_build`), which
        the library then carries (see `library_record`)."""
        # Hex in an identifier: a bare "2.4.0+linux" would be macro-expanded (GNU C++ defines `linux`).
        encoded = "x" + torch_build.encode().hex()
        return [*self.compile_flags(), f"-DLSR_SOURCE_HASH={source_hash()}", f"-DLSR_TORCH_BUILD={encoded}"]


# The same flags ATen builds its own AVX2 / AVX-512 kernels with (plus popcnt and F16C for fp16).
X86_VARIANTS = (
    Variant(
        "avx512",
        "AVX512",
        (
            "-mavx512f",
            "-mavx512bw",
            "-mavx512vl",
            "-mavx512dq",
            "-mfma",
            "-mf16c",
            "-mpopcnt",
            "-mprefer-vector-width=512",
        ),
        ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "fma3", "f16c", "popcnt"),
        batch1=True,
    ),
    Variant(
        "avx2",
        "AVX2",
        ("-mavx2", "-mfma", "-mf16c", "-mpopcnt", "-mbmi", "-mbmi2"),
        ("avx2", "fma3", "f16c", "popcnt", "bmi", "bmi2"),
        batch1=True,
    ),
    Variant("scalar", "DEFAULT", ()),
)
# On aarch64 at::vec always uses NEON (every aarch64 CPU has it), so one build covers the architecture.
ARM_VARIANTS = (Variant("neon", "DEFAULT", ()),)
OTHER_VARIANTS = (Variant("scalar", "DEFAULT", ()),)


def machine_kind() -> str:
    """``"x86"``, ``"arm"`` or ``"other"``: the architecture the running interpreter was built for."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return "x86"
    if machine in ("aarch64", "arm64"):
        return "arm"
    return "other"


def variants_for_machine(kind: str | None = None) -> tuple[Variant, ...]:
    """The variants built for an architecture, best first."""
    return {"x86": X86_VARIANTS, "arm": ARM_VARIANTS}.get(kind or machine_kind(), OTHER_VARIANTS)


def sources() -> list[Path]:
    """The translation units of every variant."""
    return [CSRC / name for name in SOURCES]


def headers() -> list[Path]:
    """Every header in ``csrc/`` (listed from the folder, so a new header is hashed and a stale library
    rebuilt, with no list to keep)."""
    return sorted(CSRC.glob("*.h"))


def source_hash() -> str:
    """Short hash of every kernel source and header and of the flags: keys the JIT cache."""
    digest = hashlib.sha256()
    for path in (*sources(), *headers()):
        digest.update(path.read_bytes())
    for variant in variants_for_machine():
        digest.update(" ".join(variant.compile_flags()).encode())
    return digest.hexdigest()[:16]


def torch_build(torch_version: str, cxx11_abi: bool) -> str:
    """What a library's binary interface with torch depends on: the torch version it was compiled against
    (``torch.__version__``) and libstdc++'s C++11 ABI flag (``torch._C._GLIBCXX_USE_CXX11_ABI``)."""
    return f"torch {torch_version}, C++11 ABI {int(cxx11_abi)}"


# ``csrc/ops.cpp`` embeds these markers, followed by the source hash and the hex of the torch build.
SOURCE_MARKER = b"lightning_srigl-sources:"
TORCH_MARKER = b"lightning_srigl-torch:x"


@dataclass(frozen=True)
class LibraryRecord:
    """What a built library records about its build (None where it carries no record: an older build).

    Attributes:
        source_hash: the `source_hash` it was compiled from.
        torch_build: the `torch_build` it was compiled against.
    """

    source_hash: str | None
    torch_build: str | None


def library_record(library: Path) -> LibraryRecord:
    """The sources and torch a built library was compiled from, read from its bytes (no loading)."""
    data = library.read_bytes()
    return LibraryRecord(_field(data, SOURCE_MARKER, 16), _torch_field(data))


def _field(data: bytes, marker: bytes, length: int | None = None) -> str | None:
    """The ASCII text after ``marker`` in ``data``: ``length`` bytes, or up to the string's NUL."""
    at = data.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    end = start + length if length is not None else data.find(b"\0", start)
    return data[start:end].decode("ascii", errors="replace")


def _torch_field(data: bytes) -> str | None:
    """The decoded torch build record of a library, None when it has none."""
    encoded = _field(data, TORCH_MARKER)
    if encoded is None:
        return None
    try:
        return bytes.fromhex(encoded).decode()
    except ValueError:  # damaged: compared as a foreign build
        return f"an unreadable record {encoded[:40]!r}"
