"""The fedshield database: one SQLAlchemy engine and the tables it holds.

SQLite in the workdir is the default (``sqlite:///<workdir>/fedshield.db``); any other
SQLAlchemy URL, such as ``postgresql+psycopg://user:pw@host/db``, is used as given.

Durability on SQLite comes from the PRAGMAs set on every new connection:
``journal_mode=WAL`` (readers do not block the writer), ``synchronous=FULL`` (a
committed transaction survives power loss, not only a process crash),
``foreign_keys=ON`` (SQLite ignores foreign keys unless told) and ``busy_timeout=5000``
(wait up to 5 s for another process's write lock instead of failing at once).

SQLite's Python driver would otherwise start transactions lazily and only before
``INSERT``/``UPDATE``/``DELETE``, so a ``SELECT`` that a write depends on would run
outside the transaction. This module takes over ``BEGIN`` (the recipe from SQLAlchemy's
SQLite documentation); sessions opened with ``Database.session(write=True)`` use
``BEGIN IMMEDIATE`` so that a read-then-write transaction (such as "next version is
max + 1") holds the write lock from its first statement and cannot race another process.

All timestamps are timezone-aware UTC. SQLite has no time zone type, so
:class:`UTCDateTime` stores UTC and attaches ``timezone.utc`` again when reading.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    URL,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from fedshield.errors import StorageError

__all__ = [
    "AuditChainRow",
    "AuditLogRow",
    "Base",
    "Database",
    "EnrollmentRow",
    "EventRow",
    "HeadRow",
    "ModelVersionRow",
    "ParticipantRow",
    "PrivacyEventRow",
    "RevocationRow",
    "RoundRow",
    "TreeHeadRow",
    "TreeHeadSignaturesRow",
    "UTCDateTime",
    "check_metrics",
    "check_utc",
    "mask_url",
]

_BEGIN_OPTION = "fedshield_sqlite_begin"


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that only accepts and returns aware UTC values.

    Values are converted to UTC before they are stored. Values read back from SQLite
    (which drops the offset) get ``tzinfo=UTC`` attached.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC; refuse naive ones."""
        if value is None:
            return None
        return check_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return ``value`` as an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def check_utc(value: datetime, name: str = "now") -> datetime:
    """Return ``value`` converted to UTC, refusing a naive datetime.

    Parameters
    ----------
    value
        A timezone-aware datetime.
    name
        The parameter name used in the error message.

    Returns
    -------
    datetime
        The same instant with ``tzinfo=UTC``.

    Raises
    ------
    ValueError
        If ``value`` has no time zone: a naive time is ambiguous and would be stored
        as if it were UTC.
    """
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got {value!r}")
    return value.astimezone(UTC)


def check_metrics(metrics: Any, what: str = "metrics") -> dict[str, float]:
    """Return ``metrics`` as a plain ``dict[str, float]`` of finite values.

    Parameters
    ----------
    metrics
        A mapping of metric name to a real number.
    what
        What the mapping is, for the error message.

    Returns
    -------
    dict[str, float]
        A copy with string keys and Python floats, safe to store as JSON on any database
        (PostgreSQL's JSON has no NaN or Infinity).

    Raises
    ------
    ValueError
        If a key is not a string or a value is not a finite real number.
    """
    out: dict[str, float] = {}
    for key, value in dict(metrics).items():
        if not isinstance(key, str):
            raise ValueError(f"{what} keys must be strings, got {key!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}[{key!r}] must be a real number, got {value!r}") from exc
        if not math.isfinite(number):
            raise ValueError(f"{what}[{key!r}] must be finite, got {number}")
        out[key] = number
    return out


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages and logs.

    Parameters
    ----------
    url
        A SQLAlchemy database URL.

    Returns
    -------
    str
        The URL without its password. An unparsable URL is returned as ``<invalid URL>``
        rather than echoed, since it may still contain a secret.
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


class Base(DeclarativeBase):
    """Declarative base of every fedshield table."""


class ParticipantRow(Base):
    """A participant organization's agent as seen by the coordinator."""

    __tablename__ = "participants"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    organization: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    cert_sha256: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())


class RoundRow(Base):
    """One attempt at one round (``fit`` or ``evaluate``)."""

    __tablename__ = "rounds"
    __table_args__ = (
        Index("ix_rounds_status", "status"),
        Index("ix_rounds_number", "number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    base_version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    selected: Mapped[list[str]] = mapped_column(JSON)
    answered: Mapped[list[str]] = mapped_column(JSON)
    dropped: Mapped[list[str]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(String, nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)


class ModelVersionRow(Base):
    """A committed global model version; its weights are a blob named by ``sha3``."""

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_versions.version"), nullable=True
    )
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha3: Mapped[str] = mapped_column(String(64), index=True)
    num_parameters: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(String, default="")


class HeadRow(Base):
    """One move of the registry head; the current head is the row with the highest id."""

    __tablename__ = "heads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    reason: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventRow(Base):
    """An audit entry's content (no payloads); its chain link is an :class:`AuditChainRow`."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(128))
    resource: Mapped[str] = mapped_column(String(512))
    outcome: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class AuditLogRow(Base):
    """The audit log's header: its federation and the public key that signs it (one row).

    Both are bound into the chain through the anchor hash of entry 1, so editing this
    row breaks the chain; a verifier still pins the key it trusts from outside.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    federation: Mapped[str] = mapped_column(String(256))
    public_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    adopted: Mapped[int] = mapped_column(Integer)


class AuditChainRow(Base):
    """One link of the audit chain: an event's position, hash and signature.

    A companion of ``events`` rather than new columns on it, so that databases created
    before the audit log gain the table from ``create_all`` without a migration.
    """

    __tablename__ = "audit_chain"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(Integer, unique=True)
    entry_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class TreeHeadRow(Base):
    """A signed tree head: the Merkle root of the first ``size`` entries after a round."""

    __tablename__ = "audit_tree_heads"
    __table_args__ = (Index("ix_audit_tree_heads_round", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    root: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TreeHeadSignaturesRow(Base):
    """The signatures digest a version-2 tree head signs (see :mod:`fedshield.audit.receipt`).

    A companion of ``audit_tree_heads`` rather than a new column, so that databases
    created before it gain the table from ``create_all`` without a migration; their
    older heads have no row here and stay version 1.
    """

    __tablename__ = "audit_tree_head_signatures"

    head_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("audit_tree_heads.id"), primary_key=True, autoincrement=False
    )
    digest: Mapped[str] = mapped_column(String(64))


class PrivacyEventRow(Base):
    """One privacy event: a DP mechanism run in one round attempt, as the accountant sees it.

    Epsilon is not stored (only what a site reported, for comparison): it is recomputed
    from these rows (see :mod:`fedshield.storage.privacy`). One row per scope, round and
    attempt.
    """

    __tablename__ = "privacy_events"
    __table_args__ = (
        Index("ix_privacy_events_attempt", "scope", "round", "attempt", unique=True),
        Index("ix_privacy_events_round", "round"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(256))
    mechanism: Mapped[str] = mapped_column(String(64))
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sampling_rate: Mapped[float] = mapped_column(Float)
    sampling: Mapped[str] = mapped_column(String(16))
    steps: Mapped[int] = mapped_column(Integer)
    clip_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    participants: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delta: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(16))
    target_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon_reported: Mapped[float | None] = mapped_column(Float, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RevocationRow(Base):
    """One revoked identity: every certificate of ``name``, or one certificate of it.

    ``fingerprint_sha256`` is ``None`` when the whole entity is revoked (every
    certificate ever issued to the name), else the SHA-256 of the one revoked
    certificate's DER. Rows are never updated or deleted; the highest ``id`` is the
    revocation list's version, which a running coordinator polls.
    """

    __tablename__ = "revocations"
    __table_args__ = (Index("ix_revocations_name", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    fingerprint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(1000))
    actor: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EnrollmentRow(Base):
    """One participant enrolled after provisioning, by its CA-signed certificate.

    The federation config names the participants provisioned with it; an admin enrolls
    more at run time (``fedshield participants enroll``), and a running coordinator
    polls this table as it polls ``revocations``. Rows are never updated or deleted (a
    name leaves by revocation); the highest ``id`` is the roster's version. The
    certificate is public (PEM); no private key is ever stored.
    """

    __tablename__ = "enrollments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    organization: Mapped[str] = mapped_column(String(256))
    cert_sha256: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    certificate: Mapped[str] = mapped_column(String(16384))
    actor: Mapped[str] = mapped_column(String(256))
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime())


def _install_sqlite_hooks(engine: Engine) -> None:
    """Set the durability PRAGMAs and take over ``BEGIN`` on an SQLite engine."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (see the module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The fedshield database: an engine, its tables and a session factory.

    Parameters
    ----------
    url
        A SQLAlchemy URL. ``sqlite:///...`` URLs get the durability PRAGMAs described in
        the module docstring; any other URL is passed to ``create_engine`` as is.
    audit_key_path
        The file holding the Ed25519 key that signs the audit log (created 0600 on the
        first event if missing; see :mod:`fedshield.storage.audit`). ``None`` signs with
        a key that lives only in this object: another process cannot append to that
        log afterwards (it refuses), so give a path for any database that outlives it.

    Raises
    ------
    StorageError
        If the URL is invalid, its driver is not installed, or the database cannot be
        opened or its tables created. The message names the URL with its password
        masked.
    """

    def __init__(self, url: str, *, audit_key_path: Path | None = None) -> None:
        #: Where the audit signing key lives (see :mod:`fedshield.storage.audit`).
        self.audit_key_path = audit_key_path
        #: The federation the audit log is bound to when its first entry is written;
        #: the coordinator sets it. ``None`` binds a new log to ``""``.
        self.federation: str | None = None
        #: Audit state shared by every user of this object: the audit key
        #: (:mod:`fedshield.storage.audit`) and the group committer
        #: (:mod:`fedshield.storage.group_commit`).
        self.audit_cache: dict[str, Any] = {}
        masked = mask_url(url)
        #: The URL with its password masked, safe to log or show.
        self.url = masked
        hint = "Use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB."
        try:
            parsed = make_url(url)
            self._is_sqlite = parsed.get_backend_name() == "sqlite"
            self.engine: Engine = create_engine(url)
        except (NoSuchModuleError, ImportError) as exc:
            # NoSuchModuleError subclasses ArgumentError, so it comes first.
            raise StorageError(f"cannot use database {masked}: {exc}", hint=hint) from exc
        except ArgumentError as exc:
            # The message may quote the raw URL, password included.
            raise StorageError("the database URL is not a valid SQLAlchemy URL", hint=hint) from exc
        if self._is_sqlite:
            _install_sqlite_hooks(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
        except DBAPIError as exc:
            # OperationalError (cannot open, connection refused) and DatabaseError
            # (the file is not a database) alike.
            self.engine.dispose()
            raise StorageError(
                f"cannot open database {masked}: {exc.orig}",
                hint="Check that the path or server is reachable and writable.",
            ) from exc

    @classmethod
    def for_workdir(cls, workdir: Path) -> Database:
        """Open (creating if needed) the SQLite database ``<workdir>/fedshield.db``.

        Parameters
        ----------
        workdir
            The coordinator's working directory; created if missing. The audit log in
            it is signed with ``<workdir>/audit.key``.

        Returns
        -------
        Database
            The opened database.

        Raises
        ------
        StorageError
            If the directory cannot be created or the database cannot be opened.
        """
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create workdir {workdir}: {exc}") from exc
        # Built, not formatted, so that "?" or "#" in the path is escaped, not parsed.
        url = URL.create("sqlite", database=str(workdir.resolve() / "fedshield.db"))
        return cls(url.render_as_string(hide_password=False), audit_key_path=workdir / "audit.key")

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (else a server database such as PostgreSQL)."""
        return self._is_sqlite

    def session(self, *, write: bool = False) -> Session:
        """Return a new ORM session, to be used as a context manager.

        Parameters
        ----------
        write
            If true, on SQLite the transaction begins with ``BEGIN IMMEDIATE`` and so holds
            the database write lock from its first statement. Use it for transactions
            that read something and then write based on it.

        Returns
        -------
        Session
            A session with ``expire_on_commit=False`` (objects stay readable after
            commit). Typical use: ``with db.session() as s, s.begin(): ...``.
        """
        return self._write_sessions() if write else self._sessions()

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Session]:
        """Run one transaction, translating database failures into :class:`StorageError`.

        Parameters
        ----------
        write
            As for :meth:`session`: take the SQLite write lock at ``BEGIN``.

        Yields
        ------
        Session
            A session inside ``BEGIN``; the transaction commits when the block exits
            normally and rolls back if it raises.

        Raises
        ------
        StorageError
            If the database fails (locked past the busy timeout, disk full, a constraint
            violated by a concurrent writer, connection lost, ...).
        """
        try:
            with self.session(write=write) as session, session.begin():
                yield session
        except DBAPIError as exc:
            raise StorageError(
                f"database {self.url} failed: {exc.orig}",
                hint="Retry; if it persists check disk space and that no other process "
                "holds the database.",
            ) from exc

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """Run one write transaction on a Core connection (no ORM session).

        As :meth:`transaction` with ``write=True`` (``BEGIN IMMEDIATE`` on SQLite,
        failures raised as :class:`StorageError`), for hot paths that insert rows in
        bulk, such as the audit log's group commit, where a session's bookkeeping costs
        more than the statements.
        """
        try:
            with self._write_engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise StorageError(
                f"database {self.url} failed: {exc.orig}",
                hint="Retry; if it persists check disk space and that no other process "
                "holds the database.",
            ) from exc

    def close(self) -> None:
        """Dispose of the engine and its pooled connections."""
        self.engine.dispose()

    def __repr__(self) -> str:
        """Return a representation with the password masked."""
        return f"Database({self.url!r})"
