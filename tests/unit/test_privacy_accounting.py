"""Specification of privacy accounting and calibration (fedshield.privacy.accounting).

Known answers come from published or library sources named at each test. The PLD
accountant runs on a 1e-3 grid (``PLD_VALUE_DISCRETIZATION``): pessimistic rounding, so
its epsilons sit slightly above dp-accounting's 1e-4 default, within 1e-3 here.
"""

from __future__ import annotations

import json
import math
from typing import Any

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield import privacy
from fedshield.errors import ConfigError
from fedshield.privacy import calibrate, dp_event, epsilon, epsilon_of

TFF_Q = 120 / 3383  # TFF DP tutorial: 120 of 3383 EMNIST clients per round


def test_the_public_surface() -> None:
    assert set(privacy.__all__) == {
        "ACCOUNTANTS",
        "AdaptiveClipping",
        "DistributedEncoding",
        "ParticipantDP",
        "Rotation",
        "central_mean",
        "clip_update",
        "local_update",
        "LedgerEntry",
        "PLD_VALUE_DISCRETIZATION",
        "PrivacyBudget",
        "SAMPLINGS",
        "Accountant",
        "Sampling",
        "calibrate",
        "calibrate_event",
        "compose",
        "dp_event",
        "epsilon",
        "epsilon_of",
    }
    assert privacy.ACCOUNTANTS == ("pld", "rdp")
    assert privacy.SAMPLINGS == ("poisson", "fixed")


# -- known answers ----------------------------------------------------------------------------


def test_tff_tutorial_known_answer_with_rdp() -> None:
    # TensorFlow Federated, "Differential Privacy in TFF" tutorial: 120 of 3383 clients per
    # round, noise multiplier 1.2, 100 rounds, delta 1e-5 -> epsilon ~= 1.99 with the RDP
    # accountant and Poisson-style sampling. dp-accounting 0.6.0 gives 1.98611.
    eps = epsilon(
        noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=100, delta=1e-5, accountant="rdp"
    )
    assert eps == pytest.approx(1.99, abs=0.02)


def test_tff_setting_with_pld_is_tighter_than_rdp() -> None:
    # Regression value, not a published one: dp-accounting 0.6.0 gives 1.70747 at its
    # default 1e-4 grid and 1.70754 at ours. PLD is tight; RDP is an upper bound above it.
    eps = epsilon(noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=100, delta=1e-5)
    assert eps == pytest.approx(1.7075, abs=1e-3)
    assert eps < 1.99


def test_pld_matches_dp_accountings_own_subsampled_gaussian_vector() -> None:
    # dp_accounting/pld/pld_privacy_accountant_test.py, test_self_composed_subsampled_gaussian:
    # PoissonSampled(0.2, Gaussian(0.5)) composed 3 times is (1, 0.15594)-DP.
    eps = epsilon(noise_multiplier=0.5, sampling_rate=0.2, rounds=3, delta=0.15594)
    assert eps == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize(("noise_multiplier", "rounds"), [(math.sqrt(3), 3), (1.0, 1), (2.0, 9)])
def test_full_participation_matches_the_analytic_gaussian_mechanism(
    noise_multiplier: float, rounds: int
) -> None:
    # k rounds of a Gaussian with multiplier z are exactly one Gaussian with z / sqrt(k), whose
    # tight epsilon is the analytic Gaussian mechanism (Balle and Wang 2018, Theorem 8;
    # dp_accounting.get_epsilon_gaussian). dp-accounting's own test_gaussian_basic pins
    # sqrt(3) x 3 at (1, 0.126936).
    delta = 0.126936 if rounds == 3 else 1e-5
    exact = dp_accounting.get_epsilon_gaussian(noise_multiplier / math.sqrt(rounds), delta)
    eps = epsilon(noise_multiplier=noise_multiplier, sampling_rate=1.0, rounds=rounds, delta=delta)
    assert exact <= eps <= exact + 2e-3
    if rounds == 3:
        assert eps == pytest.approx(1.0, abs=1e-3)


def test_rdp_is_an_upper_bound_of_pld() -> None:
    for z, q, rounds in [(1.0, 0.01, 500), (0.8, 0.05, 50), (3.0, 1.0, 20)]:
        kwargs: dict[str, Any] = {"noise_multiplier": z, "sampling_rate": q, "rounds": rounds}
        pld = epsilon(**kwargs, delta=1e-6)
        rdp = epsilon(**kwargs, delta=1e-6, accountant="rdp")
        assert 0 < pld <= rdp


# -- events ---------------------------------------------------------------------------------


def test_events_say_what_happened_and_replay_to_the_same_epsilon() -> None:
    event = dp_event(noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=100)
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(TFF_Q, dp_accounting.GaussianDpEvent(1.2)), 100
    )
    for accountant in ("pld", "rdp"):
        direct = epsilon(
            noise_multiplier=1.2,
            sampling_rate=TFF_Q,
            rounds=100,
            delta=1e-5,
            accountant=accountant,
        )
        assert epsilon_of(event, delta=1e-5, accountant=accountant) == direct
    # Everyone every round is a plain Gaussian; fixed-size sampling records m of n.
    full = dp_event(noise_multiplier=2.0, sampling_rate=1.0, rounds=5)
    assert full.event == dp_accounting.GaussianDpEvent(2.0)
    fixed = dp_event(noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=100, sampling="fixed")
    assert fixed.event == dp_accounting.SampledWithoutReplacementDpEvent(
        3383, 120, dp_accounting.GaussianDpEvent(1.2)
    )


def test_a_ledger_of_rounds_composes_like_one_event() -> None:
    rounds = [dp_event(noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=1) for _ in range(4)]
    composed = dp_accounting.ComposedDpEvent(rounds)
    at_once = epsilon(noise_multiplier=1.2, sampling_rate=TFF_Q, rounds=4, delta=1e-5)
    assert epsilon_of(composed, delta=1e-5) == pytest.approx(at_once, rel=1e-6)


def test_no_noise_is_not_private() -> None:
    event = dp_event(noise_multiplier=0, sampling_rate=0.1, rounds=3)
    assert event.event == dp_accounting.NonPrivateDpEvent()
    for accountant in ("pld", "rdp"):
        assert epsilon_of(event, delta=1e-5, accountant=accountant) == math.inf
    fixed = epsilon(
        noise_multiplier=0.0,
        sampling_rate=0.1,
        rounds=3,
        delta=1e-5,
        accountant="rdp",
        sampling="fixed",
    )
    assert fixed == math.inf


def test_fixed_size_sampling_needs_rdp_and_costs_more_than_poisson() -> None:
    kwargs: dict[str, Any] = {
        "noise_multiplier": 1.2,
        "sampling_rate": TFF_Q,
        "rounds": 100,
        "delta": 1e-5,
    }
    with pytest.raises(ConfigError, match="PLD accountant does not support fixed") as caught:
        epsilon(**kwargs, sampling="fixed")
    assert "accountant='rdp'" in caught.value.hint
    fixed = epsilon(**kwargs, sampling="fixed", accountant="rdp")
    # Replace-one neighbours (sensitivity 2C, here with the same multiplier) cost more.
    assert fixed > epsilon(**kwargs, accountant="rdp")


def test_an_event_mixing_sampling_schemes_is_refused() -> None:
    mixed = dp_accounting.ComposedDpEvent(
        [
            dp_event(noise_multiplier=1.0, sampling_rate=0.1, rounds=1),
            dp_event(noise_multiplier=1.0, sampling_rate=0.1, rounds=1, sampling="fixed"),
        ]
    )
    with pytest.raises(ConfigError, match="does not support the event"):
        epsilon_of(mixed, delta=1e-5, accountant="rdp")
    with pytest.raises(ConfigError, match="DpEvent"):
        epsilon_of({"rounds": 3}, delta=1e-5)


# -- calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_epsilon", "target_delta", "sampling_rate", "rounds", "accountant", "sampling"),
    [
        (1.0, 1e-5, TFF_Q, 100, "pld", "poisson"),
        (0.5, 1e-6, 0.01, 1000, "pld", "poisson"),
        (2.0, 1e-5, TFF_Q, 100, "rdp", "poisson"),
        (8.0, 1e-5, 1.0, 10, "rdp", "poisson"),
        # Fixed-size sampling at rate 1 (replace-one neighbours, no subsampling). A
        # subsampled fixed-size calibration works too (q = 0.02, 200 rounds, epsilon 3 ->
        # z = 1.0966, 0.9999 of the target) but dp-accounting's without-replacement bound
        # costs ~0.5 s per evaluation, ~6 s per calibration: too slow for a unit test.
        (3.0, 1e-5, 1.0, 50, "rdp", "fixed"),
    ],
)
def test_calibrate_round_trips_to_just_under_the_target(
    target_epsilon: float,
    target_delta: float,
    sampling_rate: float,
    rounds: int,
    accountant: Any,
    sampling: Any,
) -> None:
    z = calibrate(
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        sampling_rate=sampling_rate,
        rounds=rounds,
        accountant=accountant,
        sampling=sampling,
    )
    spent = epsilon(
        noise_multiplier=z,
        sampling_rate=sampling_rate,
        rounds=rounds,
        delta=target_delta,
        accountant=accountant,
        sampling=sampling,
    )
    assert 0.99 * target_epsilon <= spent <= target_epsilon


def test_calibrate_refuses_fixed_sampling_with_pld() -> None:
    with pytest.raises(ConfigError, match="fixed-size sampling"):
        calibrate(
            target_epsilon=1.0, target_delta=1e-5, sampling_rate=0.1, rounds=10, sampling="fixed"
        )


# -- properties -----------------------------------------------------------------------------

_rates = st.floats(min_value=1e-3, max_value=0.1)
_accountants = st.sampled_from(["pld", "rdp"])


@settings(max_examples=8, deadline=None)
@given(
    z=st.floats(min_value=0.5, max_value=5.0),
    factor=st.floats(min_value=1.05, max_value=3.0),
    q=_rates,
    rounds=st.integers(min_value=1, max_value=200),
    accountant=_accountants,
)
def test_more_noise_spends_less(
    z: float, factor: float, q: float, rounds: int, accountant: Any
) -> None:
    common: dict[str, Any] = {
        "sampling_rate": q,
        "rounds": rounds,
        "delta": 1e-5,
        "accountant": accountant,
    }
    assert epsilon(noise_multiplier=z * factor, **common) <= epsilon(noise_multiplier=z, **common)


@settings(max_examples=8, deadline=None)
@given(
    z=st.floats(min_value=0.5, max_value=5.0),
    q=_rates,
    rounds=st.integers(min_value=1, max_value=200),
    more=st.integers(min_value=1, max_value=200),
    accountant=_accountants,
)
def test_more_rounds_spend_more(
    z: float, q: float, rounds: int, more: int, accountant: Any
) -> None:
    common: dict[str, Any] = {
        "noise_multiplier": z,
        "sampling_rate": q,
        "delta": 1e-5,
        "accountant": accountant,
    }
    assert epsilon(rounds=rounds, **common) <= epsilon(rounds=rounds + more, **common)


# -- validation -----------------------------------------------------------------------------

_GOOD: dict[str, Any] = {
    "noise_multiplier": 1.0,
    "sampling_rate": 0.1,
    "rounds": 10,
    "delta": 1e-5,
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("delta", 0.0, "delta must be in \\(0, 1\\)"),
        ("delta", 1.0, "delta must be in \\(0, 1\\)"),
        ("delta", -1e-5, "delta must be in \\(0, 1\\)"),
        ("delta", math.nan, "delta must be finite"),
        ("delta", "1e-5", "delta must be a number"),
        ("sampling_rate", 0.0, "sampling_rate must be in \\(0, 1\\]"),
        ("sampling_rate", 1.5, "sampling_rate must be in \\(0, 1\\]"),
        ("sampling_rate", math.inf, "sampling_rate must be finite"),
        ("sampling_rate", True, "sampling_rate must be a number"),
        ("rounds", 0, "rounds must be >= 1"),
        ("rounds", -3, "rounds must be >= 1"),
        ("rounds", 2.5, "rounds must be a whole number"),
        ("rounds", 10.0, "rounds must be a whole number"),
        ("rounds", True, "rounds must be a whole number"),
        ("noise_multiplier", -0.1, "noise_multiplier must be >= 0"),
        ("noise_multiplier", math.nan, "noise_multiplier must be finite"),
        ("noise_multiplier", math.inf, "noise_multiplier must be finite"),
        ("noise_multiplier", False, "noise_multiplier must be a number"),
        ("noise_multiplier", None, "noise_multiplier must be a number"),
        ("accountant", "moments", "accountant must be one of 'pld', 'rdp'"),
        ("accountant", None, "accountant must be one of"),
        ("sampling", "uniform", "sampling must be one of 'poisson', 'fixed'"),
    ],
)
def test_epsilon_rejects_bad_inputs(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        epsilon(**{**_GOOD, key: value})
    assert caught.value.hint and caught.value.exit_code == 2


_CAL: dict[str, Any] = {
    "target_epsilon": 2.0,
    "target_delta": 1e-5,
    "sampling_rate": 0.1,
    "rounds": 10,
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("target_epsilon", 0.0, "target_epsilon must be > 0"),
        ("target_epsilon", -1.0, "target_epsilon must be > 0"),
        ("target_epsilon", math.inf, "target_epsilon must be finite"),
        ("target_epsilon", True, "target_epsilon must be a number"),
        ("target_delta", 1.0, "target_delta must be in \\(0, 1\\)"),
        ("target_delta", math.nan, "target_delta must be finite"),
        ("sampling_rate", 0.0, "sampling_rate must be in \\(0, 1\\]"),
        ("rounds", 0, "rounds must be >= 1"),
        ("rounds", 1.5, "rounds must be a whole number"),
        ("accountant", "gdp", "accountant must be one of"),
        ("sampling", "shuffle", "sampling must be one of"),
    ],
)
def test_calibrate_rejects_bad_inputs(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        calibrate(**{**_CAL, key: value})
    assert caught.value.hint


# -- command line ---------------------------------------------------------------------------


def test_the_cli_calibrates_and_reports_both_accountants() -> None:
    from typer.testing import CliRunner

    from fedshield.cli import app

    args = ["privacy", "calibrate", "--epsilon", "2", "--delta", "1e-5", "--rounds", "100"]
    result = CliRunner().invoke(app, [*args, "--sampling-rate", str(TFF_Q), "--json", "-"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["accountant"] == "pld" and summary["sampling"] == "poisson"
    z = summary["noise_multiplier"]
    assert z == pytest.approx(1.11, abs=0.01)
    assert 0.99 * 2 <= summary["epsilon"]["pld"] <= 2
    assert summary["epsilon"]["rdp"] > summary["epsilon"]["pld"]


def test_the_cli_turns_a_bad_budget_into_a_config_error() -> None:
    from typer.testing import CliRunner

    from fedshield.cli import app

    result = CliRunner().invoke(
        app,
        ["privacy", "calibrate", "--epsilon", "1", "--delta", "2", "--rounds", "10"]
        + ["--sampling-rate", "0.1"],
    )
    # (main() turns this ConfigError into its message, a hint and exit code 2.)
    assert isinstance(result.exception, ConfigError)
    assert "target_delta must be in (0, 1)" in result.exception.message
