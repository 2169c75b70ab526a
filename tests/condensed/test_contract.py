"""Every inference layer keeps one contract (condensed/layers/contract.py), and restore_dense undoes acceleration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_srigl import accelerate, restore_dense
from lightning_srigl.acceleration.accelerate import rebuild_plan, swap_layers
from lightning_srigl.condensed.kinds.registry import INFERENCE_LAYERS
from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.condensed.layers.contract import InferenceLayer, SavableLayer
from lightning_srigl.condensed.layers.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.layers.csr import CSRLinear
from lightning_srigl.condensed.layers.int8_conv import Int8CondensedConv1d, Int8CondensedConv2d
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.condensed.layers.semi_structured import SemiStructuredLinear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed
from lightning_srigl.masking import bind_masks, mask_of


def fan_in_mask(shape: tuple[int, ...], k: int, ablated: tuple[int, ...] = (1,), seed: int = 0) -> Tensor:
    """A constant fan-in bool mask: ``k`` random inputs per row, the ``ablated`` rows empty."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(shape[0], int(torch.tensor(shape[1:]).prod()), dtype=torch.bool)
    for r in range(shape[0]):
        if r not in ablated:
            rows[r, torch.randperm(rows.shape[1], generator=g)[:k]] = True
    return rows.view(shape)


def _linear() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Linear(12, 6), fan_in_mask((6, 12), 4), torch.randn(3, 12)


def _conv2d() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Conv2d(4, 6, 3, padding=1, groups=2), fan_in_mask((6, 2, 3, 3), 5), torch.randn(2, 4, 5, 5)


def _conv1d() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Conv1d(3, 5, 3, stride=2), fan_in_mask((5, 3, 3), 4), torch.randn(2, 3, 9)


def _ungrouped_conv2d() -> tuple[nn.Module, Tensor, Tensor]:
    return nn.Conv2d(4, 6, 3, padding=1), fan_in_mask((6, 4, 3, 3), 7), torch.randn(2, 4, 5, 5)


def _attention() -> tuple[nn.Module, dict, Tensor]:
    masks = {"in_proj_weight": fan_in_mask((24, 8), 3, ablated=()), "out_proj.weight": fan_in_mask((8, 8), 2)}
    return nn.MultiheadAttention(8, 2, batch_first=True), masks, torch.randn(2, 3, 8)


# How to build each layer from a masked module, and a call of both: every inference layer needs an entry.
CASES: dict[type[nn.Module], tuple[Callable[[], tuple], Callable]] = {
    CondensedLinear: (_linear, CondensedLinear.from_masked),
    CSRLinear: (_linear, CSRLinear.from_masked),
    CondensedConv2d: (_conv2d, CondensedConv2d.from_masked),
    CondensedConv1d: (_conv1d, CondensedConv1d.from_masked),
    ProjectedAttention: (
        _attention,
        lambda m, masks: ProjectedAttention.from_masked(m, masks, masks["out_proj.weight"]),
    ),
    SemiStructuredLinear: (_linear, SemiStructuredLinear.from_masked),  # CUDA only: its build is skipped here
    Int8CondensedLinear: (_linear, Int8CondensedLinear.from_masked),
    Int8CondensedConv2d: (_ungrouped_conv2d, Int8CondensedConv2d.from_masked),
    Int8CondensedConv1d: (_conv1d, Int8CondensedConv1d.from_masked),
}
# Quantized layers: to_dense() is their dequantized weight, and they compute within quantization error of it.
LOSSY = {Int8CondensedLinear, Int8CondensedConv2d, Int8CondensedConv1d}


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return (
        module(x, x, x, need_weights=False)[0]
        if isinstance(module, (nn.MultiheadAttention, ProjectedAttention))
        else module(x)
    )


def _masked_weights(module: nn.Module, masks: Tensor | dict) -> dict[str, Tensor]:
    masks = masks if isinstance(masks, dict) else {"weight": masks}
    return {path: module.get_parameter(path).detach() * mask for path, mask in masks.items()}


@pytest.mark.parametrize("cls", INFERENCE_LAYERS, ids=lambda c: c.__name__)
def test_every_inference_layer_keeps_the_contract(cls: type[nn.Module], tmp_path: Path) -> None:
    assert issubclass(cls, InferenceLayer), f"{cls.__name__} lacks from_masked, to_dense or dense_masks"
    assert cls in CASES, f"add {cls.__name__} to CASES"
    if cls is SemiStructuredLinear:  # saved as an exported program (its weight is a tensor subclass)
        if not torch.cuda.is_available():
            pytest.skip("2:4 semi-structured layers are built on CUDA only")
    else:
        assert issubclass(cls, SavableLayer), f"{cls.__name__} lacks spec_args or from_spec"
    build, from_masked = CASES[cls]
    module, masks, x = build()
    layer = from_masked(module.eval(), masks)
    expected = _masked_weights(module, masks)
    dense = layer.to_dense()
    assert type(dense) is type(module)
    for path, weight in expected.items():
        if cls in LOSSY:  # int8 per neuron: within half a quantization step of the weight
            step = weight.flatten(1).abs().amax(dim=1).view(-1, *[1] * (weight.dim() - 1)) / 127
            assert bool(((dense.get_parameter(path) - weight).abs() <= step / 2 + 1e-7).all()), path
        else:
            assert torch.equal(dense.get_parameter(path), weight), path
    given = masks if isinstance(masks, dict) else {"weight": masks}
    assert layer.dense_masks().keys() == given.keys()
    for path, mask in layer.dense_masks().items():
        assert torch.equal(mask, given[path].bool()), path
    tolerance = {"atol": 0.05, "rtol": 0.05} if cls in LOSSY else {}
    with torch.no_grad():
        torch.testing.assert_close(_call(layer, x), _call(dense.eval(), x), **tolerance)
    if issubclass(cls, SavableLayer):  # spec_args / from_spec, through the file format that uses them
        assert save_condensed(layer, tmp_path / "layer.pt") == "spec"
        rebuilt = load_condensed(tmp_path / "layer.pt")
        assert type(rebuilt) is cls
        with torch.no_grad():
            torch.testing.assert_close(_call(rebuilt.eval(), x), _call(layer, x))


class Net(nn.Module):
    """A convolution, a linear layer and self-attention, each masked with constant fan-in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 16, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(self.conv(x).relu().flatten(1)).relu().unsqueeze(1).repeat(1, 3, 1)
        return self.head(self.attention(h, h, h, need_weights=False)[0])


def masked_net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    masks = {
        "conv.weight": fan_in_mask((4, 3, 3, 3), 9), "linear.weight": fan_in_mask((8, 64), 16),
        "attention.in_proj_weight": fan_in_mask((24, 8), 3, ablated=()),
        "attention.out_proj.weight": fan_in_mask((8, 8), 3, ablated=()),
        "head.weight": fan_in_mask((5, 8), 2, ablated=()),
    }  # fmt: skip
    with torch.no_grad():
        for fqn, mask in masks.items():
            net.get_parameter(fqn).mul_(mask)  # the masked dense model: zero outside the masks
    bind_masks(net, masks)
    return net


@pytest.mark.parametrize("chosen", ["fastest", "dense", "condensed", "csr"])
def test_restore_dense_gives_back_the_masked_dense_model_exactly(chosen: str) -> None:
    """After acceleration (``chosen``: what it chose, or one candidate forced on every layer that has it)."""
    reference, net = masked_net(), masked_net()
    x = torch.randn(2, 3, 4, 4)
    report = accelerate(net, x, fold=False, warmup=1, repeats=1, verbose=False)
    if chosen != "fastest":  # the same swap with `chosen` wherever the layer's kind offers it
        net = masked_net()
        rows = [replace(row, chosen=chosen if chosen in row.times else "condensed") for row in report.rows]
        swap_layers(net, rebuild_plan(net, replace(report, rows=rows)))
        assert {type(module) for module in net.modules()} & {
            CondensedLinear,
            CSRLinear,
            ProjectedAttention,
        } or chosen == "dense"
    restore_dense(net)
    for name, module in reference.named_modules():
        assert type(net.get_submodule(name)) is type(module), name
    expected, got = reference.state_dict(), net.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


@pytest.mark.parametrize("candidates", [("dense",), ("dense", "condensed")])
def test_the_swap_and_its_inverse_keep_hooks_and_the_training_flag(candidates: tuple[str, ...]) -> None:
    net = masked_net()
    calls: list[str] = []
    net.linear.register_forward_pre_hook(lambda module, args: calls.append("pre"))
    net.linear.register_forward_hook(lambda module, args, out: calls.append("post"))
    net.linear.train()  # the rest of the model is in eval mode
    x = torch.randn(2, 3, 4, 4)
    accelerate(net, x, candidates=candidates, fold=False, warmup=1, repeats=1, verbose=False)
    calls.clear()
    assert net.linear.training and not net.conv.training
    with torch.no_grad():
        net(x)
    assert calls == ["pre", "post"]
    restore_dense(net)
    calls.clear()
    assert net.linear.training and not net.conv.training and mask_of(net.linear, "weight") is not None
    with torch.no_grad():
        net(x)
    assert calls == ["pre", "post"]


@pytest.mark.parametrize(
    "cls", [CondensedLinear, CSRLinear, CondensedConv2d, CondensedConv1d], ids=lambda c: c.__name__
)
def test_from_masked_is_exact_for_a_mask_of_unequal_fan_in_over_dense_weights(cls: type[nn.Module]) -> None:
    """Rows of unequal fan-in are padded with taps of zero weight, whatever the module holds outside the mask."""
    build = CASES[cls][0]
    module, _, x = build()
    mask = torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    assert len(mask.flatten(1).sum(1).unique()) > 1  # unequal fan-in
    layer = cls.from_masked(module.eval(), mask)
    with torch.no_grad():
        module.weight.mul_(mask)
        torch.testing.assert_close(layer(x), module(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [CondensedLinear, CSRLinear], ids=lambda c: c.__name__)
def test_a_linear_layer_from_its_module_alone_takes_the_installed_mask_else_the_non_zeros(cls: type) -> None:
    linear, mask, x = _linear()
    with torch.no_grad():
        linear.weight.mul_(mask)
    from_zeros = cls.from_masked(linear)
    bind_masks(linear, {"weight": mask})
    with torch.no_grad():
        linear.weight[mask] = 0.0  # zeros inside the installed mask: only the mask says which weights it keeps
    from_installed = cls.from_masked(linear)
    assert torch.equal(from_zeros.dense_masks()["weight"], mask)
    if cls is CondensedLinear:  # CSR stores the non-zeros only
        assert torch.equal(from_installed.dense_masks()["weight"], mask)
    with torch.no_grad():
        torch.testing.assert_close(from_installed(x), linear(x))


@pytest.mark.parametrize(
    ("cls", "old", "new", "make_args"),
    [
        (CondensedLinear, "from_linear", "from_masked", lambda: _linear()[:2]),
        (CSRLinear, "from_linear", "from_masked", lambda: _linear()[:2]),
        (
            CondensedLinear,
            "from_weight_mask",
            "from_dense_weight",
            lambda: (torch.randn(6, 12), fan_in_mask((6, 12), 4)),
        ),
        (
            CondensedConv2d,
            "from_weight_mask",
            "from_dense_weight",
            lambda: (torch.randn(6, 4, 3, 3), fan_in_mask((6, 4, 3, 3), 5)),
        ),
    ],
)
def test_0_1_constructor_names_warn_and_build_what_the_new_name_builds(
    cls: type, old: str, new: str, make_args: Callable[[], tuple]
) -> None:
    args = make_args()
    with pytest.warns(DeprecationWarning, match=rf"{cls.__name__}\.{old} is deprecated: use {cls.__name__}\.{new}"):
        built = getattr(cls, old)(*args)
    expected = getattr(cls, new)(*args)
    assert type(built) is cls and built.state_dict().keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key
