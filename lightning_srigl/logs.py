"""The package's log lines, and quiet runs of Lightning for the demo and the benchmark.

Informational lines of the package (masks reused from a checkpoint, where a report was saved, which
layers stay dense) go to the ``lightning_srigl`` logger at ``INFO``; like Lightning's own logger it
prints them to stderr unless the application configured logging itself. To hide them::

    logging.getLogger("lightning_srigl").setLevel(logging.WARNING)

[`quiet`][lightning_srigl.logs.quiet] is what the demo and the benchmark wrap their own ``Trainer``
runs in: Lightning's per-run banners and tips ("GPU available", "TPU available", the logging-service
tip, "Loading `train_dataloader`...") and this package's info lines are hidden for the block only.
Warnings stay visible, except the deprecation Lightning itself triggers on every run with this torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PACKAGE_LOGGER = "lightning_srigl"
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", PACKAGE_LOGGER)
# Lightning 2.6's own pytree helper triggers this torch deprecation on every fit; a user cannot act on it.
LIGHTNING_INTERNAL_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


def configure_package_logger() -> logging.Logger:
    """Give the ``lightning_srigl`` logger an ``INFO`` stderr handler, as Lightning does for its own.

    Nothing changes when the root logger or this logger already has handlers (the application
    configured logging), so messages then follow the application's settings.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    if not logger.handlers and not logging.getLogger().hasHandlers():
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.StreamHandler())
        logger.propagate = False
    return logger


def rank_zero_info(message: str) -> None:
    """Log ``message`` at ``INFO`` on the ``lightning_srigl`` logger, from global rank 0 only.

    The rank is the one Lightning's strategies set (``rank_zero_only.rank``), so under DDP a line
    appears once.
    """
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        logging.getLogger(PACKAGE_LOGGER).info(message)


@contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Within the block, log only ``level`` and above from Lightning and this package.

    A logger whose level the user already set higher keeps it; every level is restored on exit.
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_INTERNAL_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, old_level in zip(loggers, previous):
            logger.setLevel(old_level)
