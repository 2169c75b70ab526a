"""The sampled weight gradient in real fits: taken off the update steps' window, skips the gradient pass, removed
after."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
from lightning_srigl.callbacks.remask import gradient_pass_reason
from lightning_srigl.condensed.sampled import sampled_product_available
from lightning_srigl.masking import MaskedParameters
from lightning_srigl.training import SparseBackward
from lightning_srigl.training import sparse_backward as sparse_backward_module
from tests.callbacks.test_remask import InactiveProbe, Net, _assert_inactive_zero
from tests.callbacks.tiny import TinyNet, trainer

pytestmark = pytest.mark.skipif(not sampled_product_available(), reason="the C++ CPU kernels are not built")

CALLBACKS = {"srigl": SRigLCallback, "rigl": RigLCallback}


@dataclass
class Spies:
    """What the sparse backward did during a fit, recorded without callbacks (a probe callback would itself
    turn the gradient pass back on)."""

    steps: list[dict[str, Any]] = field(default_factory=list)  # per optimizer step: enabled, untouched
    skips: list[frozenset[str]] = field(default_factory=list)  # per gradient pass: the weights skipped
    updates: list[dict[str, Any]] = field(default_factory=list)  # per layer of a layer_updates call
    installs: int = 0
    sampled_calls: int = 0


@contextlib.contextmanager
def spying(callback_cls: type) -> Any:
    spies = Spies()
    untouched = SparseBackward.untouched_gradients
    apply = MaskedParameters.apply_to_gradients_
    install = SparseBackward.install
    layer_updates = callback_cls.layer_updates
    sampled_product = sparse_backward_module.sampled_product

    def on_untouched(self: SparseBackward) -> set[str]:
        result = untouched(self)
        spies.steps.append({"enabled": self.enabled, "untouched": frozenset(result), "patched": frozenset(self.fqns)})
        return result

    def on_apply(self: MaskedParameters, skip=()) -> None:
        spies.skips.append(frozenset(skip))
        return apply(self, skip=skip)

    def on_install(self: SparseBackward) -> list[str]:
        spies.installs += 1
        return install(self)

    def on_layer_updates(self, fqns, layers, drop_fraction, reducer, carry):
        for fqn, layer in zip(fqns, layers):
            spies.updates.append({"fqn": fqn, "mask": layer.mask.clone(), "dense_grad": layer.dense_grad.clone()})
        return layer_updates(self, fqns, layers, drop_fraction, reducer, carry)

    def on_sampled(*args: Any) -> torch.Tensor:
        spies.sampled_calls += 1
        return sampled_product(*args)

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(SparseBackward, "untouched_gradients", autospec=True, side_effect=on_untouched)
        )
        stack.enter_context(
            mock.patch.object(MaskedParameters, "apply_to_gradients_", autospec=True, side_effect=on_apply)
        )
        stack.enter_context(mock.patch.object(SparseBackward, "install", autospec=True, side_effect=on_install))
        stack.enter_context(
            mock.patch.object(callback_cls, "layer_updates", autospec=True, side_effect=on_layer_updates)
        )
        stack.enter_context(mock.patch.object(sparse_backward_module, "sampled_product", side_effect=on_sampled))
        yield spies


def instance_forwards(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if "forward" in vars(module)]


def dense_window(steps: int, delta_t: int, t_end: int, n: int) -> set[int]:
    """Optimizer steps (counted from 0) whose gradient feeds an update: the n before each multiple of delta_t <
    t_end."""
    return {u - i for u in range(delta_t, t_end, delta_t) for i in range(1, n + 1)} & set(range(steps))


def fit(callback, model=None, steps: int = 24, **kwargs) -> tuple[Spies, nn.Module]:
    model = model or TinyNet()
    with spying(type(callback)) as spies:
        trainer([callback], max_steps=steps, **kwargs).fit(model)
    return spies, model


# ---- (a) the sampled path runs and the gradient pass is skipped off the window -------------------


@pytest.mark.parametrize(
    ("name", "n"), [("srigl", 1), ("rigl", 1), ("rigl", 2)], ids=["srigl", "rigl", "rigl-accumulate-2-gradients"]
)
def test_the_sampled_path_runs_and_skips_the_gradient_pass_off_the_window(name, n):
    callback = CALLBACKS[name](report=False, sparsity=0.8, delta_t=4, grad_accumulation_n=n)
    spies, model = fit(callback)
    fqns = frozenset(callback.masked.fqns)
    assert len(fqns) >= 2 and spies.installs == 1
    dense = dense_window(24, 4, 18, n)  # updates at 4, 8, 12, 16 (t_end = 18)
    assert len(spies.steps) == len(spies.skips) == 24
    for step, (record, skip) in enumerate(zip(spies.steps, spies.skips)):
        assert record["patched"] == fqns, step
        assert record["enabled"] == (step not in dense), step
        assert record["untouched"] == (frozenset() if step in dense else fqns), step
        assert skip == record["untouched"], step
    assert spies.sampled_calls == (24 - len(dense)) * len(fqns)
    assert len(callback.history) == 4 and sum(sum(r["mask_change"].values()) for r in callback.history) > 0
    assert instance_forwards(model) == []


# ---- (b) the growth scores are dense ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_growth_scores_are_dense_gradients(name):
    callback = CALLBACKS[name](report=False, sparsity=0.8, delta_t=4)
    spies, model = fit(callback)
    assert len(spies.updates) == 4 * len(callback.masked.fqns)
    for update in spies.updates:
        scores, mask = update["dense_grad"], update["mask"]
        assert bool((scores[~mask] != 0).any()), f"{update['fqn']}: no growth score at an inactive position"

    # The same fit with the dense backward: the same growth scores up to summation order, the same topology.
    dense_callback = CALLBACKS[name](report=False, sparsity=0.8, delta_t=4, sparse_backward=False)
    dense_spies, dense_model = fit(dense_callback)
    assert dense_spies.installs == 0 and dense_spies.sampled_calls == 0
    assert len(dense_spies.updates) == len(spies.updates)
    for sampled, dense in zip(spies.updates, dense_spies.updates):
        assert sampled["fqn"] == dense["fqn"] and torch.equal(sampled["mask"], dense["mask"])
        torch.testing.assert_close(sampled["dense_grad"], dense["dense_grad"], atol=1e-5, rtol=1e-3)
    for fqn, mask in callback.masked.masks().items():
        assert torch.equal(mask, dense_callback.masked.mask(fqn)), fqn
    for (name_, p), (_, q) in zip(model.named_parameters(), dense_model.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=name_)


# ---- (c) inactive weights stay exactly zero -----------------------------------------------------------


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize(
    ("optimizer", "clip"),
    [("sgd", "value"), ("sgd-momentum-wd", "norm"), ("adam", "value"), ("adamw", "norm")],
)
def test_inactive_weights_stay_exactly_zero(optimizer, clip, accumulate):
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=8)
    model = Net(optimizer)
    probe = InactiveProbe(model)
    spies, _ = fit(
        callback, model, steps=40, accumulate_grad_batches=accumulate, gradient_clip_val=0.05,
        gradient_clip_algorithm=clip,
    )  # fmt: skip
    _assert_inactive_zero(callback, probe)
    assert callback.remask.reason() is None  # no per-step re-mask hides a nonzero gradient
    assert len(callback.history) == 3
    assert spies.sampled_calls > 0
    if accumulate == 1:
        assert sum(1 for skip in spies.skips if skip) == 40 - 3  # the pass skipped all but the dense steps


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_inactive_weights_stay_zero_with_the_callback_class_defaults(name):
    callback = CALLBACKS[name](report=False, delta_t=4)  # sparsity 0.9, ERK
    model = Net("sgd-momentum-wd")
    probe = InactiveProbe(model)
    spies, _ = fit(callback, model, steps=24)
    _assert_inactive_zero(callback, probe)
    assert spies.sampled_calls > 0


# ---- (d) the patch is gone after fit, also after an exception ----------------------------------------


def test_no_instance_forward_after_fit_and_during_it_there_is():
    seen: list[list[str]] = []
    model = TinyNet()
    handles = [m.register_forward_pre_hook(lambda m, a: seen.append(instance_forwards(model))) for m in model.net[:1]]
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4)
    fit(callback, model)
    for handle in handles:
        handle.remove()
    assert seen and all(names == ["net.0", "net.2", "net.4"] for names in seen)
    assert instance_forwards(model) == []
    assert callback._backward is None


class FailsAtStep(TinyNet):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.fail = True

    def training_step(self, batch, batch_idx):
        if self.fail and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("name", sorted(CALLBACKS))
@pytest.mark.parametrize("fail_at", [3, 5], ids=["in-the-dense-window", "sampled-step"])
def test_the_patch_is_removed_when_training_raises(name, fail_at):
    model = FailsAtStep(fail_at)
    with pytest.raises(RuntimeError, match="boom"):
        trainer([CALLBACKS[name](report=False, sparsity=0.8, delta_t=4)], max_steps=24).fit(model)
    assert instance_forwards(model) == []


def test_a_fit_after_a_failed_one_grows_by_dense_gradients():
    """After a fit that raised, the model is trained on by a new callback: its updates must see dense scores."""
    model = FailsAtStep(5)
    with pytest.raises(RuntimeError, match="boom"):
        trainer([RigLCallback(report=False, sparsity=0.8, delta_t=4)], max_steps=24).fit(model)
    model.fail = False
    callback = RigLCallback(report=False, sparsity=0.8, delta_t=4)
    spies, _ = fit(callback, model)
    assert len(spies.updates) == 4 * len(callback.masked.fqns)
    for update in spies.updates:
        assert bool((update["dense_grad"][~update["mask"]] != 0).any()), update["fqn"]


# ---- (e) sparse_backward=False -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_sparse_backward_false_patches_nothing(name):
    seen: list[list[str]] = []
    model = TinyNet()
    model.net[0].register_forward_pre_hook(lambda m, a: seen.append(instance_forwards(model)))
    callback = CALLBACKS[name](report=False, sparsity=0.8, delta_t=4, sparse_backward=False)
    spies, _ = fit(callback, model)
    assert callback.config()["sparse_backward"] is False
    assert spies.installs == 0 and spies.sampled_calls == 0 and spies.steps == []
    assert len(spies.skips) == 24 and all(skip == frozenset() for skip in spies.skips)
    assert seen and all(names == [] for names in seen)


# ---- (f) code that may touch gradients keeps the gradient pass on every step ---------------------------


class NoisyGradients(TinyNet):
    """Writes the gradients through ``.data`` (which no version counter sees) after every backward."""

    def on_after_backward(self) -> None:
        for p in self.parameters():
            if p.grad is not None:
                p.grad.data.add_(1e-3)


class OwnBackward(TinyNet):
    def backward(self, loss, *args: Any, **kwargs: Any) -> None:
        super().backward(loss, *args, **kwargs)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.data.add_(1e-3)


class BeforeBackward(TinyNet):
    def on_before_backward(self, loss) -> None:
        pass


class NoisyCallback(Callback):
    def on_after_backward(self, trainer, pl_module) -> None:
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.data.add_(1e-3)


@pytest.mark.parametrize(
    ("model_cls", "callbacks", "hook"),
    [
        (NoisyGradients, [], "NoisyGradients overrides on_after_backward"),
        (OwnBackward, [], "OwnBackward overrides backward"),
        (BeforeBackward, [], "BeforeBackward overrides on_before_backward"),
        (TinyNet, [NoisyCallback()], "callback NoisyCallback overrides on_after_backward"),
    ],
)
def test_gradient_hooks_keep_the_gradient_pass_on_every_step(model_cls, callbacks, hook):
    model = model_cls()
    probe = InactiveProbe(model)
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4)
    fit_trainer = trainer([*callbacks, callback], max_steps=24)
    assert gradient_pass_reason(fit_trainer, model, callback) == hook
    with spying(SRigLCallback) as spies:
        fit_trainer.fit(model)
    assert spies.sampled_calls > 0  # the sampled gradient is still computed...
    assert len(spies.skips) == 24 and all(skip == frozenset() for skip in spies.skips)  # ...and masked anyway
    if callback.remask.reason() is None:
        _assert_inactive_zero(callback, probe)
    assert instance_forwards(model) == []


def test_a_plain_module_has_no_gradient_pass_reason():
    callback = SRigLCallback(report=False)
    assert gradient_pass_reason(trainer([callback]), TinyNet(), callback) is None


def test_a_strategy_that_reduces_gradients_keeps_the_gradient_pass():
    """Under DDP the reducer writes the averaged gradient into ``.grad``; the pass stays on every step."""
    from lightning.pytorch import Trainer

    callback = SRigLCallback(sparsity=0.5)
    ddp = Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, callbacks=[callback])
    reason = gradient_pass_reason(ddp, TinyNet(), callback)
    assert reason is not None and "DDPStrategy" in reason and "reduces gradients" in reason
    single = Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback])
    assert gradient_pass_reason(single, TinyNet(), callback) is None
