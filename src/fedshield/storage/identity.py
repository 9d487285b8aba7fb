"""The revocation list: which identities the coordinator refuses, durably, across processes.

:class:`Revocations` stores one row per revocation in the coordinator's database
(``revocations``: name, certificate fingerprint or ``NULL`` for every certificate of the
name, serial, reason, actor, time). Rows are only ever added; the highest row id is the
list's *version*.

:class:`RevocationCache` is what a running coordinator consults on every request. A
lookup is two set-membership tests; the cache re-reads the version (one indexed
``SELECT max(id)``) at most every ``refresh_s`` seconds and reloads the list only when
the version moved. A revocation written by this process (the admin API) is applied at
once with :meth:`RevocationCache.invalidate`; one written by another process (the
``fedshield participants revoke`` CLI on the coordinator host) is enforced at the latest
``refresh_s`` seconds after it committed (1 s by default).
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from fedshield.storage.db import Database, RevocationRow, check_utc

__all__ = ["REFRESH_S", "RevocationCache", "RevocationRecord", "Revocations", "VersionPoll"]

REFRESH_S = 1.0
"""How often, at most, a running coordinator re-reads the revocation list's version."""

_REASON_MAX_CHARS = 1000


@dataclass(frozen=True)
class RevocationRecord:
    """One revocation.

    Attributes
    ----------
    id
        Row id; the list's version is the highest.
    name
        The revoked entity (certificate ``CN``).
    fingerprint_sha256
        The one revoked certificate (hex SHA-256 of its DER), or ``None``: every
        certificate of ``name``.
    serial
        The certificate serial number in hex, when known (for a CRL).
    reason, actor
        Why, and who revoked it.
    revoked_at
        When (aware UTC).
    """

    id: int
    name: str
    fingerprint_sha256: str | None
    serial: str | None
    reason: str
    actor: str
    revoked_at: datetime

    @classmethod
    def from_row(cls, row: RevocationRow) -> RevocationRecord:
        """Copy a database row into a value object."""
        return cls(
            id=row.id,
            name=row.name,
            fingerprint_sha256=row.fingerprint_sha256,
            serial=row.serial,
            reason=row.reason,
            actor=row.actor,
            revoked_at=row.revoked_at,
        )


class Revocations:
    """The revocation list in the coordinator's database.

    Parameters
    ----------
    db
        The coordinator's database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def revoke(
        self,
        name: str,
        *,
        reason: str,
        actor: str,
        now: datetime,
        fingerprint_sha256: str | None = None,
        serial: str | None = None,
        effective_at: datetime | None = None,
    ) -> RevocationRecord:
        """Revoke ``name`` (every certificate of it, or one by fingerprint); durable on return.

        ``effective_at`` (one certificate only, e.g. after a rotation's grace period) is
        when the revocation takes effect, stored as ``revoked_at``; default ``now``.

        Raises
        ------
        ValueError
            If ``reason`` is empty or longer than 1000 characters, a fingerprint is not
            64 lower-case hex digits, or ``now`` is naive.
        """
        now = check_utc(now)
        effective = check_utc(effective_at, "effective_at") if effective_at is not None else now
        if effective != now and fingerprint_sha256 is None:
            raise ValueError("only a single certificate's revocation can take effect later")
        reason = reason.strip()
        if not 1 <= len(reason) <= _REASON_MAX_CHARS:
            raise ValueError(f"reason must be 1 to {_REASON_MAX_CHARS} characters, got {reason!r}")
        if fingerprint_sha256 is not None and (
            len(fingerprint_sha256) != 64
            or any(c not in "0123456789abcdef" for c in fingerprint_sha256)
        ):
            raise ValueError(
                f"fingerprint_sha256 must be 64 lower-case hex digits, got {fingerprint_sha256!r}"
            )
        with self._db.transaction(write=True) as session:
            row = RevocationRow(
                name=name,
                fingerprint_sha256=fingerprint_sha256,
                serial=serial,
                reason=reason,
                actor=actor,
                revoked_at=effective,
            )
            session.add(row)
            session.flush()
            return RevocationRecord.from_row(row)

    def version(self) -> int:
        """Return the list's version: the highest row id (0 while the list is empty)."""
        with self._db.transaction() as session:
            return int(session.scalar(select(func.max(RevocationRow.id))) or 0)

    def list(self) -> builtins.list[RevocationRecord]:
        """Return every revocation, oldest first."""
        with self._db.transaction() as session:
            rows = session.scalars(select(RevocationRow).order_by(RevocationRow.id))
            return [RevocationRecord.from_row(r) for r in rows]


class VersionPoll:
    """When a cache of a table should re-read it: rarely, and only after a change.

    At most every ``refresh_s`` it reads the table's version; the contents are due only
    if that version differs from the one the cache holds.

    Not thread-safe on its own: call it under the cache's lock.

    Parameters
    ----------
    version
        Reads the table's current version.
    refresh_s
        Re-read the version at most this often (seconds, >= 0; 0 reads it every time).
    clock
        A monotonic clock in seconds.
    """

    def __init__(
        self, version: Callable[[], int], *, refresh_s: float, clock: Callable[[], float]
    ) -> None:
        if not refresh_s >= 0:
            raise ValueError(f"refresh_s must be >= 0, got {refresh_s}")
        self._read_version = version
        self.refresh_s = refresh_s
        self._clock = clock
        self._checked_at: float | None = None
        self._version = -1

    def invalidate(self) -> None:
        """Forget when the version was last read: the next :meth:`due` re-reads it."""
        self._checked_at = None

    def due(self) -> int | None:
        """Return the new version if the contents must be re-read, else ``None``.

        Call :meth:`loaded` with it once they were; until then the version counts as
        not seen, so a failed re-read is tried again.
        """
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return None
        self._checked_at = now
        version = self._read_version()
        return None if version == self._version else version

    def loaded(self, version: int) -> None:
        """Record that the contents of ``version`` are now held."""
        self._version = version


class RevocationCache:
    """A cheap per-request view of :class:`Revocations`, refreshed by version.

    Parameters
    ----------
    revocations
        The stored list.
    refresh_s
        Re-read the version at most this often (seconds, >= 0; 0 reads it on every
        lookup). A revocation another process writes is enforced within this bound.
    clock
        A monotonic clock in seconds (a parameter so tests can drive it).
    wall_clock
        The current UTC time, for revocations that take effect later (rotation).
    """

    def __init__(
        self,
        revocations: Revocations,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = revocations
        self._poll = VersionPoll(revocations.version, refresh_s=refresh_s, clock=clock)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._names: frozenset[str] = frozenset()
        self._fingerprints: dict[str, datetime] = {}
        self._records: tuple[RevocationRecord, ...] = ()

    def invalidate(self) -> None:
        """Forget when the version was last read: the next lookup re-reads it."""
        with self._lock:
            self._poll.invalidate()

    def refresh(self) -> frozenset[str]:
        """Re-read the version if it is due; return names newly revoked as a whole.

        Only whole-entity revocations are returned (a single revoked certificate, as
        after a rotation, leaves the entity in the federation under its new one).

        Raises
        ------
        StorageError
            If the database cannot be read.
        """
        with self._lock:
            version = self._poll.due()
            if version is None:
                return frozenset()
            records = tuple(self._store.list())
            before = self._names
            self._records = records
            self._poll.loaded(version)
            self._names = frozenset(r.name for r in records if r.fingerprint_sha256 is None)
            fingerprints: dict[str, datetime] = {}
            for r in records:
                if r.fingerprint_sha256 is not None:
                    earlier = fingerprints.get(r.fingerprint_sha256, r.revoked_at)
                    fingerprints[r.fingerprint_sha256] = min(earlier, r.revoked_at)
            self._fingerprints = fingerprints
            return self._names - before

    def revoked(self, name: str, fingerprint_sha256: str) -> RevocationRecord | None:
        """Return the revocation that covers this certificate, or ``None``."""
        self.refresh()
        effective = self._fingerprints.get(fingerprint_sha256)
        if effective is not None and effective > self._wall_clock():
            effective = None  # revoked later (a rotation's grace period)
        if name not in self._names and effective is None:
            return None
        for record in reversed(self._records):
            if record.fingerprint_sha256 is None and record.name == name:
                return record
        for record in self._records:
            if record.fingerprint_sha256 == fingerprint_sha256:
                return record
        return None

    @property
    def names(self) -> frozenset[str]:
        """Names revoked as a whole (every certificate), as of the last refresh."""
        return self._names

    @property
    def records(self) -> tuple[RevocationRecord, ...]:
        """Every revocation, as of the last refresh."""
        return self._records
