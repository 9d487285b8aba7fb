"""Property tests of the secure aggregation primitives (hypothesis, derandomized)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.errors import ConfigError, ProtocolError
from fedshield.secagg.graph import choose_k, choose_threshold, neighbours
from fedshield.secagg.kdf import canonical, derive
from fedshield.secagg.prg import expand
from fedshield.secagg.quantize import MAX_VALUE_BITS, Quantizer
from fedshield.secagg.randomness import deterministic_random
from fedshield.secagg.shamir import (
    Share,
    _evaluate,
    _interpolate_at_zero,
    _split_int,
    combine,
    split,
)

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
FEW = settings(max_examples=30, deadline=None, derandomize=True)

seeds = st.binary(min_size=1, max_size=16)
ids = st.text(alphabet="ab\x00/é", max_size=4)


# --- prg ------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(min_size=32, max_size=32), st.integers(0, 3000), st.integers(0, 3000))
def test_expand_is_one_keystream_whatever_the_length_or_width(seed: bytes, a: int, b: int) -> None:
    short, long_ = sorted((a, b))
    assert np.array_equal(
        expand(seed, length=short, ring_bits=32), expand(seed, length=long_, ring_bits=32)[:short]
    )
    w32 = expand(seed, length=2 * short, ring_bits=32)
    w64 = expand(seed, length=short, ring_bits=64)
    assert w32.tobytes() == w64.tobytes()


# --- kdf ------------------------------------------------------------------------------

contexts = st.tuples(
    st.sampled_from(["pair", "self", "share", "pai", "rpair"]),
    ids,
    st.integers(0, 2**64 - 1) | st.integers(0, 3),
    st.lists(ids, max_size=3).map(tuple),
)


@SETTINGS
@given(contexts, contexts)
def test_distinct_contexts_derive_distinct_keys(
    one: tuple[str, str, int, tuple[str, ...]], two: tuple[str, str, int, tuple[str, ...]]
) -> None:
    ikm = bytes(range(32))
    key1 = derive(ikm, label=one[0], federation=one[1], round=one[2], parties=one[3])
    key2 = derive(ikm, label=two[0], federation=two[1], round=two[2], parties=two[3])
    assert (key1 == key2) == (one == two)
    assert (canonical(*one[1:]) == canonical(*two[1:])) == (one[1:] == two[1:])


@SETTINGS
@given(st.lists(ids, min_size=1, max_size=6))
def test_canonical_separates_every_split_of_the_same_characters(parts: list[str]) -> None:
    joined = "".join(parts)
    variants = {tuple(parts), (joined,), tuple(parts) + ("",), ("",) + tuple(parts)}
    encodings = {canonical("f", 1, v) for v in variants}
    assert len(encodings) == len(variants)


# --- shamir ---------------------------------------------------------------------------


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, list[int], list[int]]:
    secret = draw(st.binary(min_size=32, max_size=32))
    holders = draw(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=12, unique=True))
    threshold = draw(st.integers(1, len(holders)))
    subset = draw(st.permutations(holders))[:threshold]
    return secret, threshold, holders, subset


@SETTINGS
@given(sharings(), seeds)
def test_any_threshold_subset_reconstructs(
    case: tuple[bytes, int, list[int], list[int]], seed: bytes
) -> None:
    secret, threshold, holders, subset = case
    shares = split(secret, threshold=threshold, holders=holders, rng=deterministic_random(seed))
    wire = {x: Share.from_bytes(shares[x].to_bytes()) for x in subset}
    assert combine(wire, threshold=threshold) == secret
    if threshold > 1:
        with pytest.raises(ProtocolError, match=f"need {threshold}"):
            combine({x: shares[x] for x in subset[:-1]}, threshold=threshold)


@SETTINGS
@given(
    st.sampled_from([5, 7, 11, 13]),
    st.integers(2, 3),
    st.data(),
)
def test_threshold_minus_one_shares_are_independent_of_the_secret(
    prime: int, threshold: int, data: st.DataObject
) -> None:
    """Perfect secrecy, exhaustively in a small field.

    For every secret, the map from the random coefficients to the ``t - 1`` shares is a
    bijection: each share vector arises from exactly one polynomial. So the shares'
    distribution is uniform and the same for every secret.
    """
    holders = data.draw(
        st.lists(
            st.integers(1, prime - 1), min_size=threshold - 1, max_size=threshold - 1, unique=True
        )
    )
    per_secret = []
    for secret in range(prime):
        seen = Counter(
            tuple(_evaluate((secret, *coefficients), x, prime) for x in holders)
            for coefficients in itertools.product(range(prime), repeat=threshold - 1)
        )
        assert set(seen.values()) == {1}
        per_secret.append(frozenset(seen))
    assert len(set(per_secret)) == 1


def test_sampled_shares_have_the_same_distribution_for_different_secrets() -> None:
    """Statistical check of the real sampler in GF(11), t = 3, two of three holders seen."""
    prime, draws = 11, 6000
    histograms = []
    for secret, seed in ((0, b"first"), (7, b"second")):
        rng = deterministic_random(seed)
        counts = Counter(
            tuple(_split_int(secret, threshold=3, holders=[2, 5], rng=rng, prime=prime).values())
            for _ in range(draws)
        )
        histograms.append(np.array([counts[(a, b)] for a in range(prime) for b in range(prime)]))
    expected = draws / prime**2
    for histogram in histograms:  # uniform: chi-square with 120 d.o.f., p ~ 1e-6 cut-off
        assert ((histogram - expected) ** 2 / expected).sum() < 200
    # Two-sample chi-square between the two secrets' share distributions.
    a, b = histograms
    assert (((a - b) ** 2) / np.maximum(a + b, 1)).sum() < 200


@SETTINGS
@given(st.sampled_from([13, 257, 2**61 - 1]), st.data())
def test_interpolation_inverts_evaluation(prime: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, 6))
    coefficients = data.draw(
        st.lists(st.integers(0, prime - 1), min_size=threshold, max_size=threshold)
    )
    xs = data.draw(
        st.lists(
            st.integers(1, min(prime - 1, 1000)),
            min_size=threshold,
            max_size=threshold,
            unique=True,
        )
    )
    points = [(x, _evaluate(coefficients, x, prime)) for x in xs]
    assert _interpolate_at_zero(points, prime) == coefficients[0]


# --- quantize -------------------------------------------------------------------------


@SETTINGS
@given(
    st.floats(-3.0, 3.0),
    st.integers(1, 6),
    st.sampled_from([0.5, 1.0, 2.5]),
    seeds,
)
def test_stochastic_rounding_is_unbiased(
    value: float, value_bits: int, clip_range: float, seed: bytes
) -> None:
    q = Quantizer(clip_range, value_bits, 32)
    draws = 4000
    levels = q.quantize(np.full(draws, value), rng=deterministic_random(seed))
    target = (min(max(value, -clip_range), clip_range) + clip_range) / (2 * clip_range)
    target *= q.levels
    fraction = target - np.floor(target)
    sigma = np.sqrt(fraction * (1 - fraction) / draws)
    assert abs(levels.mean() - target) <= 6 * sigma + 1e-9
    assert levels.min() >= np.floor(target) and levels.max() <= np.ceil(target)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3), st.integers(1, 50)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([32, 64]),
    seeds,
)
def test_decode_of_the_ring_sum_is_the_weighted_mean(
    clients: list[tuple[list[float], int]], ring_bits: int, seed: bytes
) -> None:
    q = Quantizer.for_budget(len(clients), max_weight=50, clip_range=1.0, ring_bits=ring_bits)  # type: ignore[arg-type]
    rng = deterministic_random(seed)
    total = np.zeros(4, dtype=q.dtype)
    for x, w in clients:
        total += q.encode(x, w, rng=rng)
    mean, weight = q.decode(total, sum(w for _, w in clients))
    xs = np.clip(np.array([x for x, _ in clients]), -1.0, 1.0)
    ws = np.array([w for _, w in clients], dtype=np.float64)
    assert weight == int(ws.sum())
    step = 2.0 / q.levels
    np.testing.assert_allclose(mean, ws @ xs / ws.sum(), atol=step + 1e-9)


@SETTINGS
@given(st.integers(1, 2**20), st.integers(1, 2**20), st.sampled_from([32, 64]))
def test_for_budget_is_the_largest_safe_choice(n: int, max_weight: int, ring_bits: int) -> None:
    try:
        q = Quantizer.for_budget(n, max_weight=max_weight, clip_range=1.0, ring_bits=ring_bits)  # type: ignore[arg-type]
    except ConfigError:
        assert n * max_weight * (2**8 - 1) >= 2**ring_bits
        return
    q.check_budget(n, max_weight)
    assert (
        q.value_bits == MAX_VALUE_BITS
        or n * max_weight * (2 ** (q.value_bits + 1) - 1) >= 2**ring_bits
    )


# --- graph ----------------------------------------------------------------------------


@st.composite
def graph_cases(draw: st.DrawFn) -> tuple[list[str], int]:
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, n + 2))
    if k < n - 1 and (n * k) % 2:
        k += 1
    return [f"id-{i}" for i in range(n)], k


@SETTINGS
@given(graph_cases(), seeds)
def test_neighbours_is_a_simple_regular_undirected_graph(
    case: tuple[list[str], int], seed: bytes
) -> None:
    ids, k = case
    graph = neighbours(ids, k=k, rng=deterministic_random(seed))
    assert set(graph) == set(ids)
    degree = min(k, len(ids) - 1)
    for node, adjacent in graph.items():
        assert node not in adjacent
        assert len(adjacent) == degree
        assert all(node in graph[other] for other in adjacent)
    assert graph == neighbours(list(reversed(ids)), k=k, rng=deterministic_random(seed))


@FEW
@given(st.integers(2, 400), st.floats(0.0, 0.3), st.floats(0.0, 0.2))
def test_choose_k_and_threshold_are_consistent(n: int, dropout: float, corruption: float) -> None:
    k = choose_k(n, dropout=dropout, corruption=corruption)
    assert 1 <= k <= n - 1
    assert k == n - 1 or (n * k) % 2 == 0
    try:
        t = choose_threshold(k, dropout=dropout, corruption=corruption, n=n)
    except ConfigError:
        assert k == n - 1  # only the complete-graph fallback can be insecure
        return
    assert k / 2 < t <= k
    graph = neighbours([str(i) for i in range(n)], k=k, rng=deterministic_random(b"x"))
    assert all(len(adjacent) == k for adjacent in graph.values())
