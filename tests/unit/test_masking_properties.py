"""Hypothesis properties of the masking transforms."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.masking import (
    bucket_numbers,
    perturb,
    pseudonymize,
    truncate_dates,
    truncate_zips,
)
from fedshield.secagg import deterministic_random

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
values = st.lists(finite, min_size=1, max_size=50)
edges = st.lists(finite, min_size=2, max_size=8, unique=True).map(sorted)
widths = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
keys = st.binary(min_size=32, max_size=32)


@given(values, edges)
def test_edge_buckets_are_idempotent_monotone_and_edges(xs: list[float], es: list[float]) -> None:
    once = bucket_numbers(xs, edges=es)
    assert np.array_equal(bucket_numbers(once, edges=es), once)
    assert set(once.tolist()) <= set(es)
    order = np.argsort(xs, kind="stable")
    assert np.all(np.diff(once[order]) >= 0)  # a <= b  =>  f(a) <= f(b)
    inside = (np.asarray(xs) >= es[0]) & (np.asarray(xs) < es[-1])
    assert np.all(once[inside] <= np.asarray(xs)[inside])  # the lower edge of its bucket


@given(values, widths, st.floats(min_value=-100, max_value=100, allow_nan=False))
def test_width_buckets_are_idempotent_monotone_and_contain_the_value(
    xs: list[float], width: float, origin: float
) -> None:
    once = bucket_numbers(xs, width=width, origin=origin)
    assert np.array_equal(bucket_numbers(once, width=width, origin=origin), once)
    order = np.argsort(xs, kind="stable")
    assert np.all(np.diff(once[order]) >= 0)
    x = np.asarray(xs)
    assert np.all(once <= x)
    assert np.all(x < once + width * (1 + 1e-9) + 1e-9)


@given(values, st.floats(min_value=1e-6, max_value=1e3), st.binary(min_size=1, max_size=16))
def test_uniform_noise_never_exceeds_its_bound(xs: list[float], bound: float, seed: bytes) -> None:
    out = perturb(xs, noise="uniform", bound=bound, rng=deterministic_random(seed))
    # The noise itself is clipped exactly; the sum is off by at most one rounding.
    slack = np.spacing(np.abs(np.asarray(xs)) + bound)
    assert np.all(np.abs(out - np.asarray(xs)) <= bound + slack)


@given(
    values,
    st.floats(min_value=1e-6, max_value=1e3),
    st.floats(min_value=1e-3, max_value=1e4),
    st.binary(min_size=1, max_size=16),
)
def test_laplace_noise_is_clipped_to_its_bound(
    xs: list[float], bound: float, scale: float, seed: bytes
) -> None:
    out = perturb(xs, noise="laplace", bound=bound, scale=scale, rng=deterministic_random(seed))
    slack = np.spacing(np.abs(np.asarray(xs)) + bound)
    assert np.all(np.abs(out - np.asarray(xs)) <= bound + slack)


def test_perturb_is_reproducible_with_a_seeded_source_and_noisy() -> None:
    xs = np.zeros(2000)
    a = perturb(xs, noise="laplace", bound=3.0, scale=1.0, rng=deterministic_random(b"s"))
    b = perturb(xs, noise="laplace", bound=3.0, scale=1.0, rng=deterministic_random(b"s"))
    assert np.array_equal(a, b)
    assert np.all(np.abs(a) <= 3.0) and np.any(np.abs(a) == 3.0)  # heavy tail was clipped
    assert abs(float(np.mean(a))) < 0.15 and 0.8 < float(np.mean(np.abs(a))) < 1.0


@settings(max_examples=50)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=20), keys, keys)
def test_hmac_pseudonyms_are_deterministic_per_key(cells: list[str], k1: bytes, k2: bytes) -> None:
    first = pseudonymize(cells, key=k1)
    assert first == pseudonymize(cells, key=k1)  # the same site links its records
    stripped = [c.strip() for c in cells]
    for c, p in zip(stripped, first, strict=True):
        assert (p == "") == (c == "")
    if k1 != k2:
        second = pseudonymize(cells, key=k2)
        assert all(a != b for a, b in zip(first, second, strict=True) if a)
    # Equal cells get equal pseudonyms, distinct cells distinct ones (128 bits).
    for i, a in enumerate(stripped):
        for j, b in enumerate(stripped):
            assert (first[i] == first[j]) == (a == b)


@given(st.dates(), st.sampled_from(["year", "month"]))
def test_date_truncation_is_idempotent(day: object, to: str) -> None:
    once = truncate_dates([str(day)], to=to)  # type: ignore[arg-type]
    assert truncate_dates(once, to=to) == once  # type: ignore[arg-type]
    assert str(day).startswith(once[0])


@given(st.text(alphabet="0123456789ABCDEFGH -", min_size=1, max_size=12), st.integers(1, 5))
def test_zip_truncation_is_idempotent(code: str, digits: int) -> None:
    if sum(c.isalnum() for c in code) < digits:
        return
    once = truncate_zips([code], digits=digits)
    assert truncate_zips(once, digits=digits) == once and len(once[0]) == digits
