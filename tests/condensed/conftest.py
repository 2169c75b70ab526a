"""Fixtures shared by the CPU kernel tests: every kernel variant this CPU can execute."""

import pytest

from lightning_srigl.condensed.cpu_isa import all_variants
from lightning_srigl.condensed.cpu_kernel import host_variants, load_variant_by_name


def load_or_skip(name: str):
    try:
        return load_variant_by_name(name)
    except (RuntimeError, OSError) as error:
        pytest.skip(f"the {name} kernel could not be loaded or built here ({error}); the fallback is tested")


@pytest.fixture(params=host_variants())
def kernel(request):
    """The ops of one variant (AVX-512, AVX2, scalar, NEON: each the host runs), installed or JIT-built."""
    return load_or_skip(request.param)


@pytest.fixture(params=[name for name in host_variants() if all_variants()[name].batch1])
def batch1_kernel(request):
    """A variant with the gather-free batch-1 kernel (AVX-512, AVX2)."""
    return load_or_skip(request.param)
