"""2:4 semi-structured path: support decisions and mask validation (no GPU here: the CUDA path is not run)."""

import pytest
import torch
from torch import nn

from lightning_srigl.condensed.semi_structured import (
    DeviceFacts,
    SemiStructuredLinear,
    check_semi_structured,
    is_2_4,
    semi_structured_supported,
)

AMPERE = DeviceFacts((8, 0), None)  # CUTLASS only
AMPERE_CUSPARSELT = DeviceFacts((8, 6), 602)
HOPPER_OLD_CUSPARSELT = DeviceFacts((9, 0), 502)


def _two_four_mask(out_features: int, in_features: int) -> torch.Tensor:
    return torch.tensor([True, False, True, False]).repeat(out_features, in_features // 4)


def test_cpu_weight_is_unsupported_with_the_reason() -> None:
    ok, reason = semi_structured_supported(torch.zeros(64, 64, dtype=torch.float16))
    assert not ok and "CUDA GPU" in reason and "cpu" in reason


def test_building_on_cpu_raises_so_callers_can_fall_back() -> None:
    linear = nn.Linear(64, 32).half()
    with pytest.raises(ValueError, match="cannot build a 2:4 .*CUDA GPU"):
        SemiStructuredLinear.from_masked(linear, _two_four_mask(32, 64))


def test_non_2_4_mask_is_rejected_before_the_device_check() -> None:
    with pytest.raises(ValueError, match="not 2:4"):
        SemiStructuredLinear.from_masked(nn.Linear(64, 32).half(), torch.ones(32, 64, dtype=torch.bool))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (_two_four_mask(3, 8), True),
        (torch.zeros(2, 8, dtype=torch.bool), True),  # ablated rows are still at most 2:4
        (torch.tensor([[1, 1, 1, 0, 1, 0, 0, 1]]), False),  # first group has 3
        (torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]]), True),
        (torch.ones(2, 6, dtype=torch.bool), False),  # in_features not a multiple of 4
        (torch.ones(8, dtype=torch.bool), False),  # not 2-D
    ],
)
def test_is_2_4(mask: torch.Tensor, expected: bool) -> None:
    assert is_2_4(mask) is expected


@pytest.mark.parametrize(
    ("shape", "dtype", "facts", "ok", "reason"),
    [
        ((768, 3072), torch.float16, AMPERE, True, "CUTLASS"),
        ((768, 3072), torch.bfloat16, AMPERE_CUSPARSELT, True, "cuSPARSELt"),
        ((48, 64), torch.float16, AMPERE_CUSPARSELT, True, "cuSPARSELt"),  # 16x16 blocks
        ((48, 64), torch.float16, AMPERE, False, "32x64 block"),  # CUTLASS needs multiples of 32 rows
        ((64, 96), torch.float16, AMPERE, False, "32x64 block"),
        ((768, 3072), torch.float32, AMPERE, False, "dtype torch.float32"),
        ((768, 3072), torch.float16, DeviceFacts((7, 5), 602), False, "7.5 < 8.0"),
        ((768, 3072), torch.float16, HOPPER_OLD_CUSPARSELT, False, "needs >= 0.6"),
        ((768, 3072), torch.float16, DeviceFacts((9, 0), None), False, "only 8.x"),
        ((768, 3072), torch.float16, DeviceFacts((9, 0), 602), True, "cuSPARSELt"),
        ((4, 768, 3072), torch.float16, AMPERE, False, "2-D"),
    ],
)
def test_support_decisions(shape, dtype, facts: DeviceFacts, ok: bool, reason: str) -> None:
    got_ok, got_reason = check_semi_structured(shape, dtype, facts)
    assert got_ok is ok and reason in got_reason
