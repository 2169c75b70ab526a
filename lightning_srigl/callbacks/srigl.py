"""``SRigLCallback``: Structured RigL (constant fan-in dynamic sparse training with neuron ablation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_srigl.callbacks.arguments import as_real, check_patterns
from lightning_srigl.callbacks.dynamic_sparsity import DynamicSparsityCallback
from lightning_srigl.logs import rank_zero_info
from lightning_srigl.masking import check_patterns_match, matches
from lightning_srigl.sparsity import (
    CONSTANT_FAN_IN,
    LayerInputs,
    Reducer,
    Structure,
    check_fan_in_budget,
    check_nm,
    is_constant_fan_in,
    is_nm,
    nearest_fan_in,
    nm_drop_grow,
    random_constant_fan_in_mask,
    random_nm_mask,
    srigl_update_layers,
)


class SRigLCallback(DynamicSparsityCallback):
    """Train with SRigL (Lasby et al., ICLR 2024): every active neuron keeps the same fan-in.

    Every ``delta_t`` optimizer steps until ``t_end_fraction`` of training, each sparse layer drops
    its smallest-magnitude weights (a cosine-decayed fraction ``alpha``), ablates neurons with fewer
    than ``gamma_sal`` salient weights, and grows each surviving neuron back to the layer's constant
    fan-in by dense-gradient magnitude. Regrown weights start at zero, with zero optimizer state.

    Args:
        gamma_sal: ablation threshold: a neuron needs ``max(1, floor(gamma_sal * k0))`` salient
            weights to stay (``k0`` = sparse fan-in), or ``gamma_sal`` weights if ``>= 1``;
            ``0`` disables ablation. ``None``: 0.3 (the paper's CNN value) for constant fan-in,
            0 for N:M (a group must keep exactly N, so neurons cannot be ablated).
        structure: ``"constant_fan_in"`` (SRigL) or an N:M pattern such as ``"2:4"`` (any spelling
            `Structure.parse` takes): the same
            schedule then drops by magnitude and regrows by gradient inside each group of M inputs,
            so every layer stays exactly N:M (density N/M; ``sparsity`` and ``distribution`` are
            not used; selected layers whose input dimension M does not divide stay dense).
        no_ablation: patterns of layers never ablated; ``None`` protects the last sparse layer (the
            output layer); ``[]`` allows ablating every layer.
        **kwargs: the arguments every dynamic sparsity method shares (``sparsity``, ``distribution``,
            ``delta_t``, ``include``, ...), by keyword: see
            [`DynamicSparsityCallback`][lightning_srigl.callbacks.DynamicSparsityCallback].
    """

    metric_prefix = "srigl"
    mask_defining = DynamicSparsityCallback.mask_defining | {"structure"}

    def __init__(
        self,
        *,
        gamma_sal: float | None = None,
        structure: str | Structure = CONSTANT_FAN_IN,
        no_ablation: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        parsed = Structure.parse(structure)
        self.structure = str(parsed)  # the canonical spelling, as checkpoints store it
        self.nm = parsed.nm
        if gamma_sal is None:
            gamma_sal = 0.0 if self.nm else 0.3
        gamma_sal = as_real(gamma_sal, "gamma_sal", "0 disables ablation; the paper uses 0.3")
        if gamma_sal < 0.0:
            raise ValueError(f"gamma_sal must be >= 0 (0 disables ablation), got {gamma_sal}; the paper uses 0.3")
        if self.nm and gamma_sal > 0:
            raise ValueError(
                f"structure={structure!r} keeps exactly N weights in every group, so neurons cannot be "
                "ablated: set gamma_sal=0 (or leave it unset)"
            )
        self.gamma_sal = gamma_sal
        self.no_ablation = check_patterns(no_ablation, "no_ablation")
        self.protected: set[str] = set()

    @override
    def config(self) -> dict[str, Any]:
        no_ablation = list(self.no_ablation) if self.no_ablation is not None else None
        return {
            **super().config(),
            "gamma_sal": self.gamma_sal,
            "no_ablation": no_ablation,
            "structure": self.structure,
        }

    @override
    def allocate_densities(self, names: list[str], shapes: list[tuple[int, ...]], pinned: list[int]) -> list[float]:
        """Constant fan-in: the configured distribution. N:M: density N/M where M divides the input dim."""
        if self.nm is None:
            return super().allocate_densities(names, shapes, pinned)
        n, m = self.nm
        fits = [len(shape) >= 2 and shape[1] % m == 0 for shape in shapes]
        misfits = [name for name, ok in zip(names, fits) if not ok]
        if misfits and self.include is not None:
            check_nm(shapes[fits.index(False)], n, m)  # an explicitly included layer must fit: raises
        if misfits:
            rank_zero_info(f"{type(self).__name__}: {n}:{m} does not divide the input dim of {misfits}; kept dense")
        return [n / m if ok and i not in pinned else 1.0 for i, ok in enumerate(fits)]

    @override
    def configure_layers(self, fqns: list[str]) -> None:
        """Resolve ``no_ablation``: by default the last sparse layer (the output layer) is protected."""
        if self.no_ablation is None:
            self.protected = set(fqns[-1:])
        else:
            check_patterns_match(self.no_ablation, fqns, "no_ablation")
            self.protected = {fqn for fqn in fqns if matches(fqn, self.no_ablation)}

    @override
    def mask_problem(self, fqn: str, mask: Tensor, rows: Tensor) -> str | None:
        """Constant fan-in: every active neuron has the same number of weights; N:M: exactly N of every M."""
        if self.nm is not None and not is_nm(rows, *self.nm):
            return f"not {self.nm[0]}:{self.nm[1]} sparse"
        if self.nm is None and not is_constant_fan_in(rows):
            counts = sorted({int(c) for c in rows.flatten(1).sum(1).unique() if c > 0})
            return f"active neurons hold different numbers of weights ({counts[:6]}), not one constant fan-in"
        return super().mask_problem(fqn, mask, rows)

    @override
    def shard_counts(self, fqn: str, rows: Tensor) -> list[int]:
        """The base counts, then active neurons, the sum of squared fan-ins, and whether these rows break N:M."""
        fan_ins = rows.flatten(1).sum(1, dtype=torch.int64)
        broken = int(self.nm is not None and rows.numel() > 0 and not is_nm(rows, *self.nm))
        return [*super().shard_counts(fqn, rows), int(fan_ins.count_nonzero()), int(fan_ins.square().sum()), broken]

    @override
    def counts_problem(self, fqn: str, counts: Sequence[int]) -> str | None:
        """Constant fan-in: ``neurons * sum(fan_in^2) == sum(fan_in)^2`` over the active neurons, which holds
        exactly when their fan-ins are equal (Cauchy-Schwarz); N:M: no shard breaks it."""
        active, _, neurons, squares, broken = counts
        if self.nm is not None and broken:
            return f"not {self.nm[0]}:{self.nm[1]} sparse"
        if self.nm is None and neurons * squares != active * active:
            return (
                f"active neurons hold different numbers of weights ({active} weights over {neurons} active "
                "neurons, not an equal share each), not one constant fan-in"
            )
        return super().counts_problem(fqn, counts)

    @override
    def initial_mask(self, fqn: str, shape: torch.Size, target: int, generator: torch.Generator) -> Tensor:
        """Random N:M mask, or random constant fan-in ``nearest_fan_in(target, O, F)`` in every row."""
        if self.nm is not None:
            return random_nm_mask(shape, *self.nm, generator)
        check_fan_in_budget(shape, self.budgets[fqn])
        fan_in = nearest_fan_in(target, shape[0], math.prod(shape[1:]) - 1)  # a sparse layer stays sparse
        return random_constant_fan_in_mask(shape, fan_in * shape[0], generator)

    @override
    def layer_updates(
        self, fqns: Sequence[str], layers: Sequence[LayerInputs], drop_fraction: float, reducer: Reducer, carry: int
    ) -> list[tuple[Tensor, Tensor]]:
        """N:M: each layer on its own. Constant fan-in: all layers in one ``srigl_update_layers`` whose fan-ins are
        the nearest to each layer's budget plus the rounding carried from the layers before (``carry`` in)."""
        if self.nm is not None:  # N:M groups lie inside rows: nothing layer-wide
            n, m = self.nm
            nm_updates = [
                nm_drop_grow(layer.weight, layer.mask, layer.dense_grad, n=n, m=m, drop_fraction=drop_fraction)
                for layer in layers
            ]
            return [(u.mask, u.grown) for u in nm_updates]
        updates = srigl_update_layers(
            [replace(layer, ablation=fqn not in self.protected) for fqn, layer in zip(fqns, layers)],
            drop_fraction=drop_fraction,
            gamma_sal=self.gamma_sal,
            carry=carry,
            reducer=reducer,
        )
        return [(u.mask, u.grown) for u in updates]
