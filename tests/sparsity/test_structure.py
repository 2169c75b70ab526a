"""``Structure``: one parser for every spelling the callbacks, ``convert`` and the CLI take."""

from __future__ import annotations

import pytest

from lightning_srigl.callbacks import NMSparsityCallback, SRigLCallback
from lightning_srigl.sparsity import CONSTANT_FAN_IN, Structure


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("2:4",), Structure((2, 4))),
        ((" 1:8 ",), Structure((1, 8))),
        (("n:m", 2, 4), Structure((2, 4))),
        (("n:m",), Structure((2, 4))),  # convert's documented default pattern
        (("N:M", 1, 4), Structure((1, 4))),
        (("constant_fan_in",), Structure()),
        (("fan_in",), Structure()),
        ((Structure((4, 8)),), Structure((4, 8))),
        (("4:8", 4, 8), Structure((4, 8))),
    ],
)
def test_every_spelling_parses_to_one_structure(args: tuple, expected: Structure) -> None:
    assert Structure.parse(*args) == expected


def test_the_canonical_spelling_round_trips() -> None:
    assert str(Structure((2, 4))) == "2:4" and str(Structure()) == CONSTANT_FAN_IN
    assert Structure.parse(str(Structure((3, 8)))) == Structure((3, 8))
    assert (Structure((2, 4)).n, Structure((2, 4)).m) == (2, 4)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("2-4",), ValueError, r"Unknown structure '2-4'"),
        (("4:2",), ValueError, r"Invalid N:M pattern 4:2"),
        (("2:4", 1, 4), ValueError, r"contradicts n=1, m=4"),
        (("constant_fan_in", 2, 4), ValueError, r"contradicts"),
        ((None,), TypeError, r"structure must be a string"),
    ],
)
def test_bad_spellings_say_what_is_accepted(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Structure.parse(*args)


def test_the_callbacks_take_the_same_spellings() -> None:
    assert SRigLCallback(structure="2:4").nm == SRigLCallback(structure=Structure((2, 4))).nm == (2, 4)
    assert SRigLCallback(structure="fan_in").structure == CONSTANT_FAN_IN
    spellings = [NMSparsityCallback(), NMSparsityCallback(n=2, m=4), NMSparsityCallback(structure="2:4")]
    assert {(c.n, c.m) for c in spellings} == {(2, 4)}
    assert (NMSparsityCallback(structure="1:4").n, NMSparsityCallback(n=1).n) == (1, 1)
    with pytest.raises(ValueError, match="NMSparsityCallback trains N:M patterns"):
        NMSparsityCallback(structure="constant_fan_in")
