"""Ops only (no ``nn.Module``, no masks): each a ``torch.library`` custom op with a fake kernel, its
reference in plain torch, and its per-device implementations (``cpu/``: C++ per instruction set;
``triton/``: CUDA). The layers of ``lightning_srigl.condensed`` and ``lightning_srigl.training`` call them.

| module | op |
|---|---|
| ``linear.py`` | ``lightning_srigl::condensed_linear`` |
| ``conv.py`` | ``lightning_srigl::condensed_conv2d`` |
| ``csr.py`` | ``lightning_srigl::csr_linear`` |
| ``dense.py`` | ``lightning_srigl::packed_linear`` (a dense linear product on oneDNN's prepacked weight) |
| ``attention.py`` | ``lightning_srigl::attention`` (exact fp32 attention for short sequences) |
| ``sampled.py`` | the sampled product ``go^T x`` at a mask's positions (the sparse weight gradient) |

``layout.py`` builds the condensed layout the ops take from a masked weight, and ``validation.py`` checks
one (run when a layer is built or loaded, so the ops trust their inputs).
"""
