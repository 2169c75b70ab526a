"""`pointwise_rewrites.rewrite_one_plus_tanh`, run by the compiled graph's post-grad passes: which sums it rewrites,
and the tanh GELU after it (GPT-2's ``gelu_new``, ``F.gelu(approximate="tanh")``) against float64."""

from __future__ import annotations

import copy
import math
import time
import warnings

import pytest
import torch
from torch import fx

from lightning_srigl.kernels.compiled import COMPILE_OPTIONS
from lightning_srigl.kernels.graph_passes import PostGradPasses


class Recording(PostGradPasses):
    """`PostGradPasses` with ``direct`` that records how many ``tanh`` its passes took out and the ops left after them
    (a fresh ``uuid``: inductor's cache must not skip it)."""

    def __init__(self) -> None:
        super().__init__(direct=True)
        self.rewritten, self.targets = 0, []

    def __call__(self, graph: fx.Graph) -> None:
        before = _targets(graph).count(torch.ops.aten.tanh.default)
        super().__call__(graph)
        self.targets += _targets(graph)
        self.rewritten += before - _targets(graph).count(torch.ops.aten.tanh.default)

    def uuid(self) -> str:
        return f"recording-{id(self)}-{time.time_ns()}"


def _targets(graph: fx.Graph) -> list[object]:
    return [node.target for node in graph.nodes if node.op == "call_function"]


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's ``NewGELUActivation`` (GPT-2's ``gelu_new``), as written there."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def compiled(function, passes: Recording):
    return torch.compile(function, fullgraph=True, options=COMPILE_OPTIONS | {"post_grad_custom_post_pass": passes})


@pytest.mark.parametrize(
    "gelu", [gelu_new, lambda x: torch.nn.functional.gelu(x, approximate="tanh")], ids=["gelu_new", "F.gelu_tanh"]
)
def test_the_tanh_gelu_is_rewritten_and_stays_within_rounding_of_float64(gelu) -> None:
    passes = Recording()
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        got = compiled(gelu, passes)(x)
    assert passes.rewritten == 1
    assert torch.ops.aten.tanh.default not in passes.targets and torch.ops.aten.sigmoid.default in passes.targets
    exact = gelu_new(x.double())
    assert float((got.double() - exact).abs().max()) < 1e-6
    torch.testing.assert_close(got, gelu(x), rtol=1e-6, atol=1e-6)  # eager, with torch's tanh


def test_only_a_tanh_read_by_nothing_but_an_added_one_is_rewritten() -> None:
    passes = Recording()
    x = torch.randn(5, 7)

    def others(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shared = torch.tanh(x * 2)
        return torch.tanh(x) + 2, shared + 1, shared * 3, 1 + torch.tanh(x * 5)

    with torch.no_grad():
        got = compiled(others, passes)(x)
    assert passes.rewritten == 1  # the last sum (either order of the addition); its tanh has no other reader
    assert passes.targets.count(torch.ops.aten.tanh.default) == 2
    for a, b in zip(got, others(x)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_compiled_gpt2_mlp_activations_are_rewritten() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 50, (2, 8))
    passes = Recording()
    with torch.no_grad():
        expected = copy.deepcopy(model)(ids).logits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.compile(model, options=COMPILE_OPTIONS | {"post_grad_custom_post_pass": passes})(ids).logits
    assert passes.rewritten == config.n_layer  # each block's gelu_new
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
