"""The coordinator's privacy events: every DP mechanism run, per round, in the database.

A coordinator running participant-level DP-FedAvg (McMahan et al. 2018; central, local
or distributed noise) spends privacy on behalf of every participant each round. It
records that round as one :class:`PrivacyEventRecord` with scope
:data:`PARTICIPANTS` *before* the noised model is released, in one committed
transaction, so the ledger survives a restart. A sample-level event a site reported
(DP-SGD at that site) may be recorded too, with the site's name as the scope and the
epsilon the site reported beside it; the site's own ledger file stays the authority.

Epsilon is never stored as a running total (only ``epsilon_reported``, a site's claim
kept for comparison): :func:`cumulative_epsilon` and :func:`participant_epsilon`
recompute it from the events with :mod:`fedshield.privacy.accounting`, after each
round. Events with the same noise multiplier, sampling rate and sampling scheme are
merged into one self-composition first (composition commutes), so ``R`` identical
rounds cost exactly ``epsilon(rounds=R)``.

What misuse breaks: recording an event after the model it accounts for was released
(a crash in between forgets that privacy), or recording the nominal noise multiplier
instead of the effective one (with distributed noise, dropped participants' noise is
missing) overstates the protection.
"""

from __future__ import annotations

import builtins
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

import dp_accounting
from sqlalchemy import select

from fedshield.errors import ConfigError, StorageError
from fedshield.privacy.accounting import (
    ACCOUNTANTS,
    SAMPLINGS,
    Accountant,
    Sampling,
    compose,
    dp_event,
    epsilon_of,
)
from fedshield.storage.db import Database, PrivacyEventRow, check_utc

__all__ = [
    "MECHANISMS",
    "PARTICIPANTS",
    "PrivacyEventRecord",
    "PrivacyEvents",
    "cumulative_epsilon",
    "participant_epsilon",
]

PARTICIPANTS: Final = "participants"
"""The scope of the coordinator's participant-level (DP-FedAvg) events."""

MECHANISMS: Final = (
    "dp-fedavg-central",
    "dp-fedavg-local",
    "dp-fedavg-distributed",
    "dp-sgd",
)
"""Known mechanisms: the three DP-FedAvg noise placements (scope :data:`PARTICIPANTS`)
and a site's DP-SGD (scope: the site's name). A new mechanism is a new name here."""

_VERSION: Final = 1


def _whole(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {number!r}")
    return number


def _positive(name: str, value: Any) -> float:
    number = _finite(name, value)
    if number <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {number!r}")
    return number


def _optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else _positive(name, value)


def _effective_sampling(sampling: str, sampling_rate: float) -> Sampling:
    # Everyone every round is the plain Gaussian, whatever the scheme: the rule of
    # fedshield.privacy.dpfedavg.round_event, so the same rounds cost the same here.
    return "poisson" if sampling_rate >= 1.0 else sampling  # type: ignore[return-value]


@dataclass(frozen=True)
class PrivacyEventRecord:
    """One privacy event, copied out of the database.

    Attributes
    ----------
    id : int
        Increasing row id: the order the events were recorded in.
    round, attempt : int
        The fit round and its attempt (>= 1 each).
    scope : str
        :data:`PARTICIPANTS` for the coordinator's participant-level events, else the
        name of the site whose sample-level event this is.
    mechanism : str
        One of :data:`MECHANISMS`.
    noise_multiplier : float
        The effective noise multiplier (> 0): noise std over the sensitivity.
    sampling_rate : float
        In ``(0, 1]``: participants (or a site's records) sampled per composition.
    sampling : {"poisson", "fixed"}
        The sampling scheme (see :mod:`fedshield.privacy.accounting`).
    steps : int
        Compositions in this event (>= 1): 1 per round for DP-FedAvg, the DP-SGD steps
        for a site's round.
    clip_norm : float or None
        The L2 clip norm, if known.
    participants : int or None
        Participants whose updates the round combined, if known.
    delta : float
        The delta epsilon is computed at, in ``(0, 1)``.
    accountant : {"pld", "rdp"}
        The accountant epsilon is computed with.
    target_epsilon : float or None
        The budget the events are spent against, if one was set.
    epsilon_reported : float or None
        For a site's event, the epsilon the site reported after it (never used for
        accounting; kept to compare).
    recorded_at : datetime
        When it was recorded (aware UTC).
    """

    VERSION: ClassVar[int] = _VERSION

    id: int
    round: int
    attempt: int
    scope: str
    mechanism: str
    noise_multiplier: float
    sampling_rate: float
    sampling: Sampling
    steps: int
    clip_norm: float | None
    participants: int | None
    delta: float
    accountant: Accountant
    target_epsilon: float | None
    epsilon_reported: float | None
    recorded_at: datetime

    @classmethod
    def from_row(cls, row: PrivacyEventRow) -> PrivacyEventRecord:
        """Copy a database row into a value object.

        Raises
        ------
        StorageError
            If the row was written by a newer format version.
        """
        if row.version != _VERSION:
            raise StorageError(
                f"privacy event {row.id} has format version {row.version}; this fedshield "
                f"reads version {_VERSION}",
                hint="Upgrade fedshield to read this database.",
            )
        return cls(
            id=row.id,
            round=row.round,
            attempt=row.attempt,
            scope=row.scope,
            mechanism=row.mechanism,
            noise_multiplier=row.noise_multiplier,
            sampling_rate=row.sampling_rate,
            sampling=row.sampling,  # type: ignore[arg-type]  # checked when recorded
            steps=row.steps,
            clip_norm=row.clip_norm,
            participants=row.participants,
            delta=row.delta,
            accountant=row.accountant,  # type: ignore[arg-type]
            target_epsilon=row.target_epsilon,
            epsilon_reported=row.epsilon_reported,
            recorded_at=row.recorded_at,
        )

    def event(self) -> dp_accounting.DpEvent:
        """Return this event for the accountant: ``steps`` sampled Gaussian mechanisms."""
        return dp_event(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            rounds=self.steps,
            sampling=_effective_sampling(self.sampling, self.sampling_rate),
        )


class PrivacyEvents:
    """The durable list of privacy events.

    Parameters
    ----------
    db
        The database to write to.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        *,
        round: int,
        attempt: int,
        scope: str,
        mechanism: str,
        noise_multiplier: float,
        sampling_rate: float,
        sampling: Sampling,
        steps: int,
        clip_norm: float | None,
        participants: int | None,
        delta: float,
        accountant: Accountant,
        now: datetime,
        target_epsilon: float | None = None,
        epsilon_reported: float | None = None,
    ) -> PrivacyEventRecord:
        """Record one privacy event, committed before this returns.

        Call it before the output the event accounts for is released.

        Parameters
        ----------
        round, attempt
            The fit round and attempt (>= 1 each).
        scope
            :data:`PARTICIPANTS` for a participant-level DP-FedAvg event, or a site's name
            for a sample-level event it reported.
        mechanism
            One of :data:`MECHANISMS`: a ``dp-fedavg-*`` one for scope
            :data:`PARTICIPANTS`, ``"dp-sgd"`` for a site.
        noise_multiplier
            The effective noise multiplier (> 0; zero noise is no DP and no event).
        sampling_rate
            In ``(0, 1]``.
        sampling
            ``"poisson"`` or ``"fixed"``; fixed-size sampling of a part needs
            ``accountant="rdp"``.
        steps
            Compositions in this event (>= 1): 1 for a DP-FedAvg round.
        clip_norm
            The L2 clip norm (> 0), or ``None``.
        participants
            How many participants the round combined (>= 1), or ``None``.
        delta
            In ``(0, 1)``.
        accountant
            ``"pld"`` or ``"rdp"``.
        now
            The time of recording (timezone-aware).
        target_epsilon
            The budget (> 0) these events are spent against, or ``None``.
        epsilon_reported
            A site's reported epsilon after the round (>= 0), or ``None``.

        Returns
        -------
        PrivacyEventRecord
            The stored event.

        Raises
        ------
        ConfigError
            If a value is out of range, names an unknown mechanism, sampling scheme or
            accountant, or the mechanism does not belong to the scope.
        StorageError
            If an event for this scope, round and attempt is already recorded, or the
            database fails.
        ValueError
            If ``now`` is naive.
        """
        now = check_utc(now)
        round = _whole("round", round)
        attempt = _whole("attempt", attempt)
        if not isinstance(scope, str) or not scope.strip() or scope != scope.strip():
            raise ConfigError(
                f"scope must be {PARTICIPANTS!r} or a site name without surrounding "
                f"spaces, got {scope!r}"
            )
        if len(scope) > 256:
            raise ConfigError(f"scope must be at most 256 characters, got {len(scope)}")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if scope == PARTICIPANTS and not mechanism.startswith("dp-fedavg-"):
            raise ConfigError(
                f"a participant-level event (scope {PARTICIPANTS!r}) needs a dp-fedavg-* "
                f"mechanism, got {mechanism!r}"
            )
        if scope != PARTICIPANTS and mechanism != "dp-sgd":
            raise ConfigError(
                f"a site's event (scope {scope!r}) is sample-level 'dp-sgd', got {mechanism!r}",
                hint=f"Participant-level DP-FedAvg events use scope {PARTICIPANTS!r}.",
            )
        sigma = _positive("noise_multiplier", noise_multiplier)
        q = _positive("sampling_rate", sampling_rate)
        if q > 1.0:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {q!r}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        steps = _whole("steps", steps)
        clip = _optional_positive("clip_norm", clip_norm)
        count = None if participants is None else _whole("participants", participants)
        d = _finite("delta", delta)
        if not 0.0 < d < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {d!r}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if accountant == "pld" and _effective_sampling(sampling, q) == "fixed":
            raise ConfigError(
                "the PLD accountant does not support fixed-size sampling without replacement",
                hint="Record accountant='rdp' for fixed-size sampling, or sample Poisson.",
            )
        budget = _optional_positive("target_epsilon", target_epsilon)
        reported = None
        if epsilon_reported is not None:
            reported = _finite("epsilon_reported", epsilon_reported)
            if reported < 0.0:
                raise ConfigError(f"epsilon_reported must be >= 0, got {reported!r}")
        row = PrivacyEventRow(
            version=_VERSION,
            round=round,
            attempt=attempt,
            scope=scope,
            mechanism=mechanism,
            noise_multiplier=sigma,
            sampling_rate=q,
            sampling=sampling,
            steps=steps,
            clip_norm=clip,
            participants=count,
            delta=d,
            accountant=accountant,
            target_epsilon=budget,
            epsilon_reported=reported,
            recorded_at=now,
        )
        with self._db.transaction(write=True) as session:
            existing = session.scalar(
                select(PrivacyEventRow.id).where(
                    PrivacyEventRow.scope == scope,
                    PrivacyEventRow.round == round,
                    PrivacyEventRow.attempt == attempt,
                )
            )
            if existing is not None:
                raise StorageError(
                    f"a privacy event for scope {scope!r}, round {round} attempt {attempt} "
                    f"is already recorded (event {existing})",
                    hint="Record each round attempt once; a retried round is a new attempt.",
                )
            session.add(row)
            session.flush()
            return PrivacyEventRecord.from_row(row)

    def list(self, scope: str | None = None) -> builtins.list[PrivacyEventRecord]:
        """Return the events in the order they were recorded; with ``scope``, only its own."""
        with self._db.transaction() as session:
            query = select(PrivacyEventRow).order_by(PrivacyEventRow.id)
            if scope is not None:
                query = query.where(PrivacyEventRow.scope == scope)
            return [PrivacyEventRecord.from_row(r) for r in session.scalars(query)]


def _merged(records: Sequence[PrivacyEventRecord]) -> dp_accounting.DpEvent:
    """Compose ``records``, equal settings merged into one self-composition."""
    steps: dict[tuple[float, float, Sampling], int] = {}
    for record in records:
        key = (
            float(record.noise_multiplier),
            float(record.sampling_rate),
            _effective_sampling(record.sampling, record.sampling_rate),
        )
        steps[key] = steps.get(key, 0) + record.steps
    return compose(
        [
            dp_event(noise_multiplier=z, sampling_rate=q, rounds=n, sampling=mode)
            for (z, q, mode), n in steps.items()
        ]
    )


def cumulative_epsilon(
    records: Sequence[PrivacyEventRecord], *, delta: float, accountant: Accountant
) -> builtins.list[tuple[int, float]]:
    """Return ``(round, epsilon)`` after each round of ``records``, recomputed from them.

    Parameters
    ----------
    records
        Events of one scope, in the order they were recorded (as :meth:`PrivacyEvents.list`
        returns them). Every attempt counts: a retried round's earlier attempt spent
        privacy too.
    delta
        The delta every epsilon is computed at, in ``(0, 1)``.
    accountant
        ``"pld"`` or ``"rdp"``.

    Returns
    -------
    list of (int, float)
        By increasing round: the epsilon of every event recorded up to and including
        that round's last one. Never a sum of per-round epsilons.

    Raises
    ------
    ConfigError
        If ``records`` mix scopes, or the accountant cannot compose them (fixed-size
        and Poisson sampling mixed, say).
    """
    ordered = builtins.list(records)
    scopes = {r.scope for r in ordered}
    if len(scopes) > 1:
        raise ConfigError(f"records of one scope only, got {sorted(scopes)}")
    last: dict[int, int] = {}
    for index, record in enumerate(ordered):
        last[record.round] = index
    return [
        (
            number,
            epsilon_of(_merged(ordered[: last[number] + 1]), delta=delta, accountant=accountant),
        )
        for number in sorted(last)
    ]


def participant_epsilon(
    records: Sequence[PrivacyEventRecord], *, delta: float, accountant: Accountant
) -> builtins.list[tuple[int, float]]:
    """Return ``(round, epsilon)`` of participant-level DP after each round.

    Only the events of scope :data:`PARTICIPANTS` count (the coordinator's DP-FedAvg);
    see :func:`cumulative_epsilon`.
    """
    mine = [r for r in records if r.scope == PARTICIPANTS]
    return cumulative_epsilon(mine, delta=delta, accountant=accountant)
