"""Bad arguments fail early with messages that say what to change; every argument works from YAML."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import ArgumentParser

from lightning_srigl.callbacks import RigLCallback, SRigLCallback
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
