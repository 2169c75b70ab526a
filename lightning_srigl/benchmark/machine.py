"""What machine a benchmark row was measured on, and how to emulate a CPU with fewer instruction sets.

Every row records the CPU model, ATen's CPU capability, the condensed kernel variant (the CPU
variant, or Triton where the condensed layers run it), the instruction-set limits set in the
environment and the device (the GPU model on CUDA). ``cpu_isa: avx2`` in a sweep emulates an
AVX2-only CPU on a newer one fairly: dense (MKL, oneDNN, ATen) is limited together with the condensed
kernel, by variables that must be set before torch loads, so that sweep runs in a subprocess.
"""

from __future__ import annotations

import os

import torch

from lightning_srigl.kernels.cpu.isa import ISA_ENV, cpu_model
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.linear import triton_kernels

# Per emulated instruction set: the limits of MKL, oneDNN, ATen's own kernels and ours.
EMULATION_ENV: dict[str, dict[str, str]] = {
    "avx512": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
        ISA_ENV: "avx512",
    },
    "avx2": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        ISA_ENV: "avx2",
    },
    "scalar": {
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
        ISA_ENV: "scalar",
    },
}
LIMIT_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", ISA_ENV)


def emulation_env(cpu_isa: str) -> dict[str, str]:
    """The environment variables that limit every kernel to ``cpu_isa``.

    Raises:
        ValueError: for an instruction set with no emulation.
    """
    if cpu_isa not in EMULATION_ENV:
        raise ValueError(f"cpu_isa must be one of {sorted(EMULATION_ENV)} (or unset), got {cpu_isa!r}.")
    return EMULATION_ENV[cpu_isa]


def is_emulating(cpu_isa: str) -> bool:
    """True when this process already runs under `emulation_env` of ``cpu_isa``."""
    return all(os.environ.get(name) == value for name, value in emulation_env(cpu_isa).items())


def machine_fields() -> dict[str, str]:
    """CSV fields describing where the numbers come from (same for every row of a run)."""
    kernel = load_extension()
    limits = [f"{name}={os.environ[name]}" for name in LIMIT_VARIABLES if os.environ.get(name)]
    return {
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_variant": kernel.variant if kernel is not None else "torch-fallback",
        "isa_limits": " ".join(limits) or "none",
    }


def device_name(device: torch.device) -> str:
    """The GPU model for a CUDA device (e.g. ``"NVIDIA H200"``), else the device type (``"cpu"``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def triton_variant(device: torch.device, condensed_backend: str) -> str | None:
    """``"triton"`` (or ``"triton-interpreter"``) when condensed layers run Triton on ``device``, else None."""
    if device.type != "cuda" and condensed_backend != "triton":
        return None
    kernels = triton_kernels()
    if kernels is None:
        return "torch-fallback"
    return "triton-interpreter" if kernels.INTERPRETER else "triton"


def load_averages() -> str:
    """The machine's 1-, 5- and 15-minute load averages as the reports print them: ``"2.71 3.09 3.22"``."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
