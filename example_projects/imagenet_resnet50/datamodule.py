"""The ImageNet data module of this example (shared with ``imagenet_vit_b16``)."""

from example_projects.common.imagefolder import ImageNetDataModule

__all__ = ["ImageNetDataModule"]
