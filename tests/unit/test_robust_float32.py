"""Float32 updates give, bit for bit, what their float64 copy gives.

Krum, Multi-Krum, Bulyan, the median and the trimmed mean keep float32 updates in
float32 and convert one column block at a time (``_distances``, ``central_mean``). These
tests pin that down: for each of them, float32 input == ``x.astype(float64)`` input,
byte for byte, over several blocks (the block sizes are shrunk so that small inputs
have many, with a last block of one column), with ties, a large common offset, even
``n`` for the median, permuted rows, non-contiguous layouts; float64 results equal the
reference formulas the rules had before blocking; and a NaN or infinite value is still
rejected with the same message, before any other error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedshield import robust
from fedshield.errors import ConfigError, PayloadError
from fedshield.robust import _distances, trimmed_mean

Array = npt.NDArray[Any]

RULES = ("krum", "multi_krum", "bulyan", "median", "trimmed_mean")


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 2**11 values for the Gram product and 2**9 for the sort."""
    monkeypatch.setattr(_distances, "_BLOCK_ELEMENTS", 1 << 11)
    monkeypatch.setattr(trimmed_mean, "_BLOCK_VALUES", 1 << 9)


def max_f(rule: str, n: int) -> int:
    if rule == "bulyan":
        return max(0, (n - 3) // 4)
    if rule in ("krum", "multi_krum"):
        return max(0, (n - 3) // 2)
    return (n - 1) // 2


def updates(kind: str, n: int, d: int, seed: int = 0) -> Array:
    """Float32 updates: ``normal``, ``offset`` (far from 0) or ``ties`` (small integers)."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((n, d), dtype=np.float32)
    if kind == "offset":
        return (rng.standard_normal((n, d)) + 1000.0).astype(np.float32)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[1] = x[0]  # an exact duplicate: Krum scores tie exactly
    return x


def same_bits(a: Array, b: Array) -> bool:
    return a.dtype == b.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()


def cases(rule: str, n: int) -> list[dict[str, Any]]:
    """Keyword arguments to try: f = 0 and the largest f, and the rule's parameters."""
    out: list[dict[str, Any]] = [
        {"num_byzantine": f} for f in sorted({0, 1, max_f(rule, n)}) if f <= max_f(rule, n)
    ]
    if rule == "multi_krum":
        out.append({"num_byzantine": max_f(rule, n), "m": 1})
        out.append({"num_byzantine": 0, "weights": np.arange(1.0, n + 1)})
    if rule == "trimmed_mean":
        out.append({"num_byzantine": 0, "beta": 0.3})
    return out


# --- float32 == float64 copy ------------------------------------------------------------------


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["normal", "offset", "ties"])
@pytest.mark.parametrize(("n", "d"), [(3, 1), (4, 2), (7, 300), (8, 513), (11, 1025), (12, 97)])
def test_float32_gives_the_bits_of_its_float64_copy(rule: str, kind: str, n: int, d: int) -> None:
    x32 = updates(kind, n, d)
    x64 = x32.astype(np.float64)
    for kwargs in cases(rule, n):
        out32 = robust.aggregate(rule, x32, **kwargs)
        out64 = robust.aggregate(rule, x64, **kwargs)
        assert same_bits(out32, out64), (rule, kwargs)


@pytest.mark.parametrize("rule", RULES)
def test_float32_gives_the_bits_of_its_float64_copy_with_the_real_blocks(rule: str) -> None:
    """Three Gram blocks, 1024-column average blocks and 2**18 // n sort blocks."""
    n = 7
    d = 2 * _distances._step(n) + 5
    x32 = updates("normal", n, d, seed=1)
    x64 = x32.astype(np.float64)
    for kwargs in cases(rule, n):
        assert same_bits(
            robust.aggregate(rule, x32, **kwargs), robust.aggregate(rule, x64, **kwargs)
        )


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", ["fortran", "strided", "negative"])
def test_non_contiguous_float32_gives_the_bits_of_its_float64_copy(rule: str, layout: str) -> None:
    base = updates("normal", 9, 1200, seed=2)
    if layout == "fortran":
        x32 = np.asfortranarray(base)
    elif layout == "strided":
        x32 = base[:, ::2]
    else:
        x32 = base[::-1, ::-1]
    x64 = np.ascontiguousarray(x32, dtype=np.float64)
    for kwargs in cases(rule, 9):
        assert same_bits(
            robust.aggregate(rule, x32, **kwargs), robust.aggregate(rule, x64, **kwargs)
        )


@pytest.mark.parametrize("rule", RULES)
def test_float32_input_is_left_alone_and_the_output_is_new(rule: str) -> None:
    x32 = updates("normal", 9, 50, seed=3)
    before = x32.copy()
    out = robust.aggregate(rule, x32, num_byzantine=max_f(rule, 9))
    np.testing.assert_array_equal(x32, before)
    assert out.dtype == np.float64
    assert not np.shares_memory(out, x32)


# --- permutation invariance -------------------------------------------------------------------


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("n", [8, 11])
def test_float32_permutation_invariance(rule: str, kind: str, n: int) -> None:
    """Selections and sorts do not depend on the row order; a permuted float32 input
    still gives the bits of its float64 copy. Multi-Krum adds the selected rows in rank
    order, so without weights its average keeps its bits too."""
    rng = np.random.default_rng(4)
    x32 = updates(kind, n, 700, seed=5)
    f = max_f(rule, n)
    base = robust.aggregate(rule, x32, num_byzantine=f)
    for _ in range(3):
        perm = rng.permutation(n)
        permuted = robust.aggregate(rule, x32[perm], num_byzantine=f)
        assert same_bits(
            permuted, robust.aggregate(rule, x32[perm].astype(np.float64), num_byzantine=f)
        )
        assert same_bits(permuted, base), (rule, perm)


# --- the float64 reference formulas -----------------------------------------------------------


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10, 20, 21])
@pytest.mark.parametrize("d", [1, 2, 3, 25, 26, 27, 52, 53, 500])
def test_median_and_trimmed_mean_are_the_sorted_float64_formulas(n: int, d: int) -> None:
    """Float32 input and its float64 copy, and float64 values no float32 can hold (sums of
    a few float32 values are exact in float64, so only those show the summation order).
    With 2**9-value sort blocks, d = 26 (n = 20) leaves a last block of one column: it is
    merged into the previous one, because numpy sums a lone column pairwise."""
    x32 = updates("normal", n, d, seed=n * 1000 + d)
    fine = x32 + np.random.default_rng(d).standard_normal((n, d)) * 1e-3
    for x, x64 in ((x32, x32.astype(np.float64)), (fine, fine)):
        ordered = np.sort(x64, axis=0)
        if n % 2:
            median = ordered[n // 2].copy()
        else:
            median = (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        assert same_bits(robust.aggregate("median", x), median + 0.0)  # no -0.0
        for k in range((n + 1) // 2):
            expected = x64.mean(axis=0) if k == 0 else ordered[k : n - k].mean(axis=0)
            assert same_bits(robust.aggregate("trimmed_mean", x, num_byzantine=k), expected), k


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("n", [5, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zeros_come_out_as_before(n: int, dtype: type) -> None:
    """Which of -0.0 and +0.0 a sort puts in the middle depends on the algorithm (not the
    same for float32 and float64), so a zero median is always +0.0; the trimmed mean
    sums from numpy's +0.0, so it never gives -0.0 either, as the formula did."""
    rng = np.random.default_rng(n)
    x = rng.choice(np.array([-0.0, 0.0, -1.0, 1.0]), size=(n, 300)).astype(dtype)
    x64 = x.astype(np.float64)
    ordered = np.sort(x64, axis=0)
    median = ordered[n // 2].copy() if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    assert np.signbit(median[median == 0]).any()  # the data exercise -0.0
    assert same_bits(robust.aggregate("median", x), median + 0.0)
    for k in range((n + 1) // 2):
        expected = x64.mean(axis=0) if k == 0 else ordered[k : n - k].mean(axis=0)
        assert same_bits(robust.aggregate("trimmed_mean", x, num_byzantine=k), expected)


def reference_sq_distances(x: Array, step: int) -> Array:
    """The float64 distances from the whole matrix, centred at once on its
    lexicographically smallest row, with the blocks' Gram products summed per lane
    (block i in lane i % _LANES) and the lanes added."""
    n, d = x.shape
    mu = x[min(range(n), key=lambda i: (tuple(x[i]), i))]
    lanes = [np.zeros((n, n)) for _ in range(_distances._LANES)]
    for i, start in enumerate(range(0, d, step)):
        block = x[:, start : start + step] - mu[start : start + step]
        lanes[i % len(lanes)] += block @ block.T
    gram = lanes[0]
    for lane in lanes[1:]:
        gram = gram + lane
    sq = np.diagonal(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    upper = np.triu(dist, 1)
    result: Array = upper + upper.T
    return result


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("kind", ["normal", "offset", "ties"])
@pytest.mark.parametrize(("n", "d"), [(3, 1), (5, 410), (5, 411), (7, 2000), (16, 129)])
def test_pairwise_distances_are_the_reference_formula(kind: str, n: int, d: int) -> None:
    x32 = updates(kind, n, d, seed=6)
    x64 = x32.astype(np.float64)
    step = _distances._step(n)
    expected = reference_sq_distances(x64, step)
    assert same_bits(_distances.pairwise_sq_distances(x64), expected)
    assert same_bits(_distances.pairwise_sq_distances(x32), expected)
    fine = x64 + np.random.default_rng(d).standard_normal((n, d)) * 1e-3
    assert same_bits(_distances.pairwise_sq_distances(fine), reference_sq_distances(fine, step))


def reference_weighted_sum(x: Array, rows: Array, c: Array) -> Array:
    """Left to right over the rows: ``c * (x[r0] + x[r1] + ...)`` for equal coefficients,
    else ``c0 * x[r0] + c1 * x[r1] + ...``."""
    if c.min() == c.max():
        total = x[rows[0]].copy()
        for row in rows[1:]:
            total = total + x[row]
        result: Array = total * c[0]
        return result
    result = c[0] * x[rows[0]]
    for row, weight in zip(rows[1:], c[1:], strict=True):
        result = result + weight * x[row]
    return result


@pytest.mark.parametrize("blocks", ["small", "real"])
@pytest.mark.parametrize("weights", ["equal", "random"])
@pytest.mark.parametrize(("n", "d"), [(5, 1), (5, 1023), (9, 1024), (9, 3000), (30, 70000)])
def test_weighted_sum_of_float32_is_that_of_its_float64_copy(
    n: int, d: int, weights: str, blocks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the given rows, in the given order; the same bits for float32, its float64
    copy and any layout, with blocks of 2**16 columns or (``small``) of 512."""
    if blocks == "small":
        monkeypatch.setattr(_distances, "_BLOCK_ELEMENTS", 1 << 11)
    x32 = updates("normal", n, d, seed=7)
    x64 = x32.astype(np.float64)
    rng = np.random.default_rng(8)
    rows = rng.permutation(n)[: max(1, n - 2)]
    c = np.full(len(rows), 1.0 / len(rows)) if weights == "equal" else rng.random(len(rows))
    out64 = _distances.weighted_sum(x64, rows, c)
    assert same_bits(out64, reference_weighted_sum(x64, rows, c))
    assert same_bits(_distances.weighted_sum(x32, rows, c), out64)
    assert same_bits(_distances.weighted_sum(np.asfortranarray(x64), rows, c), out64)
    assert same_bits(_distances.weighted_sum(x32[::-1][::-1], list(rows), c), out64)


# --- bad values -------------------------------------------------------------------------------


def with_bad_value(value: float, row: int, col: int, n: int = 9, d: int = 1200) -> Array:
    """Float64 updates with one bad value (convert to float32 for a float32 case)."""
    x = updates("normal", n, d, seed=9).astype(np.float64)
    x[row, col] = value
    return x


def expected_message(x: Array) -> str:
    with pytest.raises(PayloadError) as info:
        robust.aggregate("mean", x.astype(np.float64))  # validated up front, as before
    return str(info.value)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("row", "col"), [(0, 0), (4, 700), (8, 1199)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_values_are_rejected_with_the_same_message(
    rule: str, value: float, row: int, col: int, dtype: type
) -> None:
    x = with_bad_value(value, row, col).astype(dtype)
    message = expected_message(x)
    assert f"updates row {row} has a NaN or infinite value" == message
    with pytest.raises(PayloadError) as info:
        robust.aggregate(rule, x, num_byzantine=max_f(rule, 9))
    assert str(info.value) == message
    assert info.value.exit_code == 5


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("rule", RULES)
def test_huge_float64_values_are_rejected_with_the_same_message(rule: str) -> None:
    x = with_bad_value(1e300, 3, 1000)
    with pytest.raises(PayloadError, match=r"^updates row 3 has a value of magnitude 1e\+300"):
        robust.aggregate(rule, x, num_byzantine=max_f(rule, 9))


BAD_CONFIG: list[tuple[str, dict[str, Any]]] = [
    ("krum", {"num_byzantine": -1}),
    ("krum", {"num_byzantine": 4}),
    ("krum", {"num_byzantine": 0, "weights": np.arange(9.0)}),
    ("krum", {"num_byzantine": 0, "weights": -np.ones(9)}),
    ("multi_krum", {"num_byzantine": 1, "m": 9}),
    ("bulyan", {"num_byzantine": 2}),
    ("bulyan", {"num_byzantine": 0, "weights": np.arange(9.0)}),
    ("median", {"num_byzantine": 5}),
    ("median", {"num_byzantine": 0, "weights": np.arange(9.0)}),
    ("trimmed_mean", {"num_byzantine": 2, "beta": 0.1}),
    ("trimmed_mean", {"num_byzantine": 0, "beta": 0.7}),
    ("trimmed_mean", {"num_byzantine": 0, "weights": np.arange(9.0)}),
]


@pytest.mark.parametrize(("rule", "kwargs"), BAD_CONFIG)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_bad_value_is_reported_before_a_bad_configuration(
    rule: str, kwargs: dict[str, Any], dtype: type
) -> None:
    """As when the values were checked first: bad updates win over any other error."""
    x = with_bad_value(np.nan, 6, 5).astype(dtype)
    with pytest.raises(PayloadError, match="^updates row 6 has a NaN or infinite value$"):
        robust.aggregate(rule, x, **kwargs)
    with pytest.raises((ConfigError, PayloadError)) as info:
        robust.aggregate(rule, np.nan_to_num(x), **kwargs)
    assert "updates row" not in str(info.value)


def test_the_centre_row_is_chosen_by_value_across_comparison_blocks() -> None:
    """Rows equal over more than one comparison block still order by their first
    difference, and equal rows keep the first; any permutation picks the same values."""
    rng = np.random.default_rng(3)
    x = np.tile(rng.standard_normal(3000, dtype=np.float32), (5, 1))
    x[0, 2500] += 1  # differs after two full blocks of 1024
    x[2, 1500] -= 1  # the smallest: lower at 1500
    x[3, 1500] -= 1
    x[3, 2900] += 1  # equal to row 2 until 2900, then larger
    assert _distances._smallest_row(x) == 2
    for order in ([4, 3, 2, 1, 0], [2, 0, 1, 3, 4], [1, 3, 4, 0, 2]):
        assert np.array_equal(x[order][_distances._smallest_row(x[order])], x[2])
    assert _distances._smallest_row(np.zeros((3, 5), dtype=np.float32)) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_value_in_any_row_fails_the_distances(dtype: type, bad: float) -> None:
    for row in range(4):  # row 0 is also where the centre row ends up for some of these
        x = np.ones((4, 700), dtype=dtype) * np.arange(4, dtype=dtype)[:, None]
        x[row, 350] = bad
        with pytest.raises(PayloadError, match=f"updates row {row} has a NaN or infinite"):
            _distances.pairwise_sq_distances(x)
