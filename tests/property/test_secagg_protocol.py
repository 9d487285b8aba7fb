"""Property tests of a whole SecAgg+ round: exact sum of the survivors, or a clean failure.

For random n, d, graph degree k, threshold t, weights and dropouts at every stage, the
outcome is predicted from the design (docs/secagg.md) by set arithmetic alone: who can
continue at each stage (>= t live neighbours), and whether every needed secret keeps t
share holders. Then the round either succeeds with exactly the predicted survivors and
the weighted mean of their clipped inputs (within one quantization step), or raises
RoundFailedError with no output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedshield.errors import RoundFailedError
from fedshield.secagg.driver import STAGES, InMemoryResult, SecAggConfig, run_in_memory
from fedshield.secagg.messages import Setup

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLIP = 1.0


def predict(setup: Setup, dropped: Mapping[str, set[int]]) -> frozenset[str] | None:
    """Return U3 if the round must succeed, None if it must fail (from the design)."""
    graph = setup.neighbour_map()
    t = setup.t
    ids = setup.participants
    gone = {stage: {ids[i] for i in dropped.get(stage, set())} for stage in STAGES}

    def survive(previous: set[str], stage: str, live: set[str]) -> set[str]:
        return {i for i in previous - gone[stage] if len(graph[i] & live) >= t}

    u1 = set(ids) - gone["advertise"]
    if len(u1) < t + 1:
        return None
    u2 = survive(u1, "share", u1)
    if len(u2) < t + 1:
        return None
    u3 = survive(u2, "masked", u2)
    if len(u3) < t + 1:
        return None
    u4 = survive(u3, "consistency", u3)
    if len(u4) < t + 1:
        return None
    u5 = survive(u4, "unmask", u4)
    needed = u3 | {j for j in u2 - u3 if graph[j] & u3}
    if any(len(graph[j] & u5) < t for j in needed):
        return None
    return frozenset(u3)


@st.composite
def rounds(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(3, 60))
    d = draw(st.integers(1, 64))
    if draw(st.booleans()):
        k = None  # choose_k's default, usually the complete graph for small n
        degree = None
    else:
        degree = draw(st.integers(2, n - 1))
        if degree < n - 1 and (n * degree) % 2:
            degree += 1  # a k-regular graph needs n * k even
        k = degree
    threshold = None
    if degree is not None and draw(st.booleans()):
        threshold = draw(st.integers(degree // 2 + 1, degree))
    # Some stages lose a few participants (mostly recoverable) or up to half (mostly not).
    most = draw(st.sampled_from([1, 2, max(1, n // 10), n // 3, n // 2]))
    stages = draw(st.sets(st.sampled_from(STAGES)))
    drop = {stage: draw(st.sets(st.integers(0, n - 1), max_size=most)) for stage in stages}
    max_weight = draw(st.sampled_from([1, 7, 100]))
    return {
        "n": n,
        "d": d,
        "k": k,
        "threshold": threshold,
        "drop": drop,
        "ring_bits": draw(st.sampled_from([32, 64])),
        "max_weight": max_weight,
        "weights": draw(st.lists(st.integers(1, max_weight), min_size=n, max_size=n)),
        "data_seed": draw(st.integers(0, 2**32 - 1)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@SETTINGS
@given(rounds())
def test_round_gives_weighted_mean_of_survivors_or_fails(case: dict[str, Any]) -> None:
    n, d = case["n"], case["d"]
    updates = np.random.default_rng(case["data_seed"]).normal(scale=0.8, size=(n, d))
    config = SecAggConfig(
        federation="fed-prop",
        round=3,
        clip_range=CLIP,
        ring_bits=case["ring_bits"],
        max_weight=case["max_weight"],
        k=case["k"],
        threshold=case["threshold"],
        # An explicit small k may admit no threshold secure against 10% corruption.
        corruption=0.1 if case["k"] is None or case["threshold"] is not None else 0.0,
    )
    weights, drop = case["weights"], case["drop"]
    try:
        result: InMemoryResult | None = run_in_memory(
            updates, config, weights=weights, drop=drop, seed=case["seed"]
        )
    except RoundFailedError:
        result = None
    # The setup depends only on n, d, config and seed; a round without drops shows it.
    setup = (
        result.setup
        if result is not None
        else run_in_memory(updates, config, weights=weights, seed=case["seed"]).setup
    )
    expected = predict(setup, drop)
    event("failed" if expected is None else "succeeded")
    event("complete graph" if setup.k >= n - 1 else "sparse graph")
    if expected is not None and len(expected) < n:
        event("succeeded with dropouts")
    if expected is None:
        assert result is None, "the round should have failed"
        return
    assert result is not None, "the round should have succeeded"
    assert set(result.survivors) == expected
    rows = [setup.participants.index(i) for i in result.survivors]
    w = np.asarray(weights, dtype=np.float64)[rows]
    clipped = np.clip(updates[rows], -CLIP, CLIP)
    want = (w[:, None] * clipped).sum(axis=0) / w.sum()
    step = 2 * CLIP / (2**setup.value_bits - 1)
    assert result.aggregate.dtype == np.float64 and result.aggregate.shape == (d,)
    np.testing.assert_allclose(result.aggregate, want, rtol=0, atol=step * 1.001 + 1e-12)


@settings(SETTINGS, max_examples=15)
@given(st.integers(4, 30), st.integers(0, 2**32 - 1))
def test_too_many_unmask_dropouts_fail_without_output(n: int, seed: int) -> None:
    """When all but t - 1 participants drop before unmasking, nothing is output."""
    updates = np.random.default_rng(seed).normal(size=(n, 3))
    config = SecAggConfig(federation="fed-prop", round=1, clip_range=CLIP)
    t = run_in_memory(updates, config, seed=seed).setup.t
    with pytest.raises(RoundFailedError):
        run_in_memory(updates, config, seed=seed, drop={"unmask": set(range(t - 1, n))})
