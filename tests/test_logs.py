"""Quiet runs hide Lightning's banners for their block only; the package logs through ``lightning_srigl``."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from lightning_srigl.logs import PACKAGE_LOGGER, quiet, rank_zero_info


def test_quiet_hides_info_for_the_block_only_and_keeps_warnings(caplog: pytest.LogCaptureFixture) -> None:
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    before = logging.getLogger("lightning.pytorch").level
    with caplog.at_level(logging.INFO):
        with quiet():
            lightning.info("GPU available: False, used: False")
            rank_zero_info("masks reused")
            lightning.warning("a real problem")
        lightning.info("after the block")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real problem", "after the block"]
    assert logging.getLogger("lightning.pytorch").level == before


def test_quiet_keeps_a_level_the_user_raised() -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet():
            assert logger.level == logging.ERROR
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(previous)


def test_quiet_filters_only_lightning_s_own_deprecation() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
            warnings.warn("something the user must see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user must see"]


def test_package_info_lines_print_to_stderr_by_default_and_can_be_silenced() -> None:
    code = (
        "import logging, lightning_srigl\nfrom lightning_srigl.logs import rank_zero_info\n"
        "rank_zero_info('shown')\nlogging.getLogger('lightning_srigl').setLevel(logging.WARNING)\n"
        "rank_zero_info('hidden')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["shown"]


@pytest.mark.parametrize("ours", [True, False])
def test_csr_beta_warning_is_hidden_for_our_csr_layers_only(ours: bool) -> None:
    """In a fresh process (torch warns once per process): our CSR build is silent, a plain one warns."""
    build = (
        "from lightning_srigl.condensed.csr import CSRLinear; CSRLinear.from_masked(torch.nn.Linear(8, 8))"
        if ours
        else "torch.randn(8, 8).to_sparse_csr()"
    )
    code = f"import warnings, torch\nwarnings.simplefilter('error')\n{build}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert (result.returncode == 0) is ours, result.stderr[-1000:]
    if not ours:
        assert "Sparse CSR tensor support is in beta" in result.stderr
