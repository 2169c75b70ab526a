"""The method's mask rules on row shards (FSDP2): each rank counts its own rows, the counts are summed over the
shards, and the verdict is the one the whole mask gets. The ranks are threads (``tests/sparsity/simulated_shards.py``)
holding uneven, possibly empty, row ranges; no mask is gathered."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
from lightning_srigl.callbacks.dynamic_sparsity import DynamicSparsityCallback
from lightning_srigl.sparsity import ShardReducer, random_constant_fan_in_mask, random_nm_mask
from tests.sparsity.simulated_shards import SimulatedGroup, row_splits

ROWS, COLS = 12, 16


def _masks(generator: torch.Generator) -> dict[str, Tensor]:
    """Masks that keep and that break the rules: constant fan-in, one neuron off by one weight, ablated neurons,
    2:4, dense and empty."""
    constant = random_constant_fan_in_mask((ROWS, COLS), 4 * ROWS, generator)
    uneven = constant.clone()
    uneven[5, int(uneven[5].logical_not().nonzero()[0])] = True
    ablated = constant.clone()
    ablated[[2, 9]] = False
    return {
        "constant": constant,
        "uneven": uneven,
        "ablated": ablated,
        "nm": random_nm_mask((ROWS, COLS), 2, 4, generator),
        "dense": torch.ones(ROWS, COLS, dtype=torch.bool),
        "empty": torch.zeros(ROWS, COLS, dtype=torch.bool),
    }


MAKE: dict[str, Callable[[], DynamicSparsityCallback]] = {
    "constant": SRigLCallback,
    "srigl-2:4": lambda: SRigLCallback(structure="2:4"),
    "rigl": RigLCallback,
}


@pytest.mark.parametrize("kind", list(MAKE))
@pytest.mark.parametrize("sizes", [(5, 7), (12, 0), (4, 0, 8), (1, 6, 5)])
def test_counts_summed_over_shards_judge_a_mask_as_the_whole_mask_is_judged(kind: str, sizes: tuple[int, ...]) -> None:
    callback = MAKE[kind]()
    masks = _masks(torch.Generator().manual_seed(len(sizes)))
    callback.budgets = dict.fromkeys(masks, int(masks["constant"].sum()))
    expected = {fqn: callback.mask_problem(fqn, mask, mask) for fqn, mask in masks.items()}
    parts = row_splits(ROWS, sizes)

    def work(rank: int, reducer: ShardReducer) -> dict[str, str | None]:
        return callback.shard_problems({fqn: mask[parts[rank]] for fqn, mask in masks.items()}, reducer)

    for found in SimulatedGroup(len(sizes)).run(work):
        assert {fqn: problem is None for fqn, problem in found.items()} == {
            fqn: problem is None for fqn, problem in expected.items()
        }
        assert found["dense"] == expected["dense"] and found["empty"] == expected["empty"]
    kept = {fqn for fqn, problem in expected.items() if problem is None}
    assert kept == {"constant": {"constant", "ablated", "nm"}, "srigl-2:4": {"nm"}, "rigl": {"constant"}}[kind]


def test_a_shard_breaking_constant_fan_in_is_named_on_every_rank() -> None:
    callback = SRigLCallback()
    mask = _masks(torch.Generator().manual_seed(0))["uneven"]
    parts = row_splits(ROWS, (4, 0, 8))

    def work(rank: int, reducer: ShardReducer) -> dict[str, str | None]:
        return callback.shard_problems({"net.2.weight": mask[parts[rank]]}, reducer)

    for found in SimulatedGroup(3).run(work):
        assert found["net.2.weight"] == (
            f"active neurons hold different numbers of weights ({4 * ROWS + 1} weights over {ROWS} active neurons, "
            "not an equal share each), not one constant fan-in"
        )
