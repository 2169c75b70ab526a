"""One exact pass: inactive entries become +0 whatever they held, active entries keep every bit."""

import pytest
import torch

from lightning_srigl.masking import move_inactive_, step_mask, zero_inactive_


def _values(dtype: torch.dtype) -> torch.Tensor:
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.5, 3.0, 1e-30])
    return torch.cat([special, torch.randn(24, generator=torch.Generator().manual_seed(0))]).to(dtype).view(4, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["keep bits", "bool inactive"])
def test_zero_inactive_keeps_active_bits_and_writes_positive_zero(dtype: torch.dtype, form: str) -> None:
    values = _values(dtype)
    mask = torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[0, :4] = True  # NaN, inf, -inf and -0.0 stay where active ...
    mask[1, :4] = False
    values[1, :4] = values[0, :4]  # ... and are zeroed where inactive
    mask_form = step_mask(mask, values) if form == "keep bits" else mask.logical_not()
    tensor = values.clone()
    zero_inactive_(tensor, mask_form)
    bits = (
        torch.int16
        if dtype in (torch.float16, torch.bfloat16)
        else {4: torch.int32, 8: torch.int64}[values.element_size()]
    )
    assert torch.equal(tensor.view(bits)[mask], values.view(bits)[mask])
    assert torch.equal(tensor.view(bits)[~mask], torch.zeros(int((~mask).sum()), dtype=bits))  # +0.0 exactly


def test_keep_bits_match_the_element_width_and_other_devices_get_the_bool_form() -> None:
    mask = torch.tensor([[True, False], [False, True]])
    assert step_mask(mask, torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.int64
    assert torch.equal(step_mask(mask, torch.zeros(2, 2)), torch.tensor([[-1, 0], [0, -1]], dtype=torch.int32))
    on_meta = step_mask(mask, torch.zeros(2, 2, device="meta"))
    assert on_meta.dtype == torch.bool and on_meta.device.type == "meta"


def test_zero_inactive_works_on_strided_tensors() -> None:
    values = torch.randn(8, 4).t()  # a non-contiguous (4, 8) view
    mask = torch.rand(4, 8, generator=torch.Generator().manual_seed(2)) < 0.3
    expected = values.masked_fill(~mask, 0)
    zero_inactive_(values, step_mask(mask, values))
    assert torch.equal(values, expected)


def test_step_mask_rejects_a_misfit_or_non_bool_mask() -> None:
    with pytest.raises(ValueError, match=r"bool mask of the tensor's shape \(2, 2\)"):
        step_mask(torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="torch.float32"):
        step_mask(torch.ones(2, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("form", ["keep bits", "bool inactive"])
def test_move_inactive_splits_a_tensor_exactly(form: str) -> None:
    values = _values(torch.float32)
    mask = torch.rand(4, 8, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[0, :4], mask[1, :4] = False, True
    values[1, :4] = values[0, :4]  # NaN, inf, -inf, -0.0 on both sides
    tensor, out = values.clone(), torch.full_like(values, 7.0)
    move_inactive_(tensor, step_mask(mask, values) if form == "keep bits" else mask.logical_not(), out)
    bits = torch.int32
    assert torch.equal(tensor.view(bits)[mask], values.view(bits)[mask])
    assert torch.equal(out.view(bits)[~mask], values.view(bits)[~mask])
    assert not tensor.view(bits)[~mask].any() and not out.view(bits)[mask].any()  # +0.0 on the other side
