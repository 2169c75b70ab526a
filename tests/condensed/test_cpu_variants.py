"""Choosing, forcing, loading and building the CPU kernel variants."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from lightning_srigl.condensed import cpu_build, cpu_isa, cpu_kernel
from lightning_srigl.condensed.cpu_isa import ISA_ENV, all_variants, default_variant, host_variants, requested_variant
from lightning_srigl.condensed.cpu_variants import library_source_hash, source_hash


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
        "from lightning_srigl.condensed.cpu_kernel import load_extension\n"
        "layer = CondensedLinear.from_weight_mask(torch.randn(8, 32), torch.ones(8, 32, dtype=torch.bool))\n"
        "layer(torch.randn(1, 32))\n"
        "print(load_extension().library)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    library = Path(done.stdout.strip().splitlines()[-1])
    assert library.parent == Path(cpu_build.__file__).resolve().parent, library
    assert "building the CPU kernel" not in done.stderr


def test_installed_libraries_carry_the_hash_of_their_sources():
    for name in host_variants():
        library = cpu_build.installed_library(all_variants()[name])
        assert library is not None and library_source_hash(library) == source_hash()


def test_a_library_older_than_its_sources_is_not_loaded(monkeypatch, capsys):
    """Editing a kernel header after `pip install` must not leave the old library in use."""
    variant = all_variants()[host_variants()[-1]]
    assert cpu_build.installed_library(variant) is not None
    monkeypatch.setattr(cpu_build, "source_hash", lambda: "f" * 16)
    assert cpu_build.installed_library(variant) is None
    assert "was built from other kernel sources" in capsys.readouterr().err


def test_cpu_model_is_named():
    assert cpu_isa.cpu_model()
