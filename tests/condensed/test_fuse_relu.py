"""A ReLU that alone consumes a condensed convolution's output moves into the kernel's epilogue, exactly."""

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.swap import restore_dense
from lightning_srigl.condensed.fold.activation import relu_pairs
from lightning_srigl.condensed.layers.conv import CondensedConv2d
from lightning_srigl.masking import bind_masks
from tests.condensed.test_compiled import condensed_everywhere as _always_condensed


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN, a residual add and a ReLU after it (a conv whose output has two users)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.act(self.body(h) + h)


def _masked_block() -> Block:
    torch.manual_seed(0)
    model = Block()
    for bn in (model.body[1], model.body[4]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.data.normal_()
    masks = {}
    for name in ("stem.weight", "body.0.weight", "body.3.weight"):
        weight = model.get_parameter(name)
        scores = torch.rand(weight.shape[0], weight[0].numel())
        keep = scores >= scores.kthvalue(scores.shape[1] - 5, dim=1, keepdim=True).values
        masks[name] = keep.view_as(weight)
    bind_masks(model, masks)
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    return model.eval()


def test_relu_pairs_need_the_relu_to_be_the_only_consumer() -> None:
    model = _masked_block()
    assert relu_pairs(model) == {}  # the BatchNorm sits between body.0 and its ReLU until it is folded
    model.body[1] = nn.Identity()
    assert relu_pairs(model) == {"body.0": "body.2"}  # stem feeds the add too; body.3 feeds the add


def test_accelerate_fuses_the_relu_and_keeps_the_outputs() -> None:
    model = _masked_block()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
    accelerate(model, x, verbose=False, model_repeats=0, timer=_always_condensed)
    assert isinstance(model.body[0], CondensedConv2d) and model.body[0].relu
    assert isinstance(model.body[2], nn.Identity)
    assert not model.stem.relu and not model.body[3].relu and isinstance(model.act, nn.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
        restore_dense(model)
        assert isinstance(model.body[0], nn.Sequential) and isinstance(model.body[0][1], nn.ReLU)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_without_folding_nothing_is_fused() -> None:
    model = _masked_block()
    x = torch.randn(1, 3, 12, 12)
    accelerate(model, x, verbose=False, model_repeats=0, fold=False, timer=_always_condensed)
    assert isinstance(model.body[2], nn.ReLU) and not model.body[0].relu
