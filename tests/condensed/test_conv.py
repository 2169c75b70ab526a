"""CondensedConv2d / CondensedConv1d equal the masked dense convolutions they replace, on every CPU variant."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_srigl.condensed.conv import CondensedConv1d, CondensedConv2d, condense_conv
from lightning_srigl.condensed.cpu_kernel import load_extension
from lightning_srigl.kernels.conv import conv2d_reference
from tests.condensed.conv_cases import GEOMETRIES, assert_close_to_scale, masked_conv, reference


def block_widths(kernel) -> list[int]:
    lanes = 16 if kernel.variant == "avx512" else 4 if kernel.variant == "neon" else 8
    return sorted({0, lanes, 16, 32, 48, 64})


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}g{g[9]}")
def test_op_equals_masked_dense_conv_for_every_block_width(kernel, geometry):
    conv, mask, x = masked_conv(geometry)
    layer = CondensedConv2d.from_masked(conv, mask)
    expected = reference(conv, x)
    for block in block_widths(kernel):
        y = kernel.condensed_conv2d(
            x, layer.values, layer.indices, layer.active_rows, layer.bias, conv.out_channels, conv.groups,
            list(conv.kernel_size), list(conv.stride), list(conv.padding), list(conv.dilation), block,
        )  # fmt: skip
        assert_close_to_scale(y, expected)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}g{g[9]}")
def test_op_relu_epilogue_equals_relu_of_masked_dense_conv(kernel, geometry):
    conv, mask, x = masked_conv(geometry)  # ablated filters with biases of both signs
    layer = CondensedConv2d.from_masked(conv, mask)
    expected = reference(conv, x).relu()
    for block in block_widths(kernel):
        y = kernel.condensed_conv2d(
            x, layer.values, layer.indices, layer.active_rows, layer.bias, conv.out_channels, conv.groups,
            list(conv.kernel_size), list(conv.stride), list(conv.padding), list(conv.dilation), block, True,
        )  # fmt: skip
        assert_close_to_scale(y, expected)
        assert bool((y >= 0).all())


def test_relu_layer_equals_relu_of_masked_dense_conv_on_every_path():
    conv, mask, x = masked_conv(GEOMETRIES[1])
    expected = reference(conv, x).relu()
    for backend, algorithm in (("auto", "direct"), ("torch", "direct"), ("auto", "im2col")):
        layer = CondensedConv2d.from_masked(conv, mask)
        layer.backend, layer.algorithm, layer.relu = backend, algorithm, True
        with torch.no_grad():
            assert_close_to_scale(layer(x), expected)
    with torch.no_grad():
        assert_close_to_scale(torch.ops.lightning_srigl.condensed_conv2d(*_op_args(layer, x), True), expected)
        dense = layer.to_dense()
        assert isinstance(dense, nn.Sequential) and isinstance(dense[1], nn.ReLU)
        assert_close_to_scale(dense(x), expected)
    assert set(layer.dense_masks()) == {"0.weight"}
    args = {key: value for key, value in layer.spec_args().items() if key != "bias"}
    assert CondensedConv2d.from_spec(args, dict(layer.state_dict())).relu


# ResNet-50's cases beyond GEOMETRIES: batch 8 and batch 0, 1x1 on 7 x 7 and 14 x 14 (channel planes of 49 and 196
# floats, copied to aligned planes: csrc/conv.h), a strided 3x3 and a strided 1x1 at 14 x 14, and a 1x1 and a 3x3
# whose blocks read more of x than one chunk (kChunkBytes), so each row's taps run in two passes, and stride-2
# convolutions on rows wide enough for the vectorised stride-2 plane copy (an odd width, a 7x7 stem).
RESNET_GEOMETRIES = [
    (2, 6, 11, 75, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (1, 3, 20, 80, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    (2, 160, 8, 8, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (1, 96, 14, 14, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (8, 24, 7, 7, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (0, 8, 14, 14, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (1, 20, 14, 14, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (8, 16, 14, 14, 24, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (2, 12, 14, 14, 32, (1, 1), (2, 2), (0, 0), (1, 1), 1),
]


# Grids with no wasted plane rows, whose N images' planes the kernel lays side by side as one grid (csrc/conv.h,
# ConvGeometry::batched): 1x1s stride 1 and 2 on odd and ResNet sizes, a padded 1x1 (its padding is output), kernel =
# stride patchifies; batch 2 to 9, so blocks start and end mid-image and span several images.
BATCHED_GEOMETRIES = [
    (9, 20, 7, 7, 36, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (3, 12, 13, 11, 20, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (5, 8, 5, 6, 12, (1, 1), (1, 1), (1, 1), (1, 1), 1),
    (4, 10, 14, 14, 24, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    (2, 6, 9, 9, 8, (3, 3), (3, 3), (0, 0), (1, 1), 1),
    (7, 4, 10, 10, 8, (2, 2), (2, 2), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geometry", BATCHED_GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"s{g[6][0]}")
def test_op_over_several_images_per_block_equals_masked_dense_conv(kernel, geometry, relu):
    conv, mask, x = masked_conv(geometry)
    layer = CondensedConv2d.from_masked(conv, mask)
    expected = reference(conv, x)
    for block in block_widths(kernel):
        y = kernel.condensed_conv2d(*_op_args(layer, x), block, relu)
        assert_close_to_scale(y, expected.relu() if relu else expected)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    "geometry",
    GEOMETRIES + RESNET_GEOMETRIES + BATCHED_GEOMETRIES,
    ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}g{g[9]}",
)
def test_op_residual_epilogue_equals_masked_dense_conv_plus_residual(kernel, geometry, relu):
    conv, mask, x = masked_conv(geometry)  # ablated filters: their channels output bias + residual
    layer = CondensedConv2d.from_masked(conv, mask)
    expected = reference(conv, x)
    residual = torch.randn(expected.shape)
    expected = expected + residual.double()
    expected = expected.relu() if relu else expected
    for block in block_widths(kernel):
        y = kernel.condensed_conv2d(*_op_args(layer, x), block, relu, residual)
        assert_close_to_scale(y, expected)
    with torch.no_grad():  # the Python op (the default variant) and its exact reference
        assert_close_to_scale(torch.ops.lightning_srigl.condensed_conv2d(*_op_args(layer, x), relu, residual), expected)
        assert_close_to_scale(conv2d_reference(*_op_args(layer, x), relu, residual), expected)


# Every filter keeps all its taps (density 1, only ablated filters): every row reads the same taps, the kernel's
# register-blocked path (conv_rows' SHARED, csrc/conv.h). A 1x1 read in place, a 1x1 on 7 x 7 planes, 1x1 taps in two
# chunks, padded and strided 3x3s, the 7x7 stem (a tap panel); batch 0 to 9; more rows than one step takes.
SHARED_GEOMETRIES = [
    (3, 16, 8, 8, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (9, 24, 7, 7, 44, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 160, 8, 8, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (0, 8, 9, 11, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (5, 8, 13, 11, 20, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    (2, 3, 30, 34, 24, (7, 7), (2, 2), (3, 3), (1, 1), 1),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geometry", SHARED_GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}")
def test_op_with_every_row_reading_the_same_taps_equals_masked_dense_conv(kernel, geometry, relu):
    conv, mask, x = masked_conv(geometry, density=1.0, ablated=0.2)
    layer = CondensedConv2d.from_masked(conv, mask)
    assert bool((layer.indices == layer.indices[:1]).all()) and layer.n_active < conv.out_channels
    expected = reference(conv, x)
    residual = torch.randn(expected.shape)
    for block in block_widths(kernel):
        y = kernel.condensed_conv2d(*_op_args(layer, x), block, relu)
        assert_close_to_scale(y, expected.relu() if relu else expected)
        y = kernel.condensed_conv2d(*_op_args(layer, x), block, relu, residual)
        with_residual = expected + residual.double()
        assert_close_to_scale(y, with_residual.relu() if relu else with_residual)


def test_op_rejects_a_residual_of_another_shape(kernel):
    conv, mask, x = masked_conv(GEOMETRIES[0])
    layer = CondensedConv2d.from_masked(conv, mask)
    with pytest.raises(RuntimeError, match="residual must be a contiguous fp32 tensor of the output's shape"):
        kernel.condensed_conv2d(*_op_args(layer, x), 0, True, torch.zeros(1, conv.out_channels, 10, 9))


def _op_args(layer: CondensedConv2d, x: torch.Tensor) -> tuple:
    return (
        x, layer.values, layer.indices, layer.active_rows, layer.bias, layer.out_channels, layer.groups,
        list(layer.kernel_size), list(layer.stride), list(layer.padding), list(layer.dilation),
    )  # fmt: skip


def test_op_rejects_a_block_width_that_is_not_a_multiple_of_the_lanes(kernel):
    conv, mask, x = masked_conv(GEOMETRIES[0])
    layer = CondensedConv2d.from_masked(conv, mask)
    with pytest.raises(RuntimeError, match="block must be 0"):
        kernel.condensed_conv2d(
            x, layer.values, layer.indices, layer.active_rows, None, 16, conv.groups, [3, 3], [1, 1], [1, 1], [1, 1], 12
        )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 4]),
    per_group=st.integers(1, 4),
    out_per_group=st.integers(1, 5),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    kernel_size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    density=st.floats(0.05, 1.0),
    ablated=st.floats(0.0, 0.6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_variant_equals_masked_dense_conv_over_random_geometry(
    kernel,
    batch,
    groups,
    per_group,
    out_per_group,
    size,
    kernel_size,
    stride,
    padding,
    dilation,
    density,
    ablated,
    bias,
    seed,
):
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel_size)]
    if any(s + 2 * p < span for s, p, span in zip(size, padding, spans)):
        return  # the dilated kernel does not fit the padded image: nn.Conv2d rejects it too
    geometry = (
        batch,
        groups * per_group,
        *size,
        groups * out_per_group,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
    )
    conv, mask, x = masked_conv(geometry, density, ablated, bias, seed)
    layer = CondensedConv2d.from_masked(conv, mask)
    y = kernel.condensed_conv2d(
        x, layer.values, layer.indices, layer.active_rows, layer.bias, conv.out_channels, groups,
        list(kernel_size), list(stride), list(padding), list(dilation), 0,
    )  # fmt: skip
    assert_close_to_scale(y, reference(conv, x))
    with torch.no_grad():
        assert_close_to_scale(layer(x), reference(conv, x))  # the module, on the default variant


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_non_zero_padding_modes(padding_mode):
    conv, mask, x = masked_conv((2, 4, 9, 8, 6, (3, 3), (2, 1), (1, 1), (1, 1), 1))
    conv.padding_mode = padding_mode
    conv._reversed_padding_repeated_twice = (1, 1, 1, 1)
    layer = CondensedConv2d.from_masked(conv, mask)
    with torch.no_grad():
        assert_close_to_scale(layer(x), conv(x))


@pytest.mark.parametrize(("kernel", "dilation"), [((3, 3), (1, 1)), ((4, 2), (1, 1)), ((3, 2), (2, 1))])
def test_same_and_valid_padding_strings(kernel, dilation):
    for padding in ("same", "valid"):
        torch.manual_seed(0)
        conv = nn.Conv2d(4, 6, kernel, padding=padding, dilation=dilation)
        mask = masked_conv((1, 4, 1, 1, 6, kernel, (1, 1), (0, 0), dilation, 1))[1]
        with torch.no_grad():
            conv.weight.mul_(mask)
        x = torch.randn(2, 4, 9, 10)
        with torch.no_grad():
            assert_close_to_scale(CondensedConv2d.from_masked(conv, mask)(x), conv(x))


def test_unbatched_input_and_ablated_filters_output_their_bias():
    conv, mask, x = masked_conv(GEOMETRIES[0], ablated=0.5)
    layer = CondensedConv2d.from_masked(conv, mask)
    assert layer.n_active < conv.out_channels
    with torch.no_grad():
        y = layer(x[0])
    assert_close_to_scale(y, reference(conv, x)[0])
    ablated = ~mask.flatten(1).any(dim=1)
    torch.testing.assert_close(y[ablated], conv.bias[ablated][:, None, None].expand(-1, *y.shape[1:]))


def test_indices_are_taps_over_all_channels_of_the_rows_group():
    conv, mask, _ = masked_conv(GEOMETRIES[6])  # depthwise: group g reads channel g only
    values, indices, rows = condense_conv(conv.weight, mask, conv.groups)
    assert indices.dtype == torch.int16
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    assert torch.equal(indices.long() // taps, rows[:, None].expand_as(indices) // (conv.out_channels // conv.groups))
    assert values.shape[1] == int(mask.flatten(1).sum(1).max())


def test_dense_weight_and_to_dense_round_trip():
    conv, mask, x = masked_conv(GEOMETRIES[5])
    layer = CondensedConv2d.from_masked(conv, mask)
    torch.testing.assert_close(layer.dense_weight(), conv.weight.detach())
    dense = layer.to_dense()
    assert (dense.stride, dense.padding, dense.dilation, dense.groups) == (
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )
    with torch.no_grad():
        torch.testing.assert_close(dense(x), conv(x))


def test_gradient_through_the_reference_path_equals_the_masked_dense_gradient():
    conv, mask, x = masked_conv(GEOMETRIES[1])
    layer = CondensedConv2d.from_masked(conv, mask)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer(x1).square().sum().backward()
    conv(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_torch_backend_and_bfloat16_use_the_reference():
    conv, mask, x = masked_conv(GEOMETRIES[0])
    layer = CondensedConv2d.from_masked(conv, mask)
    layer.backend = "torch"
    with torch.no_grad():
        assert_close_to_scale(layer(x), reference(conv, x))
        half = CondensedConv2d.from_masked(conv, mask).to(torch.bfloat16)
        assert_close_to_scale(half(x.bfloat16()).float(), reference(conv, x), tolerance=3e-2)


def test_constant_fan_in_is_required():
    conv, mask, _ = masked_conv(GEOMETRIES[0], ablated=0.0)
    mask = mask.clone()
    mask.view(mask.shape[0], -1)[0, :] = True
    with pytest.raises(ValueError, match="constant"):
        CondensedConv2d.from_dense_weight(conv.weight, mask, padding=1)


def test_wrong_input_says_what_was_expected():
    conv, mask, x = masked_conv(GEOMETRIES[0])
    layer = CondensedConv2d.from_masked(conv, mask)
    with pytest.raises(ValueError, match=r"expected input \(N, 8, H, W\)"):
        layer(x[:, :4])


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups"), [(3, 1, 1, 1, 1), (5, 2, 2, 2, 2), (1, 1, 0, 1, 1)]
)
def test_conv1d_equals_masked_dense_conv1d(kernel, stride, padding, dilation, groups):
    torch.manual_seed(kernel)
    conv = nn.Conv1d(4, 6, kernel, stride, padding, dilation, groups)
    mask = masked_conv((1, 4, 1, 1, 6, (1, kernel), (1, 1), (0, 0), (1, 1), groups))[1].squeeze(2)
    with torch.no_grad():
        conv.weight.mul_(mask)
    layer = CondensedConv1d.from_masked(conv, mask)
    x = torch.randn(3, 4, 23)
    with torch.no_grad():
        assert_close_to_scale(layer(x), conv(x))
        assert_close_to_scale(layer(x[0]), conv(x[0]))
    torch.testing.assert_close(layer.to_dense().weight, conv.weight.detach())


def test_the_cpu_kernel_runs_in_eager_inference(monkeypatch):
    kernel = load_extension()
    if kernel is None:
        pytest.skip("no C++ kernel here; the reference path is tested above")
    conv, mask, x = masked_conv(GEOMETRIES[0])
    layer = CondensedConv2d.from_masked(conv, mask)
    monkeypatch.setattr("lightning_srigl.condensed.conv.conv2d_reference", None)  # would raise if called
    monkeypatch.setattr("lightning_srigl.condensed.conv.condensed_conv2d", None)
    with torch.no_grad():
        assert_close_to_scale(layer(x), reference(conv, x))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}g{g[9]}")
def test_the_im2col_algorithm_equals_masked_dense_conv(geometry):
    conv, mask, x = masked_conv(geometry, ablated=0.3)
    layer = CondensedConv2d.im2col_from_masked(conv, mask)
    assert layer.algorithm == "im2col"
    with torch.no_grad():
        assert_close_to_scale(layer(x), reference(conv, x))


def test_folded_filters_are_padded_to_a_constant_fan_in():
    conv, mask, x = masked_conv(GEOMETRIES[0], ablated=0.0)
    mask = mask.clone()
    mask[0].view(-1)[torch.nonzero(mask[0].view(-1))[0]] = False  # one filter lost a tap (a folded input)
    with torch.no_grad():
        conv.weight.mul_(mask)
    layer = CondensedConv2d.from_masked(conv, mask)
    assert layer.fan_in == int(mask.flatten(1).sum(1).max())
    with torch.no_grad():
        assert_close_to_scale(layer(x), reference(conv, x))
