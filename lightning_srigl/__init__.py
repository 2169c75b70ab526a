"""lightning_srigl: Structured RigL dynamic sparse training for PyTorch Lightning, and fast condensed inference."""

__version__ = "0.1.0"
