"""The roster of participants enrolled at run time, durably, across processes.

The federation config names the participants provisioned with it. An admin enrolls
more while the federation runs (``fedshield participants enroll``): :class:`Enrollments`
stores one row per enrolled name in the coordinator's database (``enrollments``: name,
organization, certificate fingerprint, serial, expiry, the certificate itself, actor,
time). Rows are only ever added, a name at most once; the highest row id is the
roster's *version*.

:class:`EnrollmentCache` is what a running coordinator consults, exactly as
:class:`~fedshield.storage.identity.RevocationCache` for revocations: it re-reads the
version (one indexed ``SELECT max(id)``) at most every ``refresh_s`` seconds and reloads
the names only when the version moved. An enrollment made through this process's admin
API is applied at once (:meth:`EnrollmentCache.invalidate`); one written by another
process (the CLI on the coordinator host) within ``refresh_s`` seconds of its commit.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fedshield.storage.db import Database, EnrollmentRow, RevocationRow, check_utc
from fedshield.storage.identity import REFRESH_S, RevocationRecord, VersionPoll

__all__ = ["EnrollmentCache", "EnrollmentRecord", "Enrollments"]

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class EnrollmentRecord:
    """One enrolled participant.

    Attributes
    ----------
    id
        Row id; the roster's version is the highest.
    name, organization
        The certificate's ``CN`` and ``O``.
    cert_sha256, serial
        The enrolled certificate: SHA-256 of its DER (hex) and serial number (hex).
    not_after
        When that certificate expires (aware UTC).
    certificate
        The certificate in PEM (public; the site's keys never leave the site).
    actor, enrolled_at
        Who enrolled it, and when (aware UTC).
    """

    id: int
    name: str
    organization: str
    cert_sha256: str
    serial: str
    not_after: datetime
    certificate: str
    actor: str
    enrolled_at: datetime

    @classmethod
    def from_row(cls, row: EnrollmentRow) -> EnrollmentRecord:
        """Copy a database row into a value object."""
        return cls(
            id=row.id,
            name=row.name,
            organization=row.organization,
            cert_sha256=row.cert_sha256,
            serial=row.serial,
            not_after=row.not_after,
            certificate=row.certificate,
            actor=row.actor,
            enrolled_at=row.enrolled_at,
        )


Admit = Callable[[builtins.list[EnrollmentRecord], builtins.list[RevocationRecord]], None]
"""Decides, inside the write transaction, whether a name may join: called with every
enrollment and every revocation as of that transaction; raises to refuse."""


class Enrollments:
    """The enrolled roster in the coordinator's database.

    Parameters
    ----------
    db
        The coordinator's database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def enroll(
        self,
        *,
        name: str,
        organization: str,
        cert_sha256: str,
        serial: str,
        not_after: datetime,
        certificate: str,
        actor: str,
        now: datetime,
        admit: Admit,
    ) -> EnrollmentRecord:
        """Add ``name`` to the roster if ``admit`` lets it; durable on return.

        ``admit`` runs in the same write transaction (``BEGIN IMMEDIATE`` on SQLite) as
        the insert, so two processes cannot both enroll a name, or enroll one that is
        being revoked, or both take the last place under a cap.

        Raises
        ------
        ValueError
            If the fingerprint is not 64 lower-case hex digits or a time is naive.
        StorageError
            If the database fails (a concurrent insert of the same name included).
        Exception
            Whatever ``admit`` raises; nothing is written then.
        """
        now = check_utc(now)
        not_after = check_utc(not_after, "not_after")
        if len(cert_sha256) != 64 or not set(cert_sha256) <= _HEX:
            raise ValueError(f"cert_sha256 must be 64 lower-case hex digits, got {cert_sha256!r}")
        with self._db.transaction(write=True) as session:
            admit(self._records(session), _revocations(session))
            row = EnrollmentRow(
                name=name,
                organization=organization,
                cert_sha256=cert_sha256,
                serial=serial,
                not_after=not_after,
                certificate=certificate,
                actor=actor,
                enrolled_at=now,
            )
            session.add(row)
            session.flush()
            return EnrollmentRecord.from_row(row)

    @staticmethod
    def _records(session: Session) -> builtins.list[EnrollmentRecord]:
        rows = session.scalars(select(EnrollmentRow).order_by(EnrollmentRow.id))
        return [EnrollmentRecord.from_row(r) for r in rows]

    def version(self) -> int:
        """Return the roster's version: the highest row id (0 while nobody was enrolled)."""
        with self._db.transaction() as session:
            return int(session.scalar(select(func.max(EnrollmentRow.id))) or 0)

    def list(self) -> builtins.list[EnrollmentRecord]:
        """Return every enrollment, oldest first."""
        with self._db.transaction() as session:
            return self._records(session)


def _revocations(session: Session) -> builtins.list[RevocationRecord]:
    rows = session.scalars(select(RevocationRow).order_by(RevocationRow.id))
    return [RevocationRecord.from_row(r) for r in rows]


class EnrollmentCache:
    """A cheap per-request view of :class:`Enrollments`, refreshed by version.

    Parameters
    ----------
    enrollments
        The stored roster.
    refresh_s
        Re-read the version at most this often (seconds, >= 0). An enrollment another
        process writes is honoured within this bound.
    clock
        A monotonic clock in seconds (a parameter so tests can drive it).
    """

    def __init__(
        self,
        enrollments: Enrollments,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = enrollments
        self._poll = VersionPoll(enrollments.version, refresh_s=refresh_s, clock=clock)
        self._lock = threading.Lock()
        self._names: frozenset[str] = frozenset()

    def invalidate(self) -> None:
        """Forget when the version was last read: the next refresh re-reads it."""
        with self._lock:
            self._poll.invalidate()

    def refresh(self) -> frozenset[str]:
        """Re-read the version if it is due; return the names enrolled since the last look.

        Raises
        ------
        StorageError
            If the database cannot be read.
        """
        with self._lock:
            version = self._poll.due()
            if version is None:
                return frozenset()
            before = self._names
            self._names = frozenset(r.name for r in self._store.list())
            self._poll.loaded(version)
            return self._names - before

    @property
    def names(self) -> frozenset[str]:
        """Every enrolled name, as of the last refresh."""
        return self._names
