"""Choosing, forcing, loading and building the CPU kernel variants."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from lightning_srigl.kernels.cpu import build as cpu_build
from lightning_srigl.kernels.cpu import isa as cpu_isa
from lightning_srigl.kernels.cpu import loader as cpu_kernel
from lightning_srigl.kernels.cpu.isa import ISA_ENV, all_variants, default_variant, host_variants, requested_variant
from lightning_srigl.kernels.cpu.variants import TORCH_MARKER, library_record, source_hash


@pytest.fixture
def fresh_choice(monkeypatch):
    """Forget the process's chosen variant for one test (the loaded libraries stay loaded)."""
    monkeypatch.setattr(cpu_kernel, "_extension", None)
    monkeypatch.setattr(cpu_kernel, "_build_failed", False)
    monkeypatch.delenv(cpu_kernel.DISABLE_ENV, raising=False)


def test_batch1_flag_matches_the_compiled_kernel(kernel):
    assert kernel.batch1_supported == all_variants()[kernel.variant].batch1


@pytest.mark.parametrize("name", host_variants())
def test_isa_env_forces_each_variant_the_host_runs(name, monkeypatch, fresh_choice):
    monkeypatch.setenv(ISA_ENV, name)
    assert cpu_kernel.load_extension().variant == name


def test_isa_env_rejects_an_unknown_variant(monkeypatch, fresh_choice):
    monkeypatch.setenv(ISA_ENV, "sse9")
    with pytest.raises(ValueError, match="not a CPU kernel variant.*unset it"):
        cpu_kernel.load_extension()


def test_isa_env_rejects_a_variant_the_cpu_cannot_execute(monkeypatch, fresh_choice):
    best = next(iter(all_variants()))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    monkeypatch.setenv(ISA_ENV, best)
    if not all_variants()[best].requires:
        pytest.skip("this architecture's best variant needs no CPU feature")
    with pytest.raises(ValueError, match=f"cannot execute the {best} kernels"):
        requested_variant()


@pytest.mark.parametrize(("aten", "expected"), [("AVX512", "avx512"), ("AVX2", "avx2"), ("DEFAULT", "scalar")])
def test_default_variant_follows_aten_capability(aten, expected, monkeypatch):
    if expected not in host_variants():
        pytest.skip(f"this CPU cannot run {expected}")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    assert default_variant() == expected


def test_forced_variant_that_cannot_be_built_is_an_error_not_a_fallback(monkeypatch, fresh_choice):
    def broken(variant):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(cpu_kernel, "load_variant", broken)
    monkeypatch.setenv(ISA_ENV, host_variants()[-1])
    with pytest.raises(RuntimeError, match="neither installed nor buildable.*no C\\+\\+ compiler found"):
        cpu_kernel.load_extension()


def test_jit_cache_is_keyed_by_torch_variant_and_sources(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path))
    variant = all_variants()[host_variants()[-1]]
    directory = cpu_build.build_directory(variant)
    assert directory.parent == tmp_path / torch.__version__.replace("+", "_")
    assert directory.name.startswith(f"{variant.name}-")
    monkeypatch.setattr(cpu_build, "source_hash", lambda: "0" * 16)
    assert cpu_build.build_directory(variant) != directory


def test_jit_build_announces_itself_once(monkeypatch, tmp_path, capsys):
    """Without an installed library the variant is compiled on first use, after one line saying so."""
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path))
    variant = all_variants()[host_variants()[-1]]
    calls = []

    def fake_load(name, build_directory, **kwargs):
        calls.append(name)
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    first = cpu_build.jit_build(variant)
    second = cpu_build.jit_build(variant)
    assert first == second and first.parent == cpu_build.build_directory(variant)
    assert capsys.readouterr().err.count("building the CPU kernel once") == 1
    assert len(calls) == 2  # the second call finds the library (torch's loader then only checks it)


def test_installed_library_is_used_without_any_build():
    """After `pip install --no-build-isolation`, the first forward loads a library built at install time."""
    script = (
        "import torch\n"
        "from lightning_srigl.condensed import CondensedLinear\n"
        "from lightning_srigl.kernels.cpu.loader import load_extension\n"
        "layer = CondensedLinear.from_dense_weight(torch.randn(8, 32), torch.ones(8, 32, dtype=torch.bool))\n"
        "layer(torch.randn(1, 32))\n"
        "print(load_extension().library)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    library = Path(done.stdout.strip().splitlines()[-1])
    assert library.parent == Path(cpu_build.__file__).resolve().parent, library
    assert "building the CPU kernel" not in done.stderr


def test_installed_libraries_record_their_sources_and_torch():
    for name in host_variants():
        library = cpu_build.installed_library(all_variants()[name])
        assert library is not None and cpu_build.mismatch(library) is None
        record = library_record(library)
        assert record.source_hash == source_hash()
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        assert record.torch_build == f"torch {torch.__version__}, C++11 ABI {abi}"


def test_a_library_older_than_its_sources_is_not_loaded(monkeypatch):
    """Editing a kernel header after `pip install` must not leave the old library in use."""
    library = cpu_build.installed_library(all_variants()[host_variants()[-1]])
    assert library is not None and cpu_build.mismatch(library) is None
    monkeypatch.setattr(cpu_build, "source_hash", lambda: "f" * 16)
    assert "was built from other kernel sources" in cpu_build.mismatch(library)


def _foreign_install(tmp_path: Path, monkeypatch, variant_name: str) -> Path:
    """A package folder whose ``variant_name`` library claims another torch version (same length, so the
    binary stays intact); the loader looks there and forgets what it loaded."""
    library = cpu_build.installed_library(all_variants()[variant_name])
    data = library.read_bytes()
    recorded = cpu_build.running_torch_build()
    foreign = recorded.replace(torch.__version__, "9" * len(torch.__version__))
    patched = data.replace(*(TORCH_MARKER + build.encode().hex().encode() for build in (recorded, foreign)))
    assert patched != data
    (tmp_path / library.name).write_bytes(patched)
    monkeypatch.setattr(cpu_build, "_PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(cpu_build, "_loaded", {})
    return tmp_path / library.name


def test_a_library_built_against_another_torch_is_rebuilt_not_loaded(monkeypatch, tmp_path, capsys):
    """A wheel built under one torch and installed beside another compiles its kernels afresh, saying so."""
    variant = all_variants()[host_variants()[-1]]
    genuine = cpu_build.load_variant(variant).library  # loaded once already: loading it again is a no-op
    foreign = _foreign_install(tmp_path, monkeypatch, variant.name)
    assert "9999" in library_record(foreign).torch_build
    assert "loading it could crash" in cpu_build.mismatch(foreign)
    built = []
    monkeypatch.setattr(cpu_build, "jit_build", lambda v: built.append(v.name) or genuine)
    assert cpu_build.load_variant(variant).library == genuine
    assert built == [variant.name]
    err = capsys.readouterr().err
    assert f"{foreign.name} was built against torch 9999" in err and f"this is torch {torch.__version__}" in err
    assert "compiling the kernels from source instead" in err


def test_a_foreign_library_without_a_compiler_falls_back_to_torch_with_one_warning(
    monkeypatch, tmp_path, fresh_choice
) -> None:
    """No compiler: the mismatched library is refused, one warning names why, and the exact torch path runs."""
    _foreign_install(tmp_path, monkeypatch, cpu_isa.requested_variant())

    def no_compiler(variant):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(cpu_build, "jit_build", no_compiler)
    x, values = torch.randn(3, 32), torch.randn(8, 4)
    indices = torch.randint(0, 32, (8, 4), dtype=torch.int32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cpu_kernel.condensed_linear_cpu(x, values, indices, None)
        second = cpu_kernel.condensed_linear_cpu(x, values, indices, None)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "was built against torch 9999" in messages[0] and "no C++ compiler found" in messages[0]
    expected = cpu_kernel.condensed_linear_torch(x, values, indices, None)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert cpu_kernel.load_extension() is None


def test_cpu_model_is_named():
    assert cpu_isa.cpu_model()
