"""Compile the Triton kernels ahead of time for Hopper (sm_90), no GPU: ``python -m tests.condensed.triton_aot``.

Every autotuning config of both kernels in fp32 with int16 indices, plus fp16, bf16 and int32 indices,
down to a cubin through the ptxas bundled with Triton. Unit strides are passed as the constant 1, as
Triton specialises them at launch, in the ``(k, A)`` layout CondensedLinear passes. Needs
``TRITON_INTERPRET=0``: in interpreter mode Triton patches its language for the interpreter, and the
compiler then fails. Prints one line per compiled case; exits 1 on the first failure.
"""

from __future__ import annotations

import inspect
import os
import sys

import torch

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("triton_aot: run with TRITON_INTERPRET=0 (the interpreter patches Triton's language)")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lightning_srigl.condensed import triton_kernel

HOPPER = GPUTarget("cuda", 90, 32)
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int16: "i16", torch.int32: "i32"}
# Strides that are 1 in CondensedLinear's calls: (k, A) values/indices, contiguous x rows (or x.T rows), y rows.
UNIT_STRIDES = ("stride_va", "stride_ia", "stride_xi", "stride_xtb", "stride_ya")
KERNELS = {
    "gather_gemv": (triton_kernel._gather_gemv_kernel, triton_kernel._GEMV_CONFIGS),
    "gather_tiled": (triton_kernel._gather_tiled_kernel, triton_kernel._TILED_CONFIGS),
}


def compile_for_hopper(
    kernel: triton.JITFunction, config: dict, dtype: torch.dtype, index_dtype: torch.dtype
) -> triton.compiler.CompiledKernel:
    """``triton.compile`` of ``kernel`` with ``config``'s tile sizes for sm_90; returns the compiled kernel."""
    names = list(inspect.signature(kernel.fn).parameters)
    constexprs = {"HAS_BIAS": True, **config, **{name: 1 for name in UNIT_STRIDES if name in names}}
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + TYPES[index_dtype if name == "indices_ptr" else dtype]
        else:
            signature[name] = "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=HOPPER)


def main() -> None:
    for name, (kernel, configs) in KERNELS.items():
        cases = [(c.kwargs, torch.float32, torch.int16) for c in configs]
        cases += [(configs[0].kwargs, dtype, torch.int16) for dtype in (torch.float16, torch.bfloat16)]
        cases += [(configs[-1].kwargs, torch.bfloat16, torch.int32)]
        for config, dtype, index_dtype in cases:
            compiled = compile_for_hopper(kernel, config, dtype, index_dtype)
            ptx = compiled.asm["ptx"]
            if not compiled.asm["cubin"] or "ld.global" not in ptx or "st.global" not in ptx:
                sys.exit(f"triton_aot: {name} {config} {dtype} {index_dtype}: no cubin or no global loads/stores")
            print(f"compiled {name} {config} {TYPES[dtype]} {TYPES[index_dtype]} sm_90", flush=True)


if __name__ == "__main__":
    main()
