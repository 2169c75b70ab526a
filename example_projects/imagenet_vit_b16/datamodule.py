"""The ImageNet data module of this example (shared with ``imagenet_resnet50``)."""

from example_projects.common.imagefolder import ImageNetDataModule

__all__ = ["ImageNetDataModule"]
