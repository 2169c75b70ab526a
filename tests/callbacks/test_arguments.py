"""Bad arguments fail early with messages that say what to change; every argument works from YAML."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from lightning_srigl.callbacks import AccelerateCallback, NMSparsityCallback, RigLCallback, SRigLCallback
from lightning_srigl.convert import convert_to_structured
from tests.callbacks.tiny import TinyNet, trainer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"sparsity"),
        ({"sparsity": -0.1}, r"sparsity"),
        ({"distribution": "erdos"}, r"distribution must be one of 'erk', 'uniform'"),
        ({"delta_t": 0}, r"delta_t must be an integer >= 1"),
        ({"t_end_fraction": 0.0}, r"t_end_fraction must be in \(0, 1\]"),
        ({"alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
        ({"gamma_sal": -1.0}, r"gamma_sal must be >= 0"),
        ({"grad_accumulation_n": 0}, r"grad_accumulation_n must be an integer >= 1"),
        ({"delta_t": 4, "grad_accumulation_n": 5}, r"must not exceed delta_t=4"),
        ({"log_every_n_steps": 0}, r"log_every_n_steps"),
        ({"include": [1]}, r"include must be a list of fnmatch patterns"),
    ],
)
def test_invalid_arguments_are_rejected_in_init(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        SRigLCallback(**kwargs)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: AccelerateCallback(batch_size=1.5), TypeError, r"batch_size must be an integer, got float 1\.5"),
        (lambda: AccelerateCallback(candidates="dense"), TypeError, r"list of candidate names.*got 'dense'"),
        (lambda: AccelerateCallback(candidates=["foo"]), ValueError, r"must include 'dense'.*\['foo'\] unknown"),
        (lambda: AccelerateCallback(candidates=["dense", "foo"]), ValueError, r"\['foo'\] unknown"),
        (lambda: AccelerateCallback(repeats=0), ValueError, r"repeats must be an integer >= 1"),
        (lambda: AccelerateCallback(fold="yes"), TypeError, r"fold must be True or False"),
        (lambda: SRigLCallback(gamma_sal=float("inf")), ValueError, r"gamma_sal must be finite"),
        (lambda: SRigLCallback(gamma_sal="0.3"), TypeError, r"gamma_sal must be a number, got str '0\.3'"),
        (lambda: SRigLCallback(structure=None), TypeError, r"structure must be a string.*'2:4'"),
        (lambda: SRigLCallback(seed="abc"), TypeError, r"seed must be an integer, got str 'abc'"),
        (lambda: SRigLCallback(seed=2**70), ValueError, r"seed must be in \[-9223372036854775808, 1844674407\d+\]"),
        (lambda: RigLCallback(seed=-(2**64)), ValueError, r"seed must be in"),
        (lambda: SRigLCallback(sparsity="0.9"), TypeError, r"sparsity must be a number"),
        (lambda: SRigLCallback(alpha=float("nan")), ValueError, r"alpha .*must be finite"),
        (lambda: SRigLCallback(report="no"), TypeError, r"report must be True or False"),
        (lambda: RigLCallback(init_std_quirk=1), TypeError, r"init_std_quirk must be True or False, got int 1"),
        (lambda: NMSparsityCallback(lambda_w=float("nan")), ValueError, r"lambda_w must be finite"),
        (lambda: NMSparsityCallback(lambda_w=float("inf")), ValueError, r"lambda_w must be finite"),
        (lambda: NMSparsityCallback(n=2.0), TypeError, r"n must be an integer"),
        (
            lambda: NMSparsityCallback(transposable="best"),
            ValueError,
            r"transposable must be one of None, 'greedy', 'exact'",
        ),
        (lambda: NMSparsityCallback(include=[3]), TypeError, r"include must be a list of fnmatch patterns"),
        (
            lambda: convert_to_structured(nn.Sequential(nn.Linear(8, 8)), n=4, m=2),
            ValueError,
            r"Invalid N:M pattern 4:2",
        ),
    ],
)
def test_each_bad_argument_fails_at_construction_with_a_clear_error(
    make: Callable[[], object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_numbers_may_be_numpy_scalars_or_0d_tensors() -> None:
    srigl = SRigLCallback(sparsity=np.float32(0.9), delta_t=np.int64(10), alpha=torch.tensor(0.2), seed=np.int64(3))
    assert srigl.sparsity == pytest.approx(0.9) and srigl.alpha == pytest.approx(0.2)
    assert (srigl.delta_t, srigl.seed) == (10, 3) and type(srigl.delta_t) is int and type(srigl.sparsity) is float
    assert SRigLCallback(gamma_sal=np.float64(0.5)).gamma_sal == 0.5
    assert AccelerateCallback(batch_size=np.int64(4), warmup=torch.tensor(2)).batch_size == 4
    nm = NMSparsityCallback(n=np.int64(1), m=np.int64(4), lambda_w=np.float32(1e-3))
    assert (nm.n, nm.m) == (1, 4) and nm.lambda_w == pytest.approx(1e-3)
    assert NMSparsityCallback(include="net.2.weight").include == ("net.2.weight",)  # one pattern, not characters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"include": ["fc.*"]}, r"include pattern\(s\) \['fc\.\*'\] match no .*net\.0\.weight"),
        ({"exclude": ["head"]}, r"exclude pattern"),
        ({"dense": ["net.9.weight"]}, r"dense pattern"),
        ({"no_ablation": ["classifier.weight"]}, r"no_ablation pattern"),
        ({"include": ["net.1.*"]}, r"match no sparsifiable parameter"),
    ],
)
def test_patterns_matching_nothing_fail_at_setup_with_the_available_names(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trainer(callbacks=[SRigLCallback(report=False, **kwargs)], max_steps=1).fit(TinyNet())


def test_a_fan_in_of_zero_names_the_layer_and_the_fix() -> None:
    callback = SRigLCallback(sparsity=0.99, distribution="uniform", report=False)
    with pytest.raises(ValueError, match=r"sparse layer 'net\.0\.weight'.*fan-in would be 0.*lower this layer"):
        trainer(callbacks=[callback], max_steps=1).fit(TinyNet())


def test_a_bare_string_pattern_is_one_pattern_not_a_substring_test() -> None:
    assert SRigLCallback(no_ablation="net.4.weight").no_ablation == ("net.4.weight",)


def test_two_sparsity_callbacks_on_one_trainer_are_rejected() -> None:
    callbacks = [SRigLCallback(report=False), RigLCallback(report=False)]
    with pytest.raises(ValueError, match="one sparsity callback per Trainer"):
        trainer(callbacks=callbacks, max_steps=1).fit(TinyNet())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("callback_class", [SRigLCallback, RigLCallback])
def test_every_argument_can_be_set_from_lightning_cli_yaml(callback_class: type) -> None:
    config = yaml.safe_load(
        """
        callback:
          sparsity: 0.95
          distribution: uniform
          delta_t: 50
          t_end_fraction: 0.5
          alpha: 0.2
          include: ["encoder.*"]
          exclude: ["*.out_proj.weight"]
          dense: ["encoder.0.weight"]
          sparse_init: false
          init_std_quirk: true
          grad_accumulation_n: 4
          seed: 7
          log_every_n_steps: 10
          report: false
        """
    )
    if callback_class is SRigLCallback:
        config["callback"].update(gamma_sal=0.95, no_ablation=["head.weight"])
    parser = ArgumentParser()
    parser.add_class_arguments(callback_class, "callback")
    callback = parser.instantiate_classes(parser.parse_object(config)).callback
    assert isinstance(callback, callback_class)
    for key, value in config["callback"].items():
        actual = getattr(callback, key)
        assert (list(actual) if isinstance(actual, tuple) else actual) == value, key
