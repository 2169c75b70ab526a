"""SGD, Adam and AdamW keep inactive weights exactly zero from masked gradients; the rule names what does not."""

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lightning_srigl.masking import MaskedParameters, establish_zeros_, select_parameters, weight_remask_reason

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

ZERO_KEEPING: dict[str, OptimizerFactory] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-wd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "sgd-dampening-maximize-foreach": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.5, dampening=0.3, maximize=True, foreach=True
    ),
    "sgd-fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    "adam-l2-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "adam-decoupled-foreach": lambda p: torch.optim.Adam(
        p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, foreach=True
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-fused-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, fused=True),
}


def _masked_model() -> tuple[nn.Sequential, MaskedParameters]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    masked = MaskedParameters(select_parameters(model))
    g = torch.Generator().manual_seed(1)
    masked.install_({p.fqn: torch.rand(p.shape, generator=g) < 0.3 for p in masked.params})
    masked.apply_to_weights_()
    return model, masked


def _train_without_remask(optimizer_factory: OptimizerFactory, steps: int = 60) -> MaskedParameters:
    """Masked gradients before every step, clipping by norm and by value, two micro-batches per step.

    ``masked.initial`` holds the weights before training.
    """
    model, masked = _masked_model()
    masked.initial = {fqn: masked.param(fqn).detach().clone() for fqn in masked.fqns}
    optimizer = optimizer_factory(list(model.parameters()))
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        for _ in range(2):
            model(torch.randn(8, 12, generator=g)).pow(2).mean().backward()
        masked.apply_to_gradients_()
        if step % 2:
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        else:
            nn.utils.clip_grad_value_(model.parameters(), 0.01)
        optimizer.step()
        optimizer.zero_grad()
    return masked


@pytest.mark.parametrize("name", sorted(ZERO_KEEPING))
def test_inactive_weights_stay_exactly_zero_without_a_remask(name: str) -> None:
    masked = _train_without_remask(ZERO_KEEPING[name])
    for fqn, mask in masked.masks().items():
        weight = masked.param(fqn).detach()
        assert torch.equal(weight[~mask], torch.zeros(int((~mask).sum()))), fqn
        assert bool((weight[mask] != masked.initial[fqn][mask]).any()), f"{fqn}: active weights did train"
    optimizer = ZERO_KEEPING[name]([nn.Parameter(torch.zeros(1))])
    assert weight_remask_reason(optimizer) is None


def test_eps_zero_makes_adam_move_inactive_weights_and_the_rule_refuses_it() -> None:
    factory: OptimizerFactory = lambda p: torch.optim.Adam(p, lr=1e-2, eps=0.0)  # noqa: E731
    masked = _train_without_remask(factory, steps=2)
    assert any(bool(masked.param(fqn)[~mask].isnan().any()) for fqn, mask in masked.masks().items())  # 0 / 0
    assert "eps=0.0 is not positive" in str(weight_remask_reason(factory([nn.Parameter(torch.zeros(1))])))


class DriftingSGD(torch.optim.SGD):
    """A subclass whose step moves every weight, masked or not."""

    def step(self, closure=None):
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(1e-3)
        return loss


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: torch.optim.RMSprop(p), "RMSprop is not one of SGD, Adam, AdamW"),
        (lambda p: DriftingSGD(p, lr=0.1), "DriftingSGD is not one of"),
        (lambda p: torch.optim.SGD(p, lr=float("inf")), "lr=inf is not finite"),
        (lambda p: torch.optim.AdamW(p, weight_decay=float("inf")), "weight_decay=inf is not finite"),
        (lambda p: torch.optim.AdamW(p, capturable=True), "AdamW is capturable"),
    ],
)
def test_the_rule_names_why_a_step_may_move_inactive_weights(make: OptimizerFactory, reason: str) -> None:
    assert reason in str(weight_remask_reason(make([nn.Parameter(torch.zeros(2))])))


def test_step_hooks_and_cpu_tensor_options() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.1))
    assert weight_remask_reason(optimizer) is None  # a finite CPU tensor is read without a sync
    handle = optimizer.register_step_post_hook(lambda *args: None)
    assert "step hooks" in str(weight_remask_reason(optimizer))
    handle.remove()
    handle = register_optimizer_step_pre_hook(lambda *args: None)
    try:
        assert "step hooks" in str(weight_remask_reason(optimizer))
    finally:
        handle.remove()
    assert weight_remask_reason(optimizer) is None


def test_establish_zeros_zeroes_inactive_weights_and_optimizer_state() -> None:
    model, masked = _masked_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 12)).sum().backward()
    optimizer.step()  # unmasked gradients: inactive weights and moments move
    establish_zeros_(masked, [optimizer])
    for fqn, mask in masked.masks().items():
        param = masked.param(fqn)
        assert not param[~mask].any()
        for slot in ("exp_avg", "exp_avg_sq"):
            state = optimizer.state[param][slot]
            assert not state[~mask].any() and state[mask].any()
