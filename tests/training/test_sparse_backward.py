"""SparseBackward: masked nn.Linear layers whose weight gradient is the dense one masked, computed at active
positions."""

from __future__ import annotations

import copy
import io
import pickle
from unittest import mock

import pytest
import torch
from torch import nn

from lightning_srigl.condensed.sampled import sampled_product_available
from lightning_srigl.masking import MaskedParameters, select_parameters
from lightning_srigl.training import SparseBackward, supports_sparse_backward
from lightning_srigl.training import sparse_backward as sparse_backward_module

pytestmark = pytest.mark.skipif(not sampled_product_available(), reason="the C++ CPU kernels are not built")


class Net(nn.Module):
    """Three linear layers; ``twice`` applies the middle (square) one twice."""

    def __init__(self, bias: bool = True, twice: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16, bias=bias)
        self.b = nn.Linear(16, 16, bias=bias)
        self.c = nn.Linear(16, 3, bias=bias)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        if self.twice:
            h = torch.tanh(self.b(h))
        return self.c(h)


FQNS = ["a.weight", "b.weight", "c.weight"]


def masked_model(bias: bool = True, twice: bool = False, seed: int = 0, density: float = 0.3):
    """``(model, reference, masked)``: masks installed and weights zeroed there; ``reference`` an unpatched copy."""
    torch.manual_seed(seed)
    model = Net(bias=bias, twice=twice)
    masked = MaskedParameters(select_parameters(model))
    g = torch.Generator().manual_seed(seed + 1)
    masked.install_({p.fqn: torch.rand(p.shape, generator=g) < density for p in masked.params})
    masked.apply_to_weights_()
    return model, copy.deepcopy(model), masked


def patched(bias: bool = True, twice: bool = False, seed: int = 0):
    model, reference, masked = masked_model(bias, twice, seed)
    backward = SparseBackward(masked)
    assert backward.install() == FQNS
    return model, reference, masked, backward


def run(model: nn.Module, x: torch.Tensor, input_grad: bool = True, seed: int = 7):
    """Forward, a loss with a random output gradient, backward: ``(output, input grad, {name: grad})``."""
    x = x.detach().clone().requires_grad_(input_grad)
    out = model(x)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * probe).sum().backward()
    return out.detach(), x.grad, {name: p.grad for name, p in model.named_parameters()}


def inputs(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, 12, generator=torch.Generator().manual_seed(len(shape) * 100 + shape[0])).to(dtype)


def assert_positive_zero(values: torch.Tensor) -> None:
    assert bool((values == 0).all()) and not bool(torch.signbit(values).any())


def assert_sampled_gradients(model, reference, masked, grads, ref_grads) -> None:
    """Weight gradients: the dense one times the mask, +0 at inactive positions; other gradients close."""
    for name, grad in grads.items():
        ref = ref_grads[name]
        if name in masked.fqns:
            mask = masked.mask(name)
            assert bool((ref[~mask] != 0).any()), f"{name}: the test needs a dense gradient nonzero where inactive"
            torch.testing.assert_close(grad, ref * mask, atol=1e-5, rtol=1e-4)
            assert_positive_zero(grad[~mask])
        else:
            torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-4)


@pytest.fixture
def sampled_calls():
    """Counts the layer calls that took the sampled-gradient path."""
    with mock.patch.object(
        sparse_backward_module._LinearSampledWeightGrad,
        "apply",
        wraps=sparse_backward_module._LinearSampledWeightGrad.apply,
    ) as spy:
        yield spy


@pytest.mark.parametrize("shape", [(1,), (10,), (129,), (4, 5), (2, 3, 7)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_the_dense_layer_masked(shape, bias, sampled_calls):
    model, reference, masked, _ = patched(bias=bias)
    x = inputs(shape)
    out, x_grad, grads = run(model, x)
    assert sampled_calls.call_count == 3
    ref_out, ref_x_grad, ref_grads = run(reference, x)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=1e-6, rtol=1e-5)
    biases = {"a.bias", "b.bias", "c.bias"} if bias else set()
    assert set(grads) == set(ref_grads) == set(FQNS) | biases
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)


def test_an_input_that_does_not_require_grad(sampled_calls):
    model, reference, masked, _ = patched()
    x = inputs((6,))
    out, x_grad, grads = run(model, x, input_grad=False)
    ref_out, _, ref_grads = run(reference, x, input_grad=False)
    assert sampled_calls.call_count == 3 and x_grad is None
    assert torch.equal(out, ref_out)
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)


def test_a_non_contiguous_input_and_an_expanded_output_gradient():
    model, reference, masked, _ = patched()
    x = inputs((5, 8)).transpose(0, 1)  # (8, 5, 12), not contiguous
    assert not x.is_contiguous()
    model(x).sum().backward()  # the gradient of .sum() reaches the last layer expanded (stride 0)
    reference(x).sum().backward()
    assert_sampled_gradients(
        model, reference, masked,
        {n: p.grad for n, p in model.named_parameters()}, {n: p.grad for n, p in reference.named_parameters()},
    )  # fmt: skip


def dense_equal(model, reference, x) -> None:
    """The patched model took the class forward: every output and gradient is the unpatched one's, bit for bit."""
    out, x_grad, grads = run(model, x)
    ref_out, ref_x_grad, ref_grads = run(reference, x)
    assert torch.equal(out, ref_out) and torch.equal(x_grad, ref_x_grad)
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name
    assert bool((grads["a.weight"][~mask_of(model, "a")] != 0).any())  # dense: nonzero where inactive


def mask_of(model, layer: str) -> torch.Tensor:
    return getattr(model, layer).weight_sparsity_mask


def test_disabled_takes_the_class_forward(sampled_calls):
    model, reference, _, backward = patched()
    backward.enabled = False
    dense_equal(model, reference, inputs((9,)))
    assert sampled_calls.call_count == 0
    assert backward.untouched_gradients() == set()
    backward.enabled = True
    run(model, inputs((9,)))
    assert sampled_calls.call_count == 3


def test_no_grad_takes_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    x = inputs((4, 3))
    with torch.no_grad():
        out = model(x)
    assert sampled_calls.call_count == 0 and out.grad_fn is None
    assert torch.equal(out, reference(x).detach())
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))
    assert sampled_calls.call_count == 0


def test_a_float64_model_takes_the_class_forward(sampled_calls):
    model, reference, masked, backward = patched()
    model.double()
    reference.double()
    assert masked.mask("a.weight").dtype == torch.bool
    dense_equal(model, reference, inputs((6,), torch.float64))
    assert sampled_calls.call_count == 0 and backward.untouched_gradients() == set()


def test_a_float64_input_to_a_float32_model_takes_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    x = inputs((6,), torch.float64)
    with pytest.raises(RuntimeError) as patched_error:
        model(x)
    with pytest.raises(RuntimeError) as reference_error:
        reference(x)
    assert str(patched_error.value) == str(reference_error.value)  # the same dtype error as nn.Linear
    assert sampled_calls.call_count == 0


def test_autocast_takes_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    x = inputs((6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref_out = model(x), reference(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref_out)
    assert sampled_calls.call_count == 0


def test_a_frozen_weight_takes_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    for m in (model, reference):
        m.a.weight.requires_grad_(False)
    x = inputs((6,))
    out, x_grad, grads = run(model, x)
    ref_out, ref_x_grad, ref_grads = run(reference, x)
    assert sampled_calls.call_count == 2  # b and c
    assert torch.equal(out, ref_out) and grads["a.weight"] is None and ref_grads["a.weight"] is None
    torch.testing.assert_close(x_grad, ref_x_grad)


def test_forward_hooks_still_run_on_a_patched_layer():
    model, _, _, _ = patched()
    seen = []
    model.b.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    model.b.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    model(inputs((2,)))
    assert seen == ["pre", (2, 16)]


def test_remove_restores_the_class_forward(sampled_calls):
    model, reference, _, backward = patched()
    assert all("forward" in vars(getattr(model, n)) for n in "abc")
    backward.remove()
    assert all("forward" not in vars(m) for m in model.modules())
    assert backward.fqns == []
    dense_equal(model, reference, inputs((5,)))
    assert sampled_calls.call_count == 0
    backward.remove()  # twice is harmless
    assert backward.install() == FQNS  # and it can be installed again
    run(model, inputs((5,)))
    assert sampled_calls.call_count == 3


def test_installing_twice_or_by_a_second_owner_does_not_wrap_twice():
    model, _, masked, backward = patched()
    forwards = {n: vars(getattr(model, n))["forward"] for n in "abc"}
    assert backward.install() == FQNS
    other = SparseBackward(masked)
    assert other.install() == []
    assert {n: vars(getattr(model, n))["forward"] for n in "abc"} == forwards
    assert not any(supports_sparse_backward(getattr(model, n), "weight") for n in "abc")
    other.remove()  # removes nothing it did not patch
    assert all("forward" in vars(getattr(model, n)) for n in "abc")


def copies_run_the_class_forward(original, copied, reference, sampled_calls) -> None:
    for name in "abc":
        forward = vars(getattr(copied, name)).get("forward")
        if forward is not None:  # a bound class forward of the copy itself, not the original's patch
            assert forward.__self__ is getattr(copied, name)
            assert forward.__func__ is nn.Linear.forward
    calls = sampled_calls.call_count
    dense_equal(copied, reference, inputs((7,)))
    assert sampled_calls.call_count == calls
    run(original, inputs((7,)))  # the original stays patched
    assert sampled_calls.call_count == calls + 3


def test_deepcopy_of_a_patched_model_runs_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    copies_run_the_class_forward(model, copy.deepcopy(model), reference, sampled_calls)


def test_pickle_of_a_patched_model_runs_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    copies_run_the_class_forward(model, pickle.loads(pickle.dumps(model)), reference, sampled_calls)


def test_torch_save_of_a_patched_model_runs_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copies_run_the_class_forward(model, loaded, reference, sampled_calls)
    assert set(model.state_dict()) == set(loaded.state_dict())


class Doubling(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Plain(nn.Linear):
    """A subclass that keeps nn.Linear's forward."""


def test_a_subclass_with_its_own_forward_is_not_patched(sampled_calls):
    torch.manual_seed(0)
    model = nn.Sequential(Doubling(8, 6), nn.Tanh(), Plain(6, 5), nn.Tanh(), nn.Linear(5, 2))
    masked = MaskedParameters(select_parameters(model))
    masked.install_({p.fqn: torch.rand(p.shape) < 0.5 for p in masked.params})
    assert masked.fqns == ["0.weight", "2.weight", "4.weight"]
    assert not supports_sparse_backward(model[0], "weight")
    assert supports_sparse_backward(model[2], "weight") and not supports_sparse_backward(model[2], "bias")
    assert not supports_sparse_backward(nn.Conv1d(1, 1, 1), "weight")
    backward = SparseBackward(masked)
    assert backward.install() == ["2.weight", "4.weight"]
    assert "forward" not in vars(model[0])
    x = torch.randn(3, 8)
    out = model(x)
    assert sampled_calls.call_count == 2  # layers 2 and 4
    h = torch.tanh(2 * nn.functional.linear(x, model[0].weight, model[0].bias))  # Doubling's own forward ran
    h = torch.tanh(nn.functional.linear(h, model[2].weight, model[2].bias))
    assert torch.equal(out, nn.functional.linear(h, model[4].weight, model[4].bias))


def test_the_layout_follows_the_mask(sampled_calls):
    model, reference, masked, _ = patched()
    x = inputs((11,))
    new = torch.rand(16, 16, generator=torch.Generator().manual_seed(9)) < 0.6
    buffer = masked.mask("b.weight")
    masked.set_mask_("b.weight", new)  # in place, as a topology update does
    MaskedParameters(select_parameters(reference)).set_mask_("b.weight", new)
    assert masked.mask("b.weight") is buffer
    assert torch.equal(masked.mask("b.weight"), new)
    _, _, grads = run(model, x)
    _, _, ref_grads = run(reference, x)
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)


def test_the_layout_follows_a_replaced_or_loaded_mask():
    model, reference, masked, _ = patched()
    x = inputs((11,))
    run(model, x)  # builds and caches the layouts
    g = torch.Generator().manual_seed(3)
    replaced = {p.fqn: torch.rand(p.shape, generator=g) < 0.5 for p in masked.params}
    masked.install_(replaced)  # new buffers
    MaskedParameters(select_parameters(reference)).install_(replaced)
    model.zero_grad()
    reference.zero_grad()
    _, _, grads = run(model, x)
    _, _, ref_grads = run(reference, x)
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)

    state = reference.state_dict()
    loaded = {fqn: torch.rand(m.shape, generator=g) < 0.2 for fqn, m in replaced.items()}
    for fqn, mask in loaded.items():
        state[fqn + "_sparsity_mask"] = mask
    model.load_state_dict(state)  # copied into the buffers in place
    reference.load_state_dict(state)
    assert torch.equal(masked.mask("c.weight"), loaded["c.weight"])
    model.zero_grad()
    reference.zero_grad()
    _, _, grads = run(model, x)
    _, _, ref_grads = run(reference, x)
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)


# ---- untouched_gradients --------------------------------------------------------------------


def test_a_plain_backward_leaves_every_patched_gradient_untouched():
    model, _, _, backward = patched()
    run(model, inputs((4,)))
    assert backward.untouched_gradients() == set(FQNS)
    assert backward.untouched_gradients() == set()  # the notes are read once


def test_a_weight_used_twice_is_not_untouched():
    model, reference, masked, backward = patched(twice=True)
    _, _, grads = run(model, inputs((6,)))
    _, _, ref_grads = run(reference, inputs((6,)))
    assert backward.untouched_gradients() == {"a.weight", "c.weight"}
    assert_sampled_gradients(model, reference, masked, grads, ref_grads)  # still right: both uses sampled


def test_a_second_contribution_through_the_graph_is_not_untouched():
    model, _, masked, backward = patched()
    out = model(inputs((4,)))
    (out.sum() + model.b.weight.sum()).backward()
    assert backward.untouched_gradients() == {"a.weight", "c.weight"}
    inactive = model.b.weight.grad[~masked.mask("b.weight")]
    assert torch.equal(inactive, torch.ones_like(inactive))  # what a skipped gradient pass would have kept


def test_an_in_place_edit_is_not_untouched():
    model, _, _, backward = patched()
    run(model, inputs((4,)))
    model.a.weight.grad.mul_(2)
    model.c.weight.grad[0, 0] = 1.0
    assert backward.untouched_gradients() == {"b.weight"}


def test_accumulating_two_backward_passes_is_not_untouched():
    model, _, _, backward = patched()
    run(model, inputs((4,)))
    run(model, inputs((5,)))
    assert backward.untouched_gradients() == set()


def test_accumulating_into_an_existing_dense_gradient_is_not_untouched():
    model, _, masked, backward = patched()
    model.b.weight.grad = torch.ones_like(model.b.weight)
    run(model, inputs((4,)))
    assert backward.untouched_gradients() == {"a.weight", "c.weight"}
    assert bool((model.b.weight.grad[~masked.mask("b.weight")] == 1).all())


def test_a_replaced_gradient_is_not_untouched():
    model, _, _, backward = patched()
    run(model, inputs((4,)))
    model.a.weight.grad = model.a.weight.grad.clone()
    model.b.weight.grad = None
    assert backward.untouched_gradients() == {"c.weight"}


def test_gradient_hooks_that_change_the_gradient_are_not_untouched():
    model, _, _, backward = patched()

    def add_one_in_place(param: nn.Parameter) -> None:
        param.grad.add_(1)

    model.a.weight.register_hook(lambda grad: grad + 1)
    model.b.weight.register_post_accumulate_grad_hook(add_one_in_place)
    run(model, inputs((4,)))
    assert backward.untouched_gradients() == {"c.weight"}


def test_a_dense_backward_after_an_unread_note_is_not_untouched():
    model, _, _, backward = patched()
    run(model, inputs((4,)))  # notes written, never read
    model.zero_grad(set_to_none=True)
    backward.enabled = False
    run(model, inputs((4,)))  # dense gradients, each a new tensor
    assert backward.untouched_gradients() == set()


def test_double_backward_takes_the_differentiable_masked_gradient(sampled_calls):
    """A gradient penalty (``create_graph=True``) differentiates the weight gradient a second time."""
    model, reference, masked, _ = patched()
    penalties = []
    for net in (model, reference):
        x = inputs((5,)).requires_grad_(True)
        (gx,) = torch.autograd.grad(net(x).pow(2).sum(), x, create_graph=True)
        penalty = gx.pow(2).sum()
        penalty.backward()
        penalties.append((penalty.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (value, grads), (ref_value, ref_grads) = penalties
    torch.testing.assert_close(value, ref_value)
    # At active positions the penalty's weight gradients are the dense layer's. Inactive positions mix a
    # dense term (through the differentiable first backward) with a sampled one (the penalty's backward
    # passes through the layers' own backward again); the callbacks' gradient pass masks them, as that
    # gradient is no longer the untouched tensor the sampled backward wrote.
    for name in grads:
        keep = masked.mask(name) if name in masked.fqns else torch.ones_like(grads[name], dtype=torch.bool)
        torch.testing.assert_close(grads[name] * keep, ref_grads[name] * keep, atol=1e-5, rtol=1e-4)
    assert sampled_calls.call_count == 3  # the patched path ran; its backward built a graph


def test_create_graph_weight_gradient_is_masked_and_differentiable():
    model, reference, masked, _ = patched()
    x = inputs((4,))
    (gw,) = torch.autograd.grad(model(x).sum(), model.a.weight, create_graph=True)
    (ref,) = torch.autograd.grad(reference(x).sum(), reference.a.weight, create_graph=True)
    mask = masked.mask("a.weight")
    torch.testing.assert_close(gw, ref * mask, atol=1e-5, rtol=1e-4)
    assert_positive_zero(gw[~mask])
    assert gw.requires_grad  # a graph to differentiate again


def test_torch_func_grad_takes_the_class_forward(sampled_calls):
    model, reference, _, _ = patched()
    x = inputs((3,))
    params = dict(model.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    ref_grads = torch.func.grad(lambda p: torch.func.functional_call(reference, p, (x,)).sum())(
        dict(reference.named_parameters())
    )
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name])
    assert sampled_calls.call_count == 0


def test_the_input_may_be_passed_by_keyword(sampled_calls):
    model, reference, _, _ = patched()
    x = inputs((4,))
    out = model.a(input=x)
    assert torch.equal(out, reference.a(input=x)) and sampled_calls.call_count == 1


def test_a_copy_of_a_patched_model_can_be_patched_again(sampled_calls):
    model, _, _, backward = patched()
    copied = copy.deepcopy(model)
    assert all("forward" in vars(getattr(copied, n)) for n in "abc")  # the bound class forward
    assert all(supports_sparse_backward(getattr(copied, n), "weight") for n in "abc")
    masked = MaskedParameters(select_parameters(copied))
    again = SparseBackward(masked)
    assert again.install() == FQNS
    run(copied, inputs((6,)))
    assert sampled_calls.call_count == 3
    again.remove()
    assert not any("forward" in vars(getattr(copied, n)) for n in "abc")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_layers_that_could_never_take_the_path_are_not_patched(dtype):
    model, _, masked = masked_model()
    model.to(dtype)
    with mock.patch.object(sparse_backward_module, "sampled_product_available", side_effect=AssertionError):
        assert SparseBackward(masked).install() == []  # nothing qualifies: the kernels are not even loaded
    assert not any("forward" in vars(getattr(model, n)) for n in "abc")


def test_the_out_projection_of_multihead_attention_is_not_patched():
    attention = nn.MultiheadAttention(16, 2)
    assert not supports_sparse_backward(attention.out_proj, "weight")  # the attention reads its weight directly
