"""SRigL and RigL under FSDP2 (``ModelParallelStrategy`` + ``fully_shard``): bit for bit what DDP does.

The multi-process runs are ``tests/callbacks/fsdp_run.py`` scenarios (CPU, gloo) in processes started as ``torchrun``
starts a user's script, forked from one server that imported Lightning once (imports were most of a run's time);
the 2-rank scenarios share one start. The refusals need no processes.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from lightning_srigl.callbacks import NMSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.condensed import load_condensed
from lightning_srigl.masking import MASK_SUFFIX, accept_masks_on_load, mask_buffer_name
from lightning_srigl.sparsity import is_constant_fan_in
from tests.callbacks import fsdp_run
from tests.callbacks.tiny import TinyClassifier, loader


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(folder: Path, scenarios: list[str], processes: int) -> dict[str, list[dict[str, Any]]]:
    """Run ``scenarios`` of ``fsdp_run`` on ``processes`` ranks; per scenario each rank's record (a deadlock fails by
    timeout). The ranks are forked from a server that imported ``fsdp_run`` (and Lightning) once for the session."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.callbacks.fsdp_run"])
    port = free_port()
    ranks = [
        context.Process(target=fsdp_run.run_rank, args=(folder, scenarios, processes, rank, port))
        for rank in range(processes)
    ]
    for rank in ranks:
        rank.start()
    deadline = time.monotonic() + 600
    for rank in ranks:
        rank.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(rank.is_alive() for rank in ranks):
        for rank in ranks:
            rank.kill()
        pytest.fail(f"the run did not finish (deadlock?): {(folder / 'rank0.log').read_text()[-3000:]}")
    for index, rank in enumerate(ranks):
        assert rank.exitcode == 0, (folder / f"rank{index}.log").read_text()[-4000:]
    return {
        scenario: [torch.load(folder / f"{scenario}_rank{rank}.pt", weights_only=False) for rank in range(processes)]
        for scenario in scenarios
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """The 2-rank scenarios, run once for the module: the folder and each scenario's records."""
    folder = tmp_path_factory.mktemp("fsdp2_two_ranks")
    return folder, launch(folder, ["match", "accelerate"], 2)


def assemble(per_rank: list[dict[str, tuple[torch.Tensor, int]]]) -> dict[str, torch.Tensor]:
    """Whole tensors from each rank's ``{key: (its rows, first row)}``; one every rank holds whole is taken once."""
    whole = {}
    for key in per_rank[0]:
        parts = sorted((rank[key] for rank in per_rank), key=lambda part: part[1])
        starts = [start for _, start in parts]
        whole[key] = parts[0][0] if starts == [0] * len(parts) else torch.cat([rows for rows, _ in parts])
    return whole


def assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    assert got.keys() == expected.keys(), label
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{label}: {key}"


def test_fsdp2_fits_equal_ddp_fits_bit_for_bit(two_ranks: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    """``SRigLCallback()`` and ``RigLCallback()`` with default arguments, and SRigL with strong ablation, on 2
    ranks: masks and weights after the FSDP2 fit equal those after the same fit under DDP. Both compute the weight
    gradient at active positions only (``sparse_backward=True``, the default) between the steps whose dense
    gradient scores an update, with the same kernel on the same operands (FSDP2's forward sees the gathered whole
    weight), and average 2 ranks' gradients exactly alike (``a + b == b + a``; halving is exact)."""
    folder, records = two_ranks
    ranks = records["match"]
    for case in ("srigl", "ablation", "rigl"):
        sharded = assemble([rank[case]["fsdp"] for rank in ranks])
        for rank in ranks:
            assert_identical(sharded, assemble([rank[case]["ddp"]]), case)
        masks = {key: value for key, value in sharded.items() if key.endswith(MASK_SUFFIX)}
        assert len(masks) >= 2, case
        if case != "rigl":
            assert all(is_constant_fan_in(mask) for mask in masks.values()), case
        assert (folder / "match" / case / "fsdp" / "active_neurons.png").exists()  # the report, from summed counts
    ablated = assemble([rank["ablation"]["fsdp"] for rank in ranks])
    assert any(int((mask.sum(dim=1) == 0).sum()) > 0 for key, mask in ablated.items() if key.endswith(MASK_SUFFIX))


def test_three_uneven_shards_resume_mid_run_bit_for_bit_and_equal_ddp(tmp_path: Path) -> None:
    """3 ranks hold 22/22/20 rows of the hidden layers and 2/2/0 of the 4-row head. A fit resumed from the
    sharded checkpoint written at step 9, inside the gradient window of the update at 10, ends where the
    uninterrupted fit ends, on every rank, callback state included (its per-weight tensors are whole in the
    checkpoint, which rank 0 writes, and each rank takes its own rows back). Against DDP the masks and the
    callback state are identical and the weights equal to rounding: the two average the ranks' gradients in
    different orders, which round alike for 2 ranks but not for 3."""
    ranks = launch(tmp_path, ["resume"], 3)["resume"]
    rows = [rank["whole"][0]["net.4." + mask_buffer_name("weight")][0].shape[0] for rank in ranks]
    assert rows == [2, 2, 0] and [rank["whole"][0]["net.2.weight"][0].shape[0] for rank in ranks] == [22, 22, 20]
    for rank in ranks:
        whole_state, whole_callback, whole_steps = rank["whole"]
        resumed_state, resumed_callback, resumed_steps = rank["resumed"]
        assert_identical(assemble([resumed_state]), assemble([whole_state]), "resumed")
        assert whole_steps == resumed_steps and whole_steps[:3] == [5, 10, 15]
        assert whole_callback.keys() == resumed_callback.keys()
        assert_identical(resumed_callback["ever_active"], whole_callback["ever_active"], "ever_active")
        assert resumed_callback["history"] == whole_callback["history"]
    sharded, ddp = assemble([rank["whole"][0] for rank in ranks]), assemble([ranks[0]["ddp"][0]])
    masks = [key for key in ddp if key.endswith(MASK_SUFFIX)]
    assert_identical({k: sharded[k] for k in masks}, {k: ddp[k] for k in masks}, "ddp masks")
    for key in ddp.keys() - masks:
        torch.testing.assert_close(sharded[key], ddp[key], rtol=1e-5, atol=1e-6)
    checkpoint = tmp_path / "resume" / "checkpoints" / "epoch=26-step=27.ckpt"
    whole_fit = load_sharded_checkpoint(checkpoint, tmp_path / "whole.pt")
    assert_identical({k: v for k, v in whole_fit.state_dict().items()}, sharded, "sharded checkpoint, one process")
    for rank in ranks:  # the callback state is whole on every rank, as under DDP
        assert_identical(rank["whole"][1]["ever_active"], ranks[0]["ddp"][1]["ever_active"], "ever_active vs ddp")
        assert rank["whole"][1]["history"] == ranks[0]["ddp"][1]["history"]


def test_hsdp_reduces_over_the_shard_dimension_and_keeps_ddps_masks(tmp_path: Path) -> None:
    """4 ranks on a (replicate 2, shard 2) mesh: ranks 0 and 1 split each layer's rows, ranks 2 and 3 hold the same
    split. The update's reductions run over the shard dimension, so both replicas end bit-identical, and the masks
    equal those of the same fit under DDP on 4 ranks after 2 updates with ablation; the weights equal DDP's to
    rounding (a 4-rank average: HSDP reduce-scatters then all-reduces, DDP sums in its ring's order, see
    docs/distributed.md)."""
    ranks = launch(tmp_path, ["hybrid"], 4)["hybrid"]
    starts = [rank["hsdp"]["net.2.weight"][1] for rank in ranks]
    assert starts == [0, 32, 0, 32] and [rank["hsdp"]["net.2.weight"][0].shape[0] for rank in ranks] == [32] * 4
    first, second = assemble([ranks[0]["hsdp"], ranks[1]["hsdp"]]), assemble([ranks[2]["hsdp"], ranks[3]["hsdp"]])
    assert_identical(first, second, "replicas")
    assert ranks[0]["steps"][0] == ranks[0]["steps"][1] == [5, 10]
    ddp = assemble([ranks[0]["ddp"]])
    masks = [key for key in ddp if key.endswith(MASK_SUFFIX)]
    assert len(masks) == 3 and all(is_constant_fan_in(first[key]) for key in masks)
    assert_identical({k: first[k] for k in masks}, {k: ddp[k] for k in masks}, "masks vs ddp")
    assert any(int((first[key].sum(dim=1) == 0).sum()) > 0 for key in masks)  # neurons were ablated
    for key in ddp.keys() - masks:
        torch.testing.assert_close(first[key], ddp[key], rtol=1e-5, atol=1e-6)


def load_sharded_checkpoint(folder: Path, converted: Path) -> TinyClassifier:
    """The documented recipe: a sharded (DCP) checkpoint into a single-process model, masks included."""
    dcp_to_torch_save(folder, converted)
    model = TinyClassifier()
    handle = accept_masks_on_load(model)
    model.load_state_dict(torch.load(converted, weights_only=True)["state_dict"])
    handle.remove()
    return model


class FakeMesh:
    """A device mesh of a 2-D ModelParallelStrategy, enough for the strategy check."""

    mesh_dim_names = ("data_parallel", "tensor_parallel")

    def __init__(self, tensor_parallel: int) -> None:
        self.tensor_parallel = tensor_parallel

    def __getitem__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(size=lambda: self.tensor_parallel if name == "tensor_parallel" else 1)


def fake_trainer(strategy: object) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy, callbacks=[])


@pytest.mark.parametrize("cls", [SRigLCallback, RigLCallback])
def test_unsupported_strategies_are_refused_before_training_saying_what_works(cls: type) -> None:
    parallel = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    parallel._device_mesh = FakeMesh(tensor_parallel=2)
    with pytest.raises(ValueError, match=r"tensor parallelism.*splits each neuron's fan-in.*tensor_parallel_size=1"):
        cls()._check_trainer(fake_trainer(parallel))
    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        refusal = r"does not support .*Strategy.*ModelParallelStrategy\(data_parallel_size=N"
        with pytest.raises(ValueError, match=refusal):
            cls()._check_trainer(fake_trainer(strategy))
    data_parallel = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    data_parallel._device_mesh = FakeMesh(tensor_parallel=1)
    cls()._check_trainer(fake_trainer(data_parallel))  # FSDP2: accepted
    with pytest.raises(ValueError, match="NMSparsityCallback does not support ModelParallelStrategy yet; use DDP"):
        NMSparsityCallback()._check_trainer(fake_trainer(data_parallel))


def test_an_fsdp2_fit_is_accelerated_tested_and_saved_as_one_condensed_file(
    two_ranks: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    """A model built on the meta device in ``configure_model``, ``SRigLCallback()`` and ``AccelerateCallback()``
    on 2 ranks, then ``trainer.test`` (each rank on its half of the test data): the ranks chose the same kernels,
    the file rank 0 saved loads here (one process, no training code) and computes what the masked dense model
    computes, and the test losses average to that model's loss."""
    folder, records = two_ranks
    ranks = records["accelerate"]
    assert ranks[0]["kinds"] == ranks[1]["kinds"] and set(ranks[0]["kinds"]) == {"net.0", "net.2", "net.4"}
    dense = ranks[0]["dense"]
    for key, value in dense.items():
        assert torch.equal(value, ranks[1]["dense"][key]), key
    masks = {key: value for key, value in dense.items() if key.endswith(MASK_SUFFIX)}
    assert len(masks) == 3 and all(is_constant_fan_in(mask) for mask in masks.values())
    net = load_condensed(folder / "accelerate" / "condensed.pt")
    reference = TinyClassifier()
    reference.load_state_dict({k: v for k, v in dense.items() if not k.endswith(MASK_SUFFIX)})
    for key, mask in masks.items():
        assert not reference.get_parameter(key.removesuffix(MASK_SUFFIX))[~mask].any(), key
    x, y = next(iter(loader(1, batch_size=96)))
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
        loss = torch.nn.functional.cross_entropy(expected, y)
    mean_loss = sum(rank["test_metrics"]["test_loss"] for rank in ranks) / 2  # halves of equal size
    assert mean_loss == pytest.approx(float(loss), rel=1e-4)
