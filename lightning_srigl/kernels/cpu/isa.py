"""Which CPU kernel variant runs here: the host's features, ATen's choice, and ``LIGHTNING_SRIGL_CPU_ISA``.

By default the variant follows ATen's own CPU capability (``torch.backends.cpu.get_cpu_capability()``):
the best instruction set the CPU has, lowered by ``ATEN_CPU_CAPABILITY`` when that is set, so torch's
dense kernels and ours are limited together. ``LIGHTNING_SRIGL_CPU_ISA=avx512|avx2|neon|scalar`` forces
one; naming a variant this CPU cannot execute is an error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from lightning_srigl.kernels.cpu.variants import Variant, variants_for_machine

ISA_ENV = "LIGHTNING_SRIGL_CPU_ISA"
# ATen capability -> the best of our variants it allows.
_ATEN_CAPABILITY_LIMIT = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "scalar"}


def all_variants() -> dict[str, Variant]:
    """Name -> variant, for every variant built on this architecture (best first)."""
    return {variant.name: variant for variant in variants_for_machine()}


def host_variants() -> list[str]:
    """The variants this CPU can execute, best first."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [
        name for name, variant in all_variants().items() if all(capabilities.get(f, False) for f in variant.requires)
    ]


def default_variant() -> str:
    """The best variant the CPU executes and ATen's capability allows."""
    runnable = host_variants()
    limit = _ATEN_CAPABILITY_LIMIT.get(torch.backends.cpu.get_cpu_capability())
    names = list(all_variants())
    if limit in names:
        allowed = [name for name in runnable if names.index(name) >= names.index(limit)]
        if allowed:
            return allowed[0]
    return runnable[0] if runnable else names[-1]


def requested_variant() -> str:
    """``$LIGHTNING_SRIGL_CPU_ISA`` when set (checked), else :func:`default_variant`.

    Raises:
        ValueError: the variable names an unknown variant, or one this CPU cannot execute.
    """
    name = os.environ.get(ISA_ENV, "").strip().lower()
    if not name:
        return default_variant()
    known = all_variants()
    if name not in known:
        raise ValueError(
            f"{ISA_ENV}={name!r} is not a CPU kernel variant of this {platform.machine()} build; choose from "
            f"{sorted(known)} or unset it."
        )
    if name not in host_variants():
        raise ValueError(
            f"{ISA_ENV}={name!r}: this CPU ({cpu_model()}) cannot execute the {name} kernels (it lacks "
            f"{', '.join(missing_features(name))}); choose from {host_variants()} or unset it."
        )
    return name


def missing_features(name: str) -> list[str]:
    """The CPU features variant ``name`` needs that this CPU lacks."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [feature for feature in all_variants()[name].requires if not capabilities.get(feature, False)]


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
