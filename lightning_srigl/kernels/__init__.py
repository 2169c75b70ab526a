"""Ops only (no ``nn.Module``, no masks): each a ``torch.library`` custom op with a fake kernel, its
reference in plain torch, and its per-device implementations (``cpu/``: C++ per instruction set;
``triton/``: CUDA). The layers of ``lightning_srigl.condensed`` and ``lightning_srigl.training`` call them.

| module | op |
|---|---|
| ``linear.py`` | ``lightning_srigl::condensed_linear`` |
| ``linear_rows.py`` | ``lightning_srigl::condensed_linear_rows`` (the product stored at its output columns) |
| ``conv.py`` | ``lightning_srigl::condensed_conv2d`` |
| ``csr.py`` | ``lightning_srigl::csr_linear`` |
| ``int8.py`` | ``lightning_srigl::int8_condensed_linear`` (int8 weights, u8 activations) |
| ``dense.py`` | ``lightning_srigl::packed_linear`` (a dense linear product on oneDNN's prepacked weight) |
| ``attention.py`` | ``lightning_srigl::attention`` (exact fp32 attention for short sequences) |
| ``sampled.py`` | the sampled product ``go^T x`` at a mask's positions (the sparse weight gradient) |

``layout.py`` builds the condensed layout the ops take from a masked weight, and ``validation.py`` checks
one (run when a layer is built or loaded, so the ops trust their inputs).

Importing this package (so any of its modules) registers every Python op above: a graph or program that
names one (a compiled graph's post-grad pass, ``torch.export.load``, an AOTInductor package) finds it in any
process that imported any part of ``lightning_srigl.kernels``, whichever layers that process built.
"""

from lightning_srigl.kernels import attention, conv, csr, dense, int8, linear, linear_rows

# Every Python op of the package (``torch.ops.lightning_srigl.*``); a new op's module is imported above
# (``tests/kernels/test_op_schemas.py`` checks that this holds every op a module of kernels/ registers).
PYTHON_OPS = (
    linear.condensed_linear,
    linear_rows.condensed_linear_rows,
    conv.condensed_conv2d,
    csr.csr_linear,
    int8.int8_condensed_linear,
    dense.packed_linear,
    attention.attention,
)

__all__ = ["PYTHON_OPS"]
