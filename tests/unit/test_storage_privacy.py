"""Specification of fedshield.storage.privacy: the coordinator's privacy events."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import fedshield.storage as storage
from fedshield.errors import ConfigError, StorageError
from fedshield.privacy import compose, dp_event, epsilon, epsilon_of
from fedshield.storage import Database, PrivacyEventRecord, PrivacyEvents
from fedshield.storage.privacy import (
    MECHANISMS,
    PARTICIPANTS,
    cumulative_epsilon,
    participant_epsilon,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DELTA = 1e-5


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def db(workdir: Path) -> Iterator[Database]:
    database = Database.for_workdir(workdir)
    yield database
    database.close()


def central(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of one participant-level round (overridable)."""
    return {
        "round": 1,
        "attempt": 1,
        "scope": PARTICIPANTS,
        "mechanism": "dp-fedavg-central",
        "noise_multiplier": 1.1,
        "sampling_rate": 0.5,
        "sampling": "poisson",
        "steps": 1,
        "clip_norm": 0.7,
        "participants": 5,
        "delta": DELTA,
        "accountant": "pld",
        "now": NOW,
        **overrides,
    }


def site(name: str = "site-1", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of one site's sample-level (DP-SGD) round."""
    values: dict[str, Any] = {
        "scope": name,
        "mechanism": "dp-sgd",
        "noise_multiplier": 1.0,
        "sampling_rate": 0.1,
        "steps": 10,
        "clip_norm": 1.0,
        "participants": None,
        "target_epsilon": 8.0,
        "epsilon_reported": 2.5,
    }
    return central(**{**values, **overrides})


# -- surface ---------------------------------------------------------------------------------


def test_the_storage_package_exports_the_privacy_events() -> None:
    for name in ("PrivacyEventRecord", "PrivacyEventRow", "PrivacyEvents"):
        assert name in storage.__all__
        assert getattr(storage, name).__doc__
    assert set(MECHANISMS) == {
        "dp-fedavg-central",
        "dp-fedavg-local",
        "dp-fedavg-distributed",
        "dp-sgd",
    }


# -- recording -------------------------------------------------------------------------------


def test_record_round_trips_every_field(db: Database) -> None:
    events = PrivacyEvents(db)
    first = events.record(**central(target_epsilon=4.0))
    second = events.record(**site(round=1, now=NOW + timedelta(seconds=1)))
    assert isinstance(first, PrivacyEventRecord)
    assert events.list() == [first, second]
    assert first.id < second.id
    assert (first.round, first.attempt, first.scope, first.mechanism) == (
        1,
        1,
        PARTICIPANTS,
        "dp-fedavg-central",
    )
    assert (first.noise_multiplier, first.sampling_rate, first.sampling, first.steps) == (
        1.1,
        0.5,
        "poisson",
        1,
    )
    assert (first.clip_norm, first.participants, first.delta, first.accountant) == (
        0.7,
        5,
        DELTA,
        "pld",
    )
    assert (first.target_epsilon, first.epsilon_reported) == (4.0, None)
    assert first.recorded_at == NOW and first.recorded_at.tzinfo is not None
    assert (second.scope, second.mechanism, second.epsilon_reported) == ("site-1", "dp-sgd", 2.5)
    assert second.clip_norm == 1.0 and second.participants is None
    assert events.list(PARTICIPANTS) == [first]
    assert events.list("site-1") == [second]
    assert events.list("site-2") == []


def test_floats_are_stored_exactly(db: Database) -> None:
    sigma, q, delta = 1.0 / 3.0, 0.1 + 0.2, 1e-5 / 3.0
    stored = PrivacyEvents(db).record(
        **central(noise_multiplier=sigma, sampling_rate=q, delta=delta)
    )
    [back] = PrivacyEvents(db).list()
    assert back == stored
    assert (back.noise_multiplier, back.sampling_rate, back.delta) == (sigma, q, delta)


def test_the_time_is_stored_in_utc(db: Database) -> None:
    paris = timezone(timedelta(hours=1))
    PrivacyEvents(db).record(**central(now=datetime(2025, 3, 1, 13, 0, tzinfo=paris)))
    assert PrivacyEvents(db).list()[0].recorded_at == NOW
    with pytest.raises(ValueError, match="timezone-aware"):
        PrivacyEvents(db).record(**central(attempt=2, now=datetime(2025, 3, 1)))


def test_the_events_survive_a_restart(workdir: Path) -> None:
    db = Database.for_workdir(workdir)
    events = PrivacyEvents(db)
    recorded = [events.record(**central(round=r, now=NOW + timedelta(minutes=r))) for r in (1, 2)]
    recorded.append(events.record(**site(round=2)))
    db.close()

    reopened = Database.for_workdir(workdir)  # a coordinator restart
    try:
        assert PrivacyEvents(reopened).list() == recorded
        after = PrivacyEvents(reopened).record(**central(round=3))
        assert after.id > recorded[-1].id
        assert [e.round for e in PrivacyEvents(reopened).list(PARTICIPANTS)] == [1, 2, 3]
    finally:
        reopened.close()


def test_an_attempt_is_recorded_once_per_scope(db: Database) -> None:
    events = PrivacyEvents(db)
    first = events.record(**central())
    with pytest.raises(StorageError, match=r"round 1 attempt 1 is already recorded") as caught:
        events.record(**central(noise_multiplier=2.0))
    assert caught.value.hint
    assert events.list() == [first]
    # Another attempt of the round, or another scope in the same attempt, is a new event.
    events.record(**central(attempt=2))
    events.record(**site("site-1"))
    assert len(events.list()) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"round": 0}, r"round must be a whole number >= 1, got 0"),
        ({"round": 1.0}, r"round must be a whole number"),
        ({"attempt": True}, r"attempt must be a whole number"),
        ({"scope": ""}, r"scope must be 'participants' or a site name"),
        ({"scope": " site-1"}, r"scope must be"),
        ({"scope": "s" * 257}, r"at most 256 characters"),
        ({"mechanism": "gaussian"}, r"mechanism must be one of"),
        ({"mechanism": "dp-sgd"}, r"needs a dp-fedavg-\* mechanism, got 'dp-sgd'"),
        ({"scope": "site-1"}, r"scope 'site-1'\) is sample-level 'dp-sgd'"),
        ({"noise_multiplier": 0.0}, r"noise_multiplier must be > 0, got 0.0"),
        ({"noise_multiplier": math.nan}, r"noise_multiplier must be finite"),
        ({"noise_multiplier": "1"}, r"noise_multiplier must be a number"),
        ({"sampling_rate": 1.5}, r"sampling_rate must be in \(0, 1\], got 1.5"),
        ({"sampling_rate": 0.0}, r"sampling_rate must be > 0"),
        ({"sampling": "uniform"}, r"sampling must be one of"),
        ({"steps": 0}, r"steps must be a whole number >= 1"),
        ({"clip_norm": -1.0}, r"clip_norm must be > 0, got -1.0"),
        ({"participants": 0}, r"participants must be a whole number >= 1"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\), got 1.0"),
        ({"accountant": "moments"}, r"accountant must be one of"),
        ({"sampling": "fixed"}, r"PLD accountant does not support fixed-size sampling"),
        ({"target_epsilon": 0.0}, r"target_epsilon must be > 0"),
        ({"epsilon_reported": -0.5}, r"epsilon_reported must be >= 0"),
        ({"epsilon_reported": math.inf}, r"epsilon_reported must be finite"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(
    db: Database, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        PrivacyEvents(db).record(**central(**overrides))
    assert PrivacyEvents(db).list() == []


def test_fixed_size_sampling_is_recorded_for_the_rdp_accountant(db: Database) -> None:
    event = PrivacyEvents(db).record(**central(sampling="fixed", accountant="rdp"))
    assert event.sampling == "fixed"
    # Everyone every round is no sampling at all: the PLD accountant takes it.
    PrivacyEvents(db).record(**central(attempt=2, sampling="fixed", sampling_rate=1.0))


def test_a_row_of_a_newer_format_is_refused_when_read(db: Database) -> None:
    PrivacyEvents(db).record(**central())
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE privacy_events SET version = 2"))
    with pytest.raises(StorageError, match="format version 2"):
        PrivacyEvents(db).list()


# -- epsilon, recomputed ---------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_r_identical_rounds_cost_what_epsilon_says(db: Database, accountant: str) -> None:
    events = PrivacyEvents(db)
    for r in range(1, 6):
        events.record(**central(round=r, accountant=accountant))
    curve = participant_epsilon(events.list(), delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    assert [r for r, _ in curve] == [1, 2, 3, 4, 5]
    for r, value in curve:
        assert value == epsilon(
            noise_multiplier=1.1,
            sampling_rate=0.5,
            rounds=r,
            delta=DELTA,
            accountant=accountant,  # type: ignore[arg-type]
        )
    values = [v for _, v in curve]
    assert values == sorted(values)
    # Recomputed by composition, never a sum of per-round epsilons.
    assert values[-1] < 5 * values[0]


def test_only_participant_level_events_count_and_every_attempt_does(db: Database) -> None:
    events = PrivacyEvents(db)
    events.record(**central(round=1))
    events.record(**site(round=1))  # a site's DP-SGD: not participant-level
    events.record(**central(round=2, attempt=1))
    events.record(**central(round=2, attempt=2))  # a retried round released noise twice
    events.record(**central(round=3, noise_multiplier=2.0))
    curve = participant_epsilon(events.list(), delta=DELTA, accountant="pld")
    assert [r for r, _ in curve] == [1, 2, 3]

    def cost(rounds: int) -> float:
        return epsilon(noise_multiplier=1.1, sampling_rate=0.5, rounds=rounds, delta=DELTA)

    assert curve[0][1] == cost(1)
    assert curve[1][1] == cost(3)
    mixed = compose(
        [
            dp_event(noise_multiplier=1.1, sampling_rate=0.5, rounds=3),
            dp_event(noise_multiplier=2.0, sampling_rate=0.5, rounds=1),
        ]
    )
    assert curve[2][1] == epsilon_of(mixed, delta=DELTA)
    assert cost(3) < curve[2][1] < cost(4)


def test_a_site_scope_recomputes_its_dp_sgd_steps(db: Database) -> None:
    events = PrivacyEvents(db)
    for r in (1, 2):
        events.record(**site(round=r))
    curve = cumulative_epsilon(events.list("site-1"), delta=DELTA, accountant="pld")
    assert curve == [
        (r, epsilon(noise_multiplier=1.0, sampling_rate=0.1, rounds=10 * r, delta=DELTA))
        for r in (1, 2)
    ]


def test_cumulative_epsilon_refuses_mixed_scopes_and_is_empty_without_events(db: Database) -> None:
    events = PrivacyEvents(db)
    events.record(**central())
    events.record(**site())
    with pytest.raises(ConfigError, match="one scope only"):
        cumulative_epsilon(events.list(), delta=DELTA, accountant="pld")
    assert participant_epsilon([], delta=DELTA, accountant="pld") == []
    assert participant_epsilon(events.list("site-1"), delta=DELTA, accountant="pld") == []
