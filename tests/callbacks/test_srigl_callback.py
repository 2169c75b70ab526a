"""SRigLCallback and RigLCallback trained with real Trainers on tiny CPU models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
from lightning_srigl.sparsity import is_constant_fan_in, is_nm
from tests.callbacks.tiny import TinyAttention, TinyConvNet, TinyNet, UpdateProbe, trainer


def _fit(callback, model=None, steps: int = 24, **trainer_kwargs) -> tuple[UpdateProbe, object]:
    probe = UpdateProbe(callback)
    model = model or TinyNet()
    trainer(callbacks=[callback, probe], max_steps=steps, **trainer_kwargs).fit(model)
    return probe, model


def test_fan_in_is_constant_and_budget_kept_after_every_update() -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4, gamma_sal=0.3)
    probe, _ = _fit(callback)
    assert [r["step"] for r in probe.records] == [4, 8, 12, 16]  # t_end = 0.75 * 24 = 18
    for record in probe.records:
        for fqn, mask in record["after"].items():
            assert is_constant_fan_in(mask), fqn
            assert torch.all(record["weights"][fqn][~mask] == 0)
        # each layer rounds its fan-in to the nearest integer and hands the rest to the next layer
        held = sum(int(mask.sum()) for mask in record["after"].values())
        last = list(record["after"].values())[-1]
        assert abs(held - sum(callback.budgets.values())) <= int(last.flatten(1).any(1).sum()) / 2
    assert sum(sum(r["mask_change"].values()) for r in callback.history) > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_state_is_zero_at_grown_and_inactive_positions(optimizer: str) -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4)
    probe, _ = _fit(callback, TinyNet(optimizer=optimizer))
    grown_total = 0
    for record in probe.records:
        for fqn, state in record["state"].items():
            grown = record["after"][fqn] & ~record["before"][fqn]
            reset = grown | ~record["after"][fqn]
            grown_total += int(grown.sum())
            slots = [v for v in state.values() if v.shape == grown.shape]
            assert len(slots) == (1 if optimizer == "sgd" else 2)
            for value in slots:
                assert torch.all(value[reset] == 0)
                assert torch.any(value[~reset] != 0)
            assert torch.all(record["weights"][fqn][grown] == 0)  # grown weights start at zero
    assert grown_total > 0


def test_output_layer_is_protected_from_ablation_by_default() -> None:
    callback = SRigLCallback(report=False, sparsity=0.9, delta_t=4, gamma_sal=0.9, distribution="uniform")
    _fit(callback)
    assert callback.protected == {"net.4.weight"}
    assert all(r["active_neurons_pct"]["net.4.weight"] == 100.0 for r in callback.history)
    assert any(r["active_neurons_pct"]["net.2.weight"] < 100.0 for r in callback.history)  # others may ablate


def test_no_ablation_patterns_choose_the_protected_layers() -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4, no_ablation=["net.0.*", "net.2.*"])
    _fit(callback, steps=8)
    assert callback.protected == {"net.0.weight", "net.2.weight"}


def test_updates_happen_on_optimizer_steps_with_gradient_accumulation() -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=2, grad_accumulation_n=2)
    probe, _ = _fit(callback, TinyNet(n_samples=128), steps=8, accumulate_grad_batches=4)
    assert [r["step"] for r in probe.records] == [2, 4]  # t_end = 0.75 * 8 = 6
    assert probe.batch_of_update == [7, 15]  # the 4th micro-batch of optimizer steps 2 and 4


def test_non_finite_gradients_skip_the_update_and_keep_masks(recwarn: pytest.WarningsRecorder) -> None:
    class NaNAtStep8(TinyNet):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 7 else loss

        def on_before_optimizer_step(self, optimizer):  # like GradScaler skipping an overflowing step
            for p in self.parameters():
                p.grad.nan_to_num_(0.0, 0.0, 0.0)

    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4)
    probe, model = _fit(callback, NaNAtStep8())
    assert [r["step"] for r in probe.records] == [4, 12, 16]
    assert callback.skipped_updates == 1
    assert any("skipped the topology update at step 8" in str(w.message) for w in recwarn)
    for fqn, mask in callback.masked.masks().items():
        assert is_constant_fan_in(mask) and torch.isfinite(callback.masked.param(fqn)).all()


def test_bf16_mixed_precision_trains_with_constant_fan_in() -> None:
    callback = SRigLCallback(report=False, sparsity=0.8, delta_t=4)
    probe, _ = _fit(callback, precision="bf16-mixed")
    assert len(probe.records) == 4 and callback.skipped_updates == 0
    assert all(is_constant_fan_in(m) for m in callback.masked.masks().values())


def test_conv_layers_have_constant_fan_in_over_the_receptive_field() -> None:
    callback = SRigLCallback(report=False, sparsity=0.7, delta_t=3)
    probe, model = _fit(callback, TinyConvNet(), steps=8)
    assert callback.masked.fqns == ["net.1.weight", "net.4.weight", "net.7.weight"]
    conv2d = probe.records[-1]["after"]["net.1.weight"]
    assert conv2d.shape == (8, 1, 3, 3) and is_constant_fan_in(conv2d)
    assert is_constant_fan_in(probe.records[-1]["after"]["net.4.weight"])


def test_multihead_attention_trains_with_masks_honoured() -> None:
    callback = SRigLCallback(report=False, sparsity=0.7, delta_t=4, distribution="uniform")
    probe, model = _fit(callback, TinyAttention())
    assert callback.masked.fqns == ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    assert len(probe.records) == 4
    for fqn, mask in callback.masked.masks().items():
        weight = callback.masked.param(fqn)
        assert torch.all(weight[~mask] == 0) and is_constant_fan_in(mask), fqn
    # the attention reads in_proj_weight directly: the masked weight is what it uses
    x = torch.randn(3, 16)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    reference.load_state_dict({k: v for k, v in model.attn.state_dict().items() if not k.endswith("_mask")})
    tokens = x.view(-1, 2, 8)
    assert torch.allclose(model.attn(tokens, tokens, tokens)[0], reference(tokens, tokens, tokens)[0])


def test_rigl_keeps_the_exact_budget_and_resets_adamw_moments() -> None:
    callback = RigLCallback(report=False, sparsity=0.8, delta_t=4)
    probe, _ = _fit(callback, TinyNet(optimizer="adamw"))
    assert len(probe.records) == 4
    for record in probe.records:
        for fqn, mask in record["after"].items():
            assert int(mask.sum()) == callback.budgets[fqn]
            reset = (mask & ~record["before"][fqn]) | ~mask
            assert all(torch.all(v[reset] == 0) for v in record["state"][fqn].values() if v.shape == mask.shape)


def test_metrics_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    callback = SRigLCallback(sparsity=0.8, delta_t=4, log_every_n_steps=2)
    logger = CSVLogger(tmp_path, name="run", version=0)
    _fit(callback, logger=logger)
    header = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("srigl/density", "srigl/active_neurons_pct", "srigl/itop_rate", "srigl/drop_fraction",
                 "srigl/mask_change", "srigl/net.2.weight/fan_in", "srigl/net.2.weight/mask_change"):  # fmt: skip
        assert name in header, name
    assert (tmp_path / "run" / "version_0" / "active_neurons.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "active neurons" in out and "net.2.weight" in out
    assert callback.history[-1]["step"] == 16 and 0 < callback.history[0]["drop_fraction"] < 0.3


def test_dense_patterns_keep_layers_dense_and_unmasked() -> None:
    callback = SRigLCallback(report=False, sparsity=0.5, delta_t=4, dense=["net.0.weight"])
    _fit(callback, steps=4)
    assert callback.masked.fqns == ["net.2.weight", "net.4.weight"]


def test_nm_structure_stays_exactly_nm_through_every_update() -> None:
    callback = SRigLCallback(report=False, structure="2:4", delta_t=4)
    probe, model = _fit(callback)
    assert callback.gamma_sal == 0.0 and [r["step"] for r in probe.records] == [4, 8, 12, 16]
    for record in probe.records:
        for fqn, mask in record["after"].items():
            assert is_nm(mask, 2, 4), fqn
            assert int(mask.sum()) == callback.budgets[fqn] == mask.numel() // 2
            assert torch.all(record["weights"][fqn][~mask] == 0)
    assert sum(sum(r["mask_change"].values()) for r in callback.history) > 0
    assert all(is_nm(m.weight_sparsity_mask, 2, 4) for m in model.net if isinstance(m, torch.nn.Linear))


def test_nm_structure_rejects_ablation_and_misfit_layers() -> None:
    with pytest.raises(ValueError, match="gamma_sal=0"):
        SRigLCallback(structure="2:4", gamma_sal=0.3)
    with pytest.raises(ValueError, match="N:M pattern"):
        SRigLCallback(structure="4:2")
    with pytest.raises(ValueError, match="not divisible"):  # an explicitly included layer must fit 1:3
        _fit(SRigLCallback(report=False, structure="1:3", include=["net.0.weight"]), steps=2)
    callback = SRigLCallback(report=False, structure="1:3")  # selected by type: misfits stay dense
    _fit(callback, steps=2)
    assert callback.budgets == {}


class _WeightsAtTrainStart(Callback):
    """Copies every weight when training starts: after the masks are installed, before any step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if n.endswith("weight")}


@pytest.mark.parametrize("callback_type", [SRigLCallback, RigLCallback])
def test_kept_weights_are_reinitialised_by_default_and_keep_their_values_with_sparse_init_false(callback_type) -> None:
    original = {n: p.detach().clone() for n, p in TinyNet().named_parameters() if n.endswith("weight")}
    started = {}
    for sparse_init in (None, False):
        probe = _WeightsAtTrainStart()
        arguments = {} if sparse_init is None else {"sparse_init": sparse_init}
        callback = callback_type(report=False, sparsity=0.8, **arguments)
        trainer(callbacks=[callback, probe], max_steps=1).fit(TinyNet())
        started[sparse_init] = (probe.weights, callback.masked.masks())
    for sparse_init, (weights, masks) in started.items():
        for fqn, mask in masks.items():
            kept_now, kept_before = weights[fqn][mask], original[fqn][mask]
            assert torch.all(weights[fqn][~mask] == 0), fqn
            if sparse_init is None:  # the paper's default: redrawn for the sparse fan-in
                assert not torch.equal(kept_now, kept_before), fqn
            else:
                assert torch.equal(kept_now, kept_before), fqn


@pytest.mark.parametrize("callback_type", [SRigLCallback, RigLCallback])
def test_init_std_quirk_draws_the_same_weights_with_the_references_std(callback_type) -> None:
    """Same seed, same masks, same noise: each kept weight is scaled by ``(2/k) / sqrt(2/k)``
    (``k``: its row's fan-in)."""
    started = {}
    for quirk in (False, True):
        probe = _WeightsAtTrainStart()
        callback = callback_type(report=False, sparsity=0.8, init_std_quirk=quirk)
        trainer(callbacks=[callback, probe], max_steps=1).fit(TinyNet())
        started[quirk] = (probe.weights, callback.masked.masks())
    (default, masks), (quirked, quirk_masks) = started[False], started[True]
    for fqn, mask in masks.items():
        assert torch.equal(mask, quirk_masks[fqn]), fqn
        k = mask.sum(dim=1, keepdim=True).clamp(min=1).double()
        torch.testing.assert_close(quirked[fqn].double(), default[fqn].double() * (2 / k).sqrt(), rtol=1e-6, atol=0)
