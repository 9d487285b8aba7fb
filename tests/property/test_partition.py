"""Property tests of the partitioners: disjoint, complete, non-empty, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.errors import ConfigError
from fedshield.training.partition import dirichlet, iid, partition, shards

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """Random labels, a feasible partition count and a seed."""
    num_classes = draw(st.integers(1, 10))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, num_classes, n)
    num_partitions = draw(st.integers(1, min(n, 20)))
    return labels, num_partitions, seed


def assert_valid(parts: list[np.ndarray], n: int, num_partitions: int) -> None:
    assert len(parts) == num_partitions
    assert all(p.dtype == np.int64 and p.ndim == 1 and p.size > 0 for p in parts)
    everything = np.concatenate(parts)
    assert everything.size == n, "partitions overlap or miss samples"
    assert np.array_equal(np.sort(everything), np.arange(n))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@SETTINGS
@given(labelled())
def test_iid_is_a_deterministic_cover(case: tuple[np.ndarray, int, int]) -> None:
    labels, k, seed = case
    parts = iid(labels.size, num_partitions=k, seed=seed)
    assert_valid(parts, labels.size, k)
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
    assert same(parts, iid(labels.size, num_partitions=k, seed=seed))


@SETTINGS
@given(labelled(), st.floats(0.01, 100.0), st.integers(1, 3))
def test_dirichlet_is_a_deterministic_cover(
    case: tuple[np.ndarray, int, int], alpha: float, min_size: int
) -> None:
    labels, k, seed = case
    if labels.size < k * min_size:
        with pytest.raises(ConfigError, match="at least"):
            dirichlet(labels, num_partitions=k, alpha=alpha, seed=seed, min_size=min_size)
        return
    parts = dirichlet(labels, num_partitions=k, alpha=alpha, seed=seed, min_size=min_size)
    assert_valid(parts, labels.size, k)
    assert min(p.size for p in parts) >= min_size
    again = dirichlet(labels, num_partitions=k, alpha=alpha, seed=seed, min_size=min_size)
    assert same(parts, again)


@SETTINGS
@given(labelled(), st.integers(1, 4))
def test_shards_is_a_deterministic_cover(
    case: tuple[np.ndarray, int, int], shards_per_partition: int
) -> None:
    labels, k, seed = case
    if labels.size < k * shards_per_partition:
        with pytest.raises(ConfigError):
            shards(labels, num_partitions=k, shards_per_partition=shards_per_partition, seed=seed)
        return
    parts = shards(labels, num_partitions=k, shards_per_partition=shards_per_partition, seed=seed)
    assert_valid(parts, labels.size, k)
    again = shards(labels, num_partitions=k, shards_per_partition=shards_per_partition, seed=seed)
    assert same(parts, again)


@SETTINGS
@given(st.sampled_from(["iid", "dirichlet", "shards"]), st.integers(0, 2**31))
def test_different_seeds_give_different_partitions(name: str, seed: int) -> None:
    # 200 samples in 4 parts: a collision between two seeds has negligible probability.
    labels = np.arange(200) % 5
    a = partition(name, labels, num_partitions=4, seed=seed)  # type: ignore[arg-type]
    b = partition(name, labels, num_partitions=4, seed=seed + 1)  # type: ignore[arg-type]
    assert not same(a, b)


def mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    entropies = []
    for p in parts:
        counts = np.bincount(labels[p], minlength=10).astype(float)
        q = counts[counts > 0] / counts.sum()
        entropies.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(entropies))


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    labels = np.arange(2000) % 10
    skewed = dirichlet(labels, num_partitions=10, alpha=0.1, seed=0)
    mixed = dirichlet(labels, num_partitions=10, alpha=100.0, seed=0)
    assert mean_label_entropy(skewed, labels) < 0.6 * mean_label_entropy(mixed, labels)
    assert mean_label_entropy(mixed, labels) > 0.95 * np.log(10)


def test_two_shards_per_partition_give_at_most_a_few_classes() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = shards(labels, num_partitions=10, shards_per_partition=2, seed=3)
    assert all(np.unique(labels[p]).size <= 2 for p in parts)


def test_dirichlet_fix_up_meets_min_size() -> None:
    # One class and tiny alpha: nearly every draw leaves partitions empty, so the
    # deterministic fix-up has to run.
    labels = np.zeros(50, dtype=np.int64)
    parts = dirichlet(labels, num_partitions=10, alpha=0.001, seed=1, min_size=5)
    assert_valid(parts, 50, 10)
    assert all(p.size == 5 for p in parts)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid(3, num_partitions=4, seed=0), "4 partitions .* from 3 samples"),
        (lambda: iid(3, num_partitions=0, seed=0), "num_partitions must be >= 1, got 0"),
        (lambda: iid(3, num_partitions=1, seed=-1), "seed must be"),
        (
            lambda: dirichlet(np.zeros(5, dtype=int), num_partitions=2, alpha=0.0, seed=0),
            "alpha must be > 0, got 0.0",
        ),
        (
            lambda: shards(
                np.zeros(5, dtype=int), num_partitions=3, shards_per_partition=2, seed=0
            ),
            "from 5 samples",
        ),
        (
            lambda: partition("bogus", np.zeros(5, dtype=int), num_partitions=1, seed=0),  # type: ignore[arg-type]
            "unknown partitioner 'bogus'",
        ),
        (
            lambda: dirichlet(np.zeros(5), num_partitions=1, alpha=1.0, seed=0),
            "integer class ids",
        ),
    ],
)
def test_impossible_requests_are_config_errors(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()  # type: ignore[operator]
