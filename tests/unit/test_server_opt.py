"""Specification of fedshield.training.server_opt: the weighted mean and the FedAvg step."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.errors import ConfigError, PayloadError
from fedshield.training.server_opt import FedAvg, make_server_optimizer, weighted_mean

# Derandomized: the same examples on every run, so a failure is reproducible anywhere.
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)


def manual_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean written out as a float64 loop: sum_i w_i x_i / sum_i w_i."""
    total = np.zeros(updates.shape[1], dtype=np.float64)
    for row, weight in zip(updates, weights, strict=True):
        total += float(weight) * row.astype(np.float64)
    return total / float(np.sum(weights, dtype=np.float64))


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_weighted_mean_equals_a_manual_float64_computation(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((n, d)).astype(np.float32)
    weights = rng.integers(0, 1000, n).astype(np.float64)
    weights[rng.integers(n)] += 1  # at least one participant reported examples
    mean = weighted_mean(updates, weights=weights)
    assert mean.dtype == np.float64
    assert mean.shape == (d,)
    np.testing.assert_allclose(mean, manual_mean(updates, weights), rtol=1e-12, atol=1e-12)


def test_weighted_mean_known_answer() -> None:
    updates = np.array([[1.0, 0.0], [4.0, 3.0]], dtype=np.float32)
    mean = weighted_mean(updates, weights=np.array([1, 2]))
    np.testing.assert_allclose(mean, [3.0, 2.0], rtol=0, atol=1e-15)


def test_equal_weights_give_the_plain_mean() -> None:
    updates = np.arange(12, dtype=np.float64).reshape(3, 4)
    mean = weighted_mean(updates, weights=np.full(3, 7.0))
    np.testing.assert_allclose(mean, updates.mean(axis=0), rtol=1e-15)


def test_zero_weight_rows_do_not_count() -> None:
    updates = np.array([[1.0, 1.0], [1e6, -1e6]])
    np.testing.assert_array_equal(weighted_mean(updates, weights=np.array([5, 0])), [1.0, 1.0])


@SETTINGS
@given(st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_weighted_mean_is_invariant_under_permutation(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((n, 5))
    weights = rng.integers(1, 50, n).astype(np.float64)
    order = rng.permutation(n)
    np.testing.assert_allclose(
        weighted_mean(updates[order], weights=weights[order]),
        weighted_mean(updates, weights=weights),
        rtol=1e-12,
        atol=1e-15,
    )


def test_all_zero_weights_are_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="sum to 0"):
        weighted_mean(np.ones((3, 2)), weights=np.zeros(3))


@pytest.mark.parametrize(
    "weights", [np.array([1.0, -1.0]), np.array([1.0, np.nan]), np.array([np.inf, 1.0])]
)
def test_negative_or_non_finite_weights_are_a_payload_error(weights: np.ndarray) -> None:
    with pytest.raises(PayloadError, match="finite and >= 0"):
        weighted_mean(np.ones((2, 3)), weights=weights)


def test_shape_mismatches_are_payload_errors() -> None:
    with pytest.raises(PayloadError, match="2-D"):
        weighted_mean(np.ones(3), weights=np.ones(3))
    with pytest.raises(PayloadError, match=r"\(2,\)"):
        weighted_mean(np.ones((3, 4)), weights=np.ones(2))


# ------------------------------------------------------------------------------ FedAvg


def test_fedavg_step_is_global_plus_lr_times_mean() -> None:
    rng = np.random.default_rng(5)
    global_vector = rng.standard_normal(10)
    mean_update = rng.standard_normal(10)
    np.testing.assert_allclose(
        FedAvg().step(global_vector, mean_update), global_vector + mean_update, rtol=1e-15
    )
    np.testing.assert_allclose(
        FedAvg(learning_rate=0.5).step(global_vector, mean_update),
        global_vector + 0.5 * mean_update,
        rtol=1e-15,
    )


def test_fedavg_step_does_not_modify_its_inputs() -> None:
    global_vector = np.zeros(4)
    mean_update = np.ones(4)
    FedAvg(learning_rate=2.0).step(global_vector, mean_update)
    np.testing.assert_array_equal(global_vector, np.zeros(4))
    np.testing.assert_array_equal(mean_update, np.ones(4))


def test_fedavg_full_round_from_updates() -> None:
    # Two sites: 30 examples moved +1, 10 examples moved -1; FedAvg lands at +0.5.
    global_vector = np.full(3, 2.0)
    updates = np.stack([np.ones(3), -np.ones(3)])
    mean = weighted_mean(updates, weights=np.array([30, 10]))
    np.testing.assert_allclose(FedAvg().step(global_vector, mean), np.full(3, 2.5))


def test_fedavg_step_rejects_a_shape_mismatch() -> None:
    with pytest.raises(PayloadError, match=r"\(3,\).*\(4,\)"):
        FedAvg().step(np.zeros(4), np.zeros(3))


@pytest.mark.parametrize("learning_rate", [0.0, -1.0, float("nan")])
def test_fedavg_rejects_a_non_positive_learning_rate(learning_rate: float) -> None:
    with pytest.raises(ConfigError, match="server.learning_rate must be > 0"):
        FedAvg(learning_rate=learning_rate)


def test_make_server_optimizer() -> None:
    optimizer = make_server_optimizer("fedavg", learning_rate=0.25)
    assert isinstance(optimizer, FedAvg)
    assert optimizer.learning_rate == 0.25
    with pytest.raises(ConfigError, match="'fedadam'"):
        make_server_optimizer("fedadam", learning_rate=1.0)
