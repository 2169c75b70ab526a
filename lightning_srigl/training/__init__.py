"""Training-time mechanisms over the masking layer: masked layers with a sparse weight gradient."""

from lightning_srigl.training.sparse_backward import SparseBackward, supports_sparse_backward

__all__ = ["SparseBackward", "supports_sparse_backward"]
