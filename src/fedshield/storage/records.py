"""Operational records: round attempts, participants seen, and a plain event journal.

:class:`RoundLog` keeps one row per round attempt. A coordinator writes the row when the
attempt starts (status ``running``) and finishes it with its outcome; on restart it calls
:meth:`RoundLog.abort_running`, because an attempt that was running when the process died
can never finish, and then resumes after :meth:`RoundLog.last_completed_number`.

:class:`EventLog` is the journal of who did what, and the audit log: each event is
chained and signed in the transaction that writes it (:mod:`fedshield.storage.audit`).
It must never hold payloads, only identifiers, hashes, counts and outcomes; the metadata
guard refuses byte strings, arrays and oversized values.

Every method takes the time as ``now`` (timezone-aware) and opens its own short
transaction, committed before it returns.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select, update

from fedshield.audit.entry import check_metadata
from fedshield.errors import NotFoundError, StorageError
from fedshield.storage.db import (
    Database,
    EventRow,
    ParticipantRow,
    RoundRow,
    check_metrics,
    check_utc,
)
from fedshield.storage.group_commit import PendingEvent, group_commit

__all__ = [
    "EventLog",
    "EventRecord",
    "ParticipantRecord",
    "Participants",
    "RoundLog",
    "RoundRecord",
]

ROUND_KINDS: Final = ("fit", "evaluate")
"""The kinds of round: ``fit`` trains and may commit a model, ``evaluate`` only measures."""

FINAL_STATUSES: Final = ("committed", "failed", "aborted", "done")
"""Statuses a round attempt can finish with (``running`` is the only other one)."""


@dataclass(frozen=True)
class RoundRecord:
    """One round attempt, copied out of the database.

    Attributes
    ----------
    id
        The row id (unique per attempt).
    number
        The round number, from 1.
    attempt
        Which attempt at this round number.
    kind
        ``"fit"`` or ``"evaluate"``.
    status
        ``"running"``, ``"committed"``, ``"failed"``, ``"aborted"`` or ``"done"``.
    base_version
        The model version the participants started from.
    started_at, finished_at
        Aware UTC times; ``finished_at`` is ``None`` while running.
    selected, answered, dropped
        Participant names selected, that answered, and that dropped out.
    reason
        Why it failed or was aborted, if it did; for a committed round, which selected
        participants refused (or were refused) and why, if any did.
    model_version
        The version it committed, if any.
    metrics
        Round metrics (name to value).
    """

    id: int
    number: int
    attempt: int
    kind: str
    status: str
    base_version: int
    started_at: datetime
    finished_at: datetime | None
    selected: tuple[str, ...]
    answered: tuple[str, ...]
    dropped: tuple[str, ...]
    reason: str | None
    model_version: int | None
    metrics: dict[str, float]

    @classmethod
    def from_row(cls, row: RoundRow) -> RoundRecord:
        """Copy a database row into a value object."""
        return cls(
            id=row.id,
            number=row.number,
            attempt=row.attempt,
            kind=row.kind,
            status=row.status,
            base_version=row.base_version,
            started_at=row.started_at,
            finished_at=row.finished_at,
            selected=tuple(row.selected),
            answered=tuple(row.answered),
            dropped=tuple(row.dropped),
            reason=row.reason,
            model_version=row.model_version,
            metrics=dict(row.metrics),
        )


def _names(values: Sequence[str], what: str) -> list[str]:
    """Return participant names as a JSON-ready list, refusing a bare string."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a sequence of names, got the string {values!r}")
    return [str(v) for v in values]


class RoundLog:
    """The durable list of round attempts.

    Parameters
    ----------
    db
        The database to write to.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def start(
        self,
        *,
        number: int,
        attempt: int,
        kind: str,
        base_version: int,
        selected: Sequence[str],
        now: datetime,
    ) -> int:
        """Record that a round attempt started (status ``running``).

        Parameters
        ----------
        number
            The round number, from 1.
        attempt
            The attempt at this round number (>= 0).
        kind
            ``"fit"`` or ``"evaluate"``.
        base_version
            The model version the participants start from.
        selected
            The names of the selected participants.
        now
            The start time (timezone-aware).

        Returns
        -------
        int
            The id of the new row, to pass to :meth:`finish`.

        Raises
        ------
        ValueError
            If a value is out of range or ``now`` is naive.
        """
        now = check_utc(now)
        if number < 1:
            raise ValueError(f"number must be >= 1, got {number}")
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if kind not in ROUND_KINDS:
            raise ValueError(f"kind must be one of {ROUND_KINDS}, got {kind!r}")
        row = RoundRow(
            number=number,
            attempt=attempt,
            kind=kind,
            status="running",
            base_version=base_version,
            started_at=now,
            finished_at=None,
            selected=_names(selected, "selected"),
            answered=[],
            dropped=[],
            reason=None,
            model_version=None,
            metrics={},
        )
        with self._db.transaction() as session:
            session.add(row)
            session.flush()
            return row.id

    def finish(
        self,
        row_id: int,
        *,
        status: str,
        answered: Sequence[str],
        dropped: Sequence[str],
        reason: str | None,
        model_version: int | None,
        metrics: Mapping[str, float],
        now: datetime,
    ) -> None:
        """Record the outcome of a running round attempt.

        Parameters
        ----------
        row_id
            The id :meth:`start` returned.
        status
            ``"committed"``, ``"failed"``, ``"aborted"`` or ``"done"``.
        answered, dropped
            Names of the participants that answered and that dropped out.
        reason
            Why it failed or was aborted, or ``None``.
        model_version
            The version committed by this round, or ``None``.
        metrics
            Finite round metrics.
        now
            The finish time (timezone-aware).

        Raises
        ------
        NotFoundError
            If there is no round row ``row_id``.
        StorageError
            If the attempt is no longer running (finished, or aborted on restart).
        ValueError
            If ``status`` is unknown, a metric is not finite or ``now`` is naive.
        """
        now = check_utc(now)
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        clean_metrics = check_metrics(metrics)
        answered_list = _names(answered, "answered")
        dropped_list = _names(dropped, "dropped")
        with self._db.transaction(write=True) as session:
            row = session.get(RoundRow, row_id)
            if row is None:
                raise NotFoundError(f"round record {row_id} does not exist")
            if row.status != "running":
                raise StorageError(
                    f"round {row.number} attempt {row.attempt} (record {row_id}) is "
                    f"already {row.status}; it cannot be finished again"
                )
            row.status = status
            row.answered = answered_list
            row.dropped = dropped_list
            row.reason = reason
            row.model_version = model_version
            row.metrics = clean_metrics
            row.finished_at = now

    def abort_running(self, *, reason: str, now: datetime) -> int:
        """Mark every ``running`` attempt as ``aborted`` (call on coordinator restart).

        Parameters
        ----------
        reason
            Why, recorded on each row (e.g. ``"coordinator restarted"``).
        now
            The time recorded as ``finished_at`` (timezone-aware).

        Returns
        -------
        int
            How many attempts were aborted.
        """
        now = check_utc(now)
        with self._db.transaction(write=True) as session:
            ids = builtins.list(
                session.scalars(select(RoundRow.id).where(RoundRow.status == "running"))
            )
            if ids:
                session.execute(
                    update(RoundRow)
                    .where(RoundRow.id.in_(ids))
                    .values(status="aborted", reason=reason, finished_at=now)
                )
            return len(ids)

    def list(self) -> builtins.list[RoundRecord]:
        """Return every round attempt, in the order they started."""
        with self._db.transaction() as session:
            rows = session.scalars(select(RoundRow).order_by(RoundRow.id))
            return [RoundRecord.from_row(r) for r in rows]

    def last_completed_number(self) -> int:
        """Return the highest round number with status ``committed``, or 0 if none."""
        with self._db.transaction() as session:
            value = session.scalar(
                select(func.max(RoundRow.number)).where(RoundRow.status == "committed")
            )
            return 0 if value is None else int(value)

    def count_done(self) -> int:
        """Return how many attempts finished with status ``done``."""
        with self._db.transaction() as session:
            value = session.scalar(
                select(func.count()).select_from(RoundRow).where(RoundRow.status == "done")
            )
            return int(value or 0)


@dataclass(frozen=True)
class ParticipantRecord:
    """A participant as last seen by the coordinator.

    Attributes
    ----------
    name
        The participant's unique name (its certificate subject).
    organization
        The organization it belongs to.
    role
        Its role in the federation's access policy.
    cert_sha256
        SHA-256 fingerprint of the certificate it last presented (hex).
    first_seen, last_seen
        Aware UTC times of its first and latest contact.
    """

    name: str
    organization: str
    role: str
    cert_sha256: str
    first_seen: datetime
    last_seen: datetime

    @classmethod
    def from_row(cls, row: ParticipantRow) -> ParticipantRecord:
        """Copy a database row into a value object."""
        return cls(
            name=row.name,
            organization=row.organization,
            role=row.role,
            cert_sha256=row.cert_sha256,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
        )


class Participants:
    """The participants the coordinator has seen.

    Parameters
    ----------
    db
        The database to write to.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def seen(
        self,
        *,
        name: str,
        organization: str,
        role: str,
        cert_sha256: str,
        now: datetime,
    ) -> ParticipantRecord:
        """Record contact from a participant (insert, or update and bump ``last_seen``).

        Parameters
        ----------
        name
            The participant's unique name.
        organization
            Its organization.
        role
            Its role.
        cert_sha256
            Fingerprint of the certificate it presented.
        now
            The time of contact (timezone-aware).

        Returns
        -------
        ParticipantRecord
            The stored record; ``first_seen`` is kept from the first contact.
        """
        now = check_utc(now)
        with self._db.transaction(write=True) as session:
            row = session.get(ParticipantRow, name)
            if row is None:
                row = ParticipantRow(
                    name=name,
                    organization=organization,
                    role=role,
                    cert_sha256=cert_sha256,
                    first_seen=now,
                    last_seen=now,
                )
                session.add(row)
            else:
                row.organization = organization
                row.role = role
                row.cert_sha256 = cert_sha256
                row.last_seen = max(row.last_seen, now)
            session.flush()
            return ParticipantRecord.from_row(row)

    def list(self) -> builtins.list[ParticipantRecord]:
        """Return every participant seen, ordered by name."""
        with self._db.transaction() as session:
            rows = session.scalars(select(ParticipantRow).order_by(ParticipantRow.name))
            return [ParticipantRecord.from_row(r) for r in rows]


@dataclass(frozen=True)
class EventRecord:
    """One journal entry.

    Attributes
    ----------
    id
        Increasing entry number.
    time
        When it happened (aware UTC).
    actor
        Who did it.
    action
        What was done, dotted (``model.commit``).
    resource
        What it was done to (``model/3``).
    outcome
        ``ok``, ``denied``, ``failed``, ...
    details
        JSON-ready extra facts (never payloads).
    """

    id: int
    time: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: EventRow) -> EventRecord:
        """Copy a database row into a value object."""
        return cls(
            id=row.id,
            time=row.time,
            actor=row.actor,
            action=row.action,
            resource=row.resource,
            outcome=row.outcome,
            details=dict(row.details),
        )


def _jsonable(value: object) -> Any:
    """Return ``value`` as strict JSON data (no NaN), stringifying what JSON lacks."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class EventLog:
    """The append-only, hash-chained and signed journal of events (the audit log).

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
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        details: Mapping[str, object],
        now: datetime,
    ) -> int:
        """Append one event, committed before it returns.

        Safe to call from many threads at once: concurrent calls are chained, signed and
        committed together in one transaction (:mod:`fedshield.storage.group_commit`),
        each returning only after that commit.

        Parameters
        ----------
        actor
            Who did it.
        action
            What was done (``round.start``, ``model.rollback``, ...).
        resource
            What it was done to.
        outcome
            ``ok``, ``denied``, ``failed``, ...
        details
            Extra facts. Values JSON lacks (datetimes, paths, NaN, numpy scalars) are
            stored as strings or plain numbers. Never put payloads here: byte strings,
            arrays, encoded blobs and oversized values are refused.
        now
            The event time (timezone-aware).

        Returns
        -------
        int
            The id of the new entry.

        Raises
        ------
        ValueError
            If ``now`` is naive or ``details`` fails
            :func:`~fedshield.audit.entry.check_metadata`.
        """
        now = check_utc(now)
        check_metadata(details, path="details")
        event = PendingEvent(
            time=now,
            actor=actor,
            action=action,
            resource=resource,
            outcome=outcome,
            details=_jsonable(details),
        )
        # Committed (fsynced) before it returns; concurrent callers share one commit.
        return group_commit(self._db).append(event)

    def since(self, after_id: int, actions: Collection[str]) -> builtins.list[EventRecord]:
        """Return the events with id > ``after_id`` whose action is in ``actions``."""
        with self._db.transaction() as session:
            query = (
                select(EventRow)
                .where(EventRow.id > after_id, EventRow.action.in_(builtins.list(actions)))
                .order_by(EventRow.id)
            )
            return [EventRecord.from_row(r) for r in session.scalars(query)]

    def list(self, limit: int | None = None) -> builtins.list[EventRecord]:
        """Return events oldest first; with ``limit``, only the newest ``limit`` of them.

        Parameters
        ----------
        limit
            The maximum number of (most recent) events to return, or ``None`` for all.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        with self._db.transaction() as session:
            query = select(EventRow).order_by(EventRow.id.desc())
            if limit is not None:
                query = query.limit(limit)
            rows = builtins.list(session.scalars(query))
            return [EventRecord.from_row(r) for r in reversed(rows)]
