"""Participant-level DP-FedAvg: clipping, and the noise in the aggregate for each placement.

The empirical noise tests feed all-zero updates, so whatever the aggregate holds is
noise; its standard deviation must match the configured value within 5%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.errors import ConfigError
from fedshield.privacy import accounting
from fedshield.privacy.clipping import AdaptiveClipping, clip_update, update_noise_multiplier
from fedshield.privacy.distributed import (
    DistributedEncoding,
    Rotation,
    discrete_gaussian,
    hadamard,
)
from fedshield.privacy.dpfedavg import central_mean, local_update, round_event, sum_sensitivity
from fedshield.secagg.driver import SecAggConfig, run_in_memory
from fedshield.secagg.randomness import deterministic_random

D = 20_000


def _close(measured: float, expected: float) -> None:
    assert abs(measured / expected - 1.0) < 0.05, (measured, expected)


# -- clipping ---------------------------------------------------------------------------


def test_clip_scales_long_updates_and_keeps_short_ones() -> None:
    long, inside = clip_update(np.array([3.0, 4.0]), clip_norm=1.0)
    assert not inside
    np.testing.assert_allclose(long, [0.6, 0.8])
    short, inside = clip_update(np.array([0.3, 0.4]), clip_norm=1.0)
    assert inside
    np.testing.assert_array_equal(short, [0.3, 0.4])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_clip_norm_must_be_positive(bad: float) -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_update(np.ones(3), clip_norm=bad)


def test_adaptive_clip_moves_toward_the_quantile() -> None:
    rule = AdaptiveClipping(target_quantile=0.5, clip_learning_rate=0.2, count_noise_std=1.0)
    # Everyone within the bound: the bound shrinks by exp(-0.2 * 0.5).
    shrunk = rule.next_clip_norm(1.0, within_count=10, count_noise=0.0, participants=10)
    assert shrunk == pytest.approx(math.exp(-0.1))
    grown = rule.next_clip_norm(1.0, within_count=0, count_noise=0.0, participants=10)
    assert grown == pytest.approx(math.exp(0.1))


def test_update_noise_multiplier_inverts_andrew_theorem_1() -> None:
    z, sigma_b = 1.0, 2.0
    z_update = update_noise_multiplier(z, count_noise_std=sigma_b)
    assert (z_update**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    assert z_update > z
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        update_noise_multiplier(1.0, count_noise_std=0.5)


def test_sensitivity_follows_the_neighbouring_relation() -> None:
    assert sum_sensitivity(1.5, sampling="poisson", sampling_rate=0.1) == 1.5
    assert sum_sensitivity(1.5, sampling="fixed", sampling_rate=0.1) == 3.0
    assert sum_sensitivity(1.5, sampling="fixed", sampling_rate=1.0) == 1.5


def test_round_event_composes_to_epsilon() -> None:
    event = round_event(noise_multiplier=1.1, sampling_rate=0.2, sampling="poisson")
    ten = accounting.compose([event] * 10)
    assert accounting.epsilon_of(ten, delta=1e-5) == pytest.approx(
        accounting.epsilon(noise_multiplier=1.1, sampling_rate=0.2, rounds=10, delta=1e-5),
        rel=1e-6,
    )


# -- empirical noise: central, local, distributed ------------------------------------------


@pytest.mark.parametrize("n", [5, 20])
def test_central_noise_std_is_z_c_over_n(n: int) -> None:
    z, c = 1.3, 0.7
    result = central_mean(
        np.zeros((n, D)),
        clip_norm=c,
        noise_multiplier=z,
        sensitivity=sum_sensitivity(c, sampling="poisson", sampling_rate=1.0),
        denominator=n,
        rng=deterministic_random(b"central"),
    )
    assert result.within == n
    _close(float(result.mean.std()), z * c / n)
    assert abs(float(result.mean.mean())) < 5 * z * c / n / math.sqrt(D)


def test_central_noise_in_adaptive_rounds_uses_the_round_clip() -> None:
    """Three adaptive rounds: each round's noise is z_update * C_r / n, with C_r its own."""
    n, z, sigma_b = 10, 1.0, 10 / 20 * 4
    rule = AdaptiveClipping(target_quantile=0.5, clip_learning_rate=0.2, count_noise_std=sigma_b)
    z_update = update_noise_multiplier(z, count_noise_std=sigma_b)
    rng = deterministic_random(b"adaptive")
    clip = 1.0
    for r in range(3):
        result = central_mean(
            np.zeros((n, D)),
            clip_norm=clip,
            noise_multiplier=z_update,
            sensitivity=clip,
            denominator=n,
            rng=rng,
        )
        _close(float(result.mean.std()), z_update * clip / n)
        following = rule.next_clip_norm(
            clip, within_count=result.within, count_noise=0.1 * r, participants=n
        )
        assert following < clip  # all-zero updates are within: the bound shrinks
        clip = following


def test_local_noise_std_in_the_mean_is_2zc_over_sqrt_n() -> None:
    n, z, c = 16, 0.8, 0.5
    rng = deterministic_random(b"local")
    total = np.zeros(D)
    for _ in range(n):
        noised, inside = local_update(np.zeros(D), clip_norm=c, noise_multiplier=z, rng=rng)
        assert inside
        total += noised
    mean = total / n
    _close(float(mean.std()), 2 * z * c * math.sqrt(n) / n)


def _distributed(n: int, z: float, c: float, *, seed: bytes) -> DistributedEncoding:
    return DistributedEncoding(
        clip_norm=c,
        noise_multiplier=z,
        sensitivity_factor=1.0,
        participants=n,
        rotation=Rotation(seed=seed, dim=D),
    )


@pytest.mark.parametrize("survivors", [10, 7])
def test_distributed_noise_std_is_z_c_over_n(survivors: int) -> None:
    n, z, c = 10, 1.2, 0.9
    encoding = _distributed(n, z, c, seed=bytes(range(32)))
    rng = deterministic_random(b"distributed")
    total = np.zeros(encoding.rotation.padded, dtype=np.int64)
    for _ in range(survivors):
        integers, inside = encoding.encode(np.zeros(D), rng=rng)
        assert inside
        total += integers  # SecAgg's sum mod 2**64, read as signed: the same integers
    mean = encoding.decode(total, denominator=n)
    assert mean.shape == (D,)
    effective = encoding.effective_noise_multiplier(survivors)
    assert effective == pytest.approx(z * math.sqrt(survivors / n))
    # The rounding slack makes the sensitivity a hair above C.
    assert encoding.sensitivity == pytest.approx(c, rel=1e-6)
    _close(float(mean.std()), effective * c / n)


def test_distributed_sum_decodes_the_clipped_mean() -> None:
    n, z, c = 4, 0.5, 1.0
    rng = deterministic_random(b"mean")
    updates = np.random.default_rng(0).normal(size=(n, D)) * 0.001
    encoding = _distributed(n, z, c, seed=b"\x07" * 32)
    total = np.zeros(encoding.rotation.padded, dtype=np.int64)
    for update in updates:
        total += encoding.encode(update, rng=rng)[0]
    mean = encoding.decode(total, denominator=n)
    expected = np.mean([clip_update(u, clip_norm=c)[0] for u in updates], axis=0)
    noise_std = z * c / n
    assert float(np.std(mean - expected)) == pytest.approx(noise_std, rel=0.05)


def test_distributed_refuses_too_little_noise_per_site() -> None:
    with pytest.raises(ConfigError, match="noise"):
        DistributedEncoding(
            clip_norm=1.0,
            noise_multiplier=1e-13,
            sensitivity_factor=1.0,
            participants=100,
            rotation=Rotation(seed=bytes(32), dim=10),
        )


# -- rotation and the discrete Gaussian ------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    dim=st.integers(min_value=1, max_value=300),
    seed=st.binary(min_size=32, max_size=32),
    data=st.data(),
)
def test_rotation_is_an_isometry_and_invertible(dim: int, seed: bytes, data: st.DataObject) -> None:
    values = data.draw(
        st.lists(
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=dim, max_size=dim
        )
    )
    x = np.array(values)
    rotation = Rotation(seed=seed, dim=dim)
    y = rotation.forward(x)
    assert y.shape == (rotation.padded,)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-9, abs=1e-6)
    np.testing.assert_allclose(rotation.inverse(y), x, rtol=1e-9, atol=1e-6)


def test_hadamard_matches_the_dense_matrix() -> None:
    size = 8
    dense = np.array([[1.0]])
    while dense.shape[0] < size:
        dense = np.block([[dense, dense], [dense, -dense]])
    x = np.arange(size, dtype=np.float64)
    np.testing.assert_allclose(hadamard(x), dense @ x / math.sqrt(size))


def test_rotation_flattens_a_spike() -> None:
    x = np.zeros(1024)
    x[3] = 10.0
    y = Rotation(seed=b"\x01" * 32, dim=1024).forward(x)
    assert np.max(np.abs(y)) == pytest.approx(10.0 / 32.0)


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0, 1e9])
def test_discrete_gaussian_moments(sigma: float) -> None:
    draws = discrete_gaussian(deterministic_random(b"dg"), 200_000, sigma=sigma)
    assert draws.dtype == np.int64
    assert abs(float(draws.mean())) < 5 * sigma / math.sqrt(draws.size) + 1e-9
    # The discrete Gaussian's variance is slightly below sigma^2 for small sigma.
    assert float(draws.std()) == pytest.approx(sigma, rel=0.02 if sigma > 2 else 0.1)


def test_discrete_gaussian_pmf_at_small_sigma() -> None:
    sigma = 1.0
    draws = discrete_gaussian(deterministic_random(b"pmf"), 400_000, sigma=sigma)
    support = np.arange(-6, 7)
    weights = np.exp(-(support**2) / (2 * sigma**2))
    expected = weights / weights.sum()
    observed = np.array([(draws == k).mean() for k in support])
    np.testing.assert_allclose(observed, expected, atol=0.003)


@pytest.mark.parametrize("drop", [set(), {1, 4}])
def test_distributed_noise_through_secagg_matches_z_c_over_n(drop: set[int]) -> None:
    """The real SecAgg+ protocol in memory sums the signed integers exactly (mod 2**64)."""
    n, z, c, dim = 8, 1.5, 0.4, 4096
    encoding = DistributedEncoding(
        clip_norm=c,
        noise_multiplier=z,
        sensitivity_factor=1.0,
        participants=n,
        rotation=Rotation(seed=b"\x05" * 32, dim=dim),
    )
    rng = deterministic_random(b"secagg-dp")
    rows = np.stack([encoding.encode(np.zeros(dim), rng=rng)[0] for _ in range(n)])
    params = SecAggConfig(federation="dp", round=1, clip_range=1.0, ring_bits=64)
    result = run_in_memory(rows, params, integers=True, drop={"masked": drop}, seed=7)
    m = len(result.survivors)
    assert m == n - len(drop)
    assert result.signed_sum is not None
    survivors = [int(s[1:]) for s in result.survivors]
    np.testing.assert_array_equal(result.signed_sum, rows[survivors].sum(axis=0))
    mean = encoding.decode(result.signed_sum, denominator=m)
    effective = encoding.effective_noise_multiplier(m)
    _close(float(mean.std()), effective * c / m)
