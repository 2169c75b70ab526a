"""The Triton kernels for CUDA: ``linear.py`` (the condensed product) and ``conv.py`` (the condensed
convolution). Imported only on first use on a GPU, so CPU-only installs never load Triton."""
