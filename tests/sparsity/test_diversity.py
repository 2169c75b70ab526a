"""Mask diversity: exact pattern counts and log10 mask counts against closed forms."""

import itertools
import math

import pytest

from lightning_srigl.sparsity.diversity import count_transposable_patterns, mask_diversity_log10


def brute_force_count(m: int, n: int) -> int:
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    return sum(all(sum(col) == n for col in zip(*chosen)) for chosen in itertools.product(rows, repeat=m))


@pytest.mark.parametrize(("m", "n"), [(2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (4, 3), (5, 2)])
def test_pattern_count_matches_brute_force(m: int, n: int) -> None:
    assert count_transposable_patterns(m, n) == brute_force_count(m, n)


def test_pattern_count_known_values_and_symmetries() -> None:
    assert count_transposable_patterns(4, 2) == 90
    assert count_transposable_patterns(8, 4) == 116_963_796_250
    for m in range(2, 8):
        assert count_transposable_patterns(m, 1) == math.factorial(m)  # permutation matrices
        for n in range(1, m):
            assert count_transposable_patterns(m, n) == count_transposable_patterns(m, m - n)  # complement


@pytest.mark.parametrize(
    ("kind", "n", "m", "block_size", "expected"),
    [  # log10 mask diversity of 64 weights, from the closed forms (e.g. C(64, 32), 6**16, 90**4)
        ("unstructured", 2, 4, None, 18.26),
        ("nm", 4, 8, None, 14.76),
        ("nm", 2, 4, None, 12.45),
        ("transposable_nm", 4, 8, None, 11.07),
        ("nm", 1, 2, None, 9.63),
        ("transposable_nm", 2, 4, None, 7.82),
        ("block", 2, 4, 4, 4.11),
        ("nm", 2, 8, None, 11.58),
        ("nm", 1, 4, None, 9.63),
        ("transposable_nm", 2, 8, None, 8.27),
        ("transposable_nm", 1, 4, None, 5.52),
    ],
)
def test_diversity_of_64_weights_matches_the_research_table(
    kind: str, n: int, m: int, block_size: int | None, expected: float
) -> None:
    assert round(mask_diversity_log10(kind, 64, n, m, block_size=block_size), 2) == expected  # type: ignore[arg-type]


def test_diversity_matches_exact_counts_for_small_tensors() -> None:
    assert mask_diversity_log10("unstructured", 4, 1, 2) == pytest.approx(math.log10(6))
    assert mask_diversity_log10("unstructured", 64, 2, 4) == pytest.approx(math.log10(math.comb(64, 32)))
    assert mask_diversity_log10("nm", 8, 2, 4) == pytest.approx(math.log10(36))
    assert mask_diversity_log10("transposable_nm", 32, 2, 4) == pytest.approx(math.log10(90**2))
    assert mask_diversity_log10("block", 24, 1, 3, block_size=2) == pytest.approx(math.log10(math.comb(12, 4)))


def test_diversity_of_large_tensors_is_finite_and_ordered() -> None:
    numel = 4096 * 4096
    values = [mask_diversity_log10(kind, numel, 4, 8) for kind in ("unstructured", "nm", "transposable_nm")]
    assert all(math.isfinite(v) for v in values)
    assert values[0] > values[1] > values[2]


@pytest.mark.parametrize(
    ("kind", "numel", "n", "m", "block_size", "message"),
    [
        ("nm", 10, 2, 4, None, "multiple of 4"),
        ("transposable_nm", 32, 4, 8, None, "multiple of 64"),
        ("unstructured", 6, 1, 4, None, "not an integer count"),
        ("block", 64, 2, 4, None, "block_size"),
        ("nm", 64, 2, 4, 4, "block_size"),
        ("dense", 64, 2, 4, None, "Unknown kind"),
        ("nm", 64, 4, 4, None, "1 <= n < m"),
    ],
)
def test_invalid_requests_raise_value_error(
    kind: str, numel: int, n: int, m: int, block_size: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mask_diversity_log10(kind, numel, n, m, block_size=block_size)  # type: ignore[arg-type]
