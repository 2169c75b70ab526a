"""Random sparse layers and the inference modules the benchmark compares.

A *method* is ``"<kernel>_<dtype>"`` or ``"<kernel>_graph_<dtype>"``: kernel ``dense``, ``csr``,
``condensed`` or ``semi_structured`` (2:4, CUDA GPUs with sparse tensor cores); dtype ``fp32``,
``bf16``, ``fp16`` or ``tf32`` (fp32 weights, TF32 tensor-core matmuls: dense only); ``_graph``
replays the layer from a CUDA graph (:mod:`lightning_srigl.benchmark.wrappers`). Examples:
``dense_fp32``, ``dense_tf32``, ``csr_fp32``, ``condensed_bf16``, ``condensed_graph_fp32``.
Every method of one configuration is built from the same masked fp32 weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_srigl.benchmark.wrappers import CUDAGraphReplay, TF32Matmul
from lightning_srigl.condensed.kinds.registry import CANDIDATES, build_candidate
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.sparsity.nm import nm_mask

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
STRUCTURES: tuple[str, ...] = ("srigl", "2:4")


@dataclass(frozen=True)
class Method:
    """A parsed method name: which layer, in which dtype, run how."""

    kernel: str
    dtype: torch.dtype
    tf32: bool = False
    graph: bool = False


@dataclass(frozen=True)
class SparseLayerSpec:
    """One layer to benchmark: ``in_features -> out_features`` at ``sparsity`` with ``structure``.

    ``structure="srigl"``: every active neuron has the same fan-in, ``ablation`` of the neurons are
    removed and the others share their budget (as SRigL's ablation does). ``structure="2:4"``: an
    N:M mask along the input dimension (sparsity is then always 0.5).
    """

    in_features: int
    out_features: int
    sparsity: float
    structure: str = "srigl"
    ablation: float = 0.0

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}.")
        if self.structure == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"A 2:4 layer is 50% sparse; got sparsity={self.sparsity}. Use sparsity 0.5.")
        if not 0.0 <= self.ablation < 1.0:
            raise ValueError(f"ablation is a fraction of neurons in [0, 1), got {self.ablation}.")

    @property
    def active_neurons(self) -> int:
        """Neurons left after ablation (at least one)."""
        return max(1, round(self.out_features * (1.0 - self.ablation)))

    @property
    def fan_in(self) -> int:
        """Non-zeros per active neuron: the layer budget ``round((1-s)·in·out)`` shared by the active ones."""
        if self.structure == "2:4":
            return self.in_features // 2
        budget = round((1.0 - self.sparsity) * self.in_features * self.out_features)
        return max(1, min(self.in_features, budget // self.active_neurons))


def constant_fan_in_mask(spec: SparseLayerSpec, generator: torch.Generator) -> Tensor:
    """A random ``(out, in)`` bool mask: ``spec.fan_in`` ones in each of ``spec.active_neurons`` random rows."""
    out, fan_in = spec.out_features, spec.fan_in
    columns = torch.rand(out, spec.in_features, generator=generator).argsort(dim=1)[:, :fan_in]
    mask = torch.zeros(out, spec.in_features, dtype=torch.bool).scatter_(1, columns, True)
    ablated = torch.randperm(out, generator=generator)[: out - spec.active_neurons]
    mask[ablated] = False
    return mask


def make_mask(spec: SparseLayerSpec, generator: torch.Generator) -> Tensor:
    """The ``(out, in)`` bool mask of ``spec``: constant fan-in (SRigL) or random 2:4."""
    if spec.structure == "2:4":
        scores = torch.rand(spec.out_features, spec.in_features, generator=generator)
        return nm_mask(scores, 2, 4)
    return constant_fan_in_mask(spec, generator)


def make_masked_linear(spec: SparseLayerSpec, seed: int = 0) -> tuple[nn.Linear, Tensor]:
    """A random fp32 ``nn.Linear`` with weights already multiplied by its mask, and the mask."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(spec.in_features, spec.out_features).requires_grad_(False)
    mask = make_mask(spec, generator)
    with torch.no_grad():
        linear.weight.normal_(0.0, (2.0 / spec.fan_in) ** 0.5, generator=generator).mul_(mask)
        linear.bias.uniform_(-0.1, 0.1, generator=generator)
    return linear, mask


def parse_method(method: str) -> Method:
    """``"condensed_graph_bf16" -> Method("condensed", torch.bfloat16, graph=True)``; ``ValueError`` on unknown names."""
    kernel, _, dtype = method.rpartition("_")
    graph = kernel.endswith("_graph")
    kernel = kernel.removesuffix("_graph")
    if kernel not in CANDIDATES or dtype not in DTYPES or (dtype == "tf32" and kernel != "dense"):
        raise ValueError(
            f"Unknown method {method!r}: use '<kernel>_<dtype>' or '<kernel>_graph_<dtype>' with kernel in "
            f"{'/'.join(CANDIDATES)} and dtype in {sorted(DTYPES)} ('tf32' for dense only), e.g. 'condensed_fp32'."
        )
    return Method(kernel, DTYPES[dtype], tf32=dtype == "tf32", graph=graph)


def build_method(
    method: str, linear: nn.Linear, mask: Tensor, device: torch.device, condensed_backend: str = "auto"
) -> nn.Module:
    """The inference module for ``method`` equal to ``linear`` masked by ``mask``, on ``device``.

    ``condensed_backend`` is the :class:`CondensedLinear` backend (``"triton"`` runs the GPU kernels
    on CPU tensors under ``TRITON_INTERPRET=1``, as the GPU check's smoke run does).
    """
    parsed = parse_method(method)
    source = nn.Linear(linear.in_features, linear.out_features).requires_grad_(False)
    source.load_state_dict(linear.state_dict())
    source = source.to(device=device, dtype=parsed.dtype)
    module = build_candidate(parsed.kernel, source, mask.to(device)).eval()
    if isinstance(module, CondensedLinear) and condensed_backend != module.backend:
        module = CondensedLinear(
            module.values, module.indices, module.active_rows, module.bias,
            module.in_features, module.out_features, condensed_backend,
        ).eval()  # fmt: skip
    if parsed.tf32:
        module = TF32Matmul(module)
    if parsed.graph:
        module = CUDAGraphReplay(module)
    return module


def unwrapped(module: nn.Module) -> nn.Module:
    """The layer inside the wrappers of :mod:`lightning_srigl.benchmark.wrappers`."""
    while isinstance(module, (TF32Matmul, CUDAGraphReplay)):
        module = module.inner
    return module


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the weight representation: dense weight, CSR values+indices, condensed values+indices."""
    module = unwrapped(module)
    tensors: list[Tensor]
    if isinstance(module, nn.Linear):
        tensors = [module.weight]
    elif hasattr(module, "values") and hasattr(module, "indices"):
        tensors = [module.values, module.indices]
    elif getattr(module, "weight", None) is not None and module.weight.layout == torch.sparse_csr:
        w = module.weight
        tensors = [w.values(), w.col_indices(), w.crow_indices()]
    else:
        tensors = [b for b in module.buffers()] + [p for p in module.parameters()]
    return sum(t.numel() * t.element_size() for t in tensors)
