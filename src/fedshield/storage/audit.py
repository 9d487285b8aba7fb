"""The audit log in the database: every event chained and signed as it is written.

Every :class:`~fedshield.storage.db.EventRow` (written by
:meth:`~fedshield.storage.records.EventLog.record` or by the registry's commit and
rollback) gets, in the same transaction, an
:class:`~fedshield.storage.db.AuditChainRow`: its ``seq``, its hash chained to the
previous entry and the coordinator's signature (:mod:`fedshield.audit.entry`). After each
committed round the coordinator adds a signed tree head
(:class:`~fedshield.storage.db.TreeHeadRow`, :func:`sign_tree_head`).
:class:`AuditLog` reads it back: verify, export, receipts.

:meth:`~fedshield.storage.records.EventLog.record` does not open a transaction per
event: concurrent calls are chained, signed and committed together
(:mod:`fedshield.storage.group_commit`). :meth:`AuditLog.verify` checks the entry
signatures in worker processes (:mod:`fedshield.storage.signature_pool`) while it
recomputes the chain.

The audit key
-------------
One Ed25519 key per log signs every entry and tree head, whoever writes it (the
coordinator service, the in-process simulation, an admin command such as
``fedshield participants release`` run on the coordinator host). It is
``<workdir>/audit.key`` (PKCS#8 PEM, mode 0600), generated on the first event, and its
public half is written to ``<workdir>/audit.pub`` (hex), stored in the log's header and
bound into the chain's anchor.

It is deliberately not the coordinator kit's ``signing.key``: admin commands that only
know the workdir must be able to append, and the kit key should not be copied. The
trust consequence: whoever can read ``audit.key`` can sign a new history, exactly as
whoever held the kit key could. What protects against that is outside the workdir: the
public key and tree heads participants keep in their receipts, and ``fedshield audit
verify --public-key`` pinned to a value published out of band. ``audit.pub`` sitting
next to the database only protects against someone who can edit the database but not
the files beside it. Endorsing the audit key with the kit's certified identity key is
not built yet.

Entries written before the audit log existed (an older workdir) are *adopted*: chained
and signed at the first new event, in id order, and counted in the header. They were
never protected before that moment. Later, an event row that some process inserts
without a chain link is never adopted; ``verify`` reports it.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import (
    Connection,
    Executable,
    Select,
    String,
    exists,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session

from fedshield.audit.entry import (
    Entry,
    anchor_hash,
    canonical_time,
    chain_hash_encoded,
    check_metadata,
    public_key_bytes,
    sign_entry,
)
from fedshield.audit.merkle import MerkleAccumulator
from fedshield.audit.receipt import Receipt, TreeHead, receipt_for, signatures_digest
from fedshield.audit.receipt import sign_tree_head as _sign_head
from fedshield.audit.verify import ChainRecord, VerifyReport, verify_log
from fedshield.errors import AuditError, ConfigError, IdentityError, NotFoundError, StorageError
from fedshield.identity.pki import load_signing_key, write_private_key
from fedshield.storage.db import (
    AuditChainRow,
    AuditLogRow,
    Database,
    EventRow,
    TreeHeadRow,
    TreeHeadSignaturesRow,
    check_utc,
)
from fedshield.storage.signature_pool import DEFAULT_CHUNK, SignaturePool, process_pool

__all__ = [
    "AUDIT_KEY_FILE",
    "AUDIT_PUB_FILE",
    "AuditLog",
    "StoredEntry",
    "audit_key",
    "PreparedLinks",
    "audit_federation",
    "chain_events",
    "prepare_links",
    "parse_public_key",
    "read_public_key",
    "sign_tree_head",
]

AUDIT_KEY_FILE: Final = "audit.key"
AUDIT_PUB_FILE: Final = "audit.pub"
_HEADER_ID: Final = 1


def parse_public_key(text: str) -> ed25519.Ed25519PublicKey:
    """Read an Ed25519 public key written as 64 hex characters.

    Raises
    ------
    ConfigError
        If ``text`` is not 32 bytes of hex.
    """
    try:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError(len(raw))
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ConfigError(
            "an audit public key is 64 hex characters (32 bytes)",
            hint="Copy it from <workdir>/audit.pub or a receipt's public_key.",
        ) from exc


def audit_key(db: Database) -> ed25519.Ed25519PrivateKey:
    """Return the key that signs ``db``'s audit log, creating it on first use.

    With ``db.audit_key_path`` the key is loaded from that file, or generated and
    written there (0600) with its public half beside it (``audit.pub``). Without a path
    it is generated once per :class:`Database` object.

    Raises
    ------
    IdentityError
        If the key file exists but is unreadable, readable by others, or not Ed25519.
    """
    cached = db.audit_cache.get("key")
    if isinstance(cached, ed25519.Ed25519PrivateKey):
        return cached
    path = db.audit_key_path
    if path is None:
        key = ed25519.Ed25519PrivateKey.generate()
    elif path.exists():
        key = load_signing_key(path)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        try:
            write_private_key(path, key)
        except IdentityError:
            if not path.exists():
                raise
            key = load_signing_key(path)  # another process created it first
        pub = path.with_name(AUDIT_PUB_FILE)
        if not pub.exists():
            tmp = pub.with_name(f".{pub.name}.{os.getpid()}.tmp")
            tmp.write_text(public_key_bytes(key.public_key()).hex() + "\n")
            tmp.replace(pub)
    db.audit_cache["key"] = key
    return key


class NewEvent(Protocol):
    """What chaining needs of an event row: its id and content (an ``EventRow`` fits)."""

    @property
    def id(self) -> int: ...  # noqa: D102
    @property
    def time(self) -> datetime: ...  # noqa: D102
    @property
    def actor(self) -> str: ...  # noqa: D102
    @property
    def action(self) -> str: ...  # noqa: D102
    @property
    def resource(self) -> str: ...  # noqa: D102
    @property
    def outcome(self) -> str: ...  # noqa: D102
    @property
    def details(self) -> Any: ...  # noqa: D102


# Built once: statements on the append path are executed per batch, and building them
# anew costs more than running them.
_READ_HEADER: Final = select(AuditLogRow.federation, AuditLogRow.public_key).where(
    AuditLogRow.id == _HEADER_ID
)
_READ_LAST_LINK: Final = (
    select(AuditChainRow.seq, AuditChainRow.entry_hash).order_by(AuditChainRow.seq.desc()).limit(1)
)
_INSERT_LINKS: Final = insert(AuditChainRow)
# The canonical encoding of entries (fedshield.audit.entry.canonical_json's settings).
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def _header(
    conn: Connection, db: Database, key: ed25519.Ed25519PrivateKey, first: Sequence[NewEvent]
) -> tuple[str, Sequence[NewEvent]]:
    """Return the log's federation (creating the header) and legacy rows to adopt first."""
    pub = public_key_bytes(key.public_key()).hex()
    header = conn.execute(_READ_HEADER).first()
    if header is None:
        if conn.execute(select(AuditChainRow.seq).limit(1)).first() is not None:
            raise StorageError(
                "the audit log has entries but no header: it was tampered with; refusing to append",
                hint="Run `fedshield audit verify --workdir W` and keep the workdir as evidence.",
            )
        new_ids = [r.id for r in first]
        legacy: Sequence[NewEvent] = conn.execute(
            select(
                EventRow.id,
                EventRow.time,
                EventRow.actor,
                EventRow.action,
                EventRow.resource,
                EventRow.outcome,
                EventRow.details,
            )
            .where(EventRow.id.not_in(new_ids))
            .order_by(EventRow.id)
        ).all()
        federation = db.federation or ""
        conn.execute(
            insert(AuditLogRow).values(
                id=_HEADER_ID,
                federation=federation,
                public_key=pub,
                created_at=first[0].time,
                adopted=len(legacy),
            )
        )
        return federation, legacy
    federation, stored_pub = header
    if stored_pub != pub:
        raise IdentityError(
            f"this audit log is signed by key {stored_pub[:16]}..., not by this "
            f"process's audit key {pub[:16]}...; refusing to append",
            hint="Run on the coordinator host with the workdir's own audit.key.",
        )
    if db.federation is not None and federation != db.federation:
        raise ConfigError(
            f"this workdir's audit log belongs to federation {federation!r}, not {db.federation!r}",
            hint="Use a fresh --workdir for another federation.",
        )
    return str(federation), []


@dataclass(frozen=True)
class PreparedLinks:
    """Chain links computed ahead of the transaction that stores them.

    Attributes
    ----------
    base_seq, base_hash
        The last entry they were chained after (``0`` and the anchor for an empty log).
        They are valid only if that is still the log's last entry when they are stored.
    hashes, signatures
        One per event, in order.
    """

    base_seq: int
    base_hash: bytes
    hashes: tuple[bytes, ...]
    signatures: tuple[bytes, ...]

    @property
    def head(self) -> tuple[int, bytes]:
        """The last ``(seq, hash)`` once they are stored: the base of the next links."""
        return self.base_seq + len(self.hashes), self.hashes[-1] if self.hashes else self.base_hash


def prepare_links(
    key: ed25519.Ed25519PrivateKey,
    federation: str,
    base: tuple[int, bytes],
    rows: Sequence[NewEvent],
) -> PreparedLinks:
    """Chain and sign ``rows`` after the entry ``base`` (``(seq, hash)``): CPU only, no I/O.

    The group committer calls it for the next batch while the previous one is being
    committed; :func:`chain_events` stores the result only if ``base`` is still the last
    entry, and recomputes it otherwise.
    """
    seq, prev = base
    hashes: list[bytes] = []
    signatures: list[bytes] = []
    for row in rows:
        seq += 1
        prev = chain_hash_encoded(prev, _event_encoding(seq, row))
        hashes.append(prev)
        signatures.append(sign_entry(key, federation=federation, seq=seq, entry_hash=prev))
    return PreparedLinks(base[0], base[1], tuple(hashes), tuple(signatures))


def chain_events(
    session: Session | Connection,
    db: Database,
    rows: Sequence[NewEvent],
    *,
    checked: bool = False,
    prepared: PreparedLinks | None = None,
) -> PreparedLinks | None:
    """Chain and sign ``rows`` (event rows already inserted) inside the caller's transaction.

    Call it in a write transaction (``db.transaction(write=True)``) right after the rows
    are flushed, so the entries commit with them or not at all, and no other writer can
    take the same ``seq`` in between. The chain head is read once, by primary key (the
    last ``seq``), under that write lock: no cache can go stale when another process
    or a registry transaction appended in between, and no work grows with the log.

    Parameters
    ----------
    session
        The caller's write transaction (an ORM session or a Core connection).
    db
        The database (for its audit key and federation).
    rows
        The new event rows, in the order they are to be chained.
    checked
        True if every row's metadata already passed
        :func:`~fedshield.audit.entry.check_metadata` (the group committer checks each
        event in its caller's thread, before it is queued).
    prepared
        Links :func:`prepare_links` computed for ``rows`` beforehand. Used only if their
        base is the chain head read here (and no legacy rows are adopted); otherwise
        the links are computed again.

    Returns
    -------
    PreparedLinks or None
        The links stored (``None`` if ``rows`` is empty).

    Raises
    ------
    ValueError
        If a row's metadata fails :func:`~fedshield.audit.entry.check_metadata`.
    IdentityError, ConfigError, StorageError
        If the log belongs to another key or federation, or its header is gone.
    """
    if not rows:
        return None
    if not checked:
        for row in rows:
            check_metadata(row.details)
    key = audit_key(db)
    conn = session.connection() if isinstance(session, Session) else session
    federation, legacy = _header(conn, db, key, rows)
    last = conn.execute(_READ_LAST_LINK).first()
    if last is None:
        base = 0, anchor_hash(federation=federation, public_key=public_key_bytes(key.public_key()))
    else:
        base = last[0], bytes.fromhex(last[1])
    chained = [*legacy, *rows]
    if legacy or prepared is None or (prepared.base_seq, prepared.base_hash) != base:
        prepared = prepare_links(key, federation, base, chained)
    conn.execute(
        _INSERT_LINKS,
        [
            {
                "seq": base[0] + i,
                "event_id": row.id,
                "entry_hash": digest.hex(),
                "signature": signature.hex(),
            }
            for i, (row, digest, signature) in enumerate(
                zip(chained, prepared.hashes, prepared.signatures, strict=True), start=1
            )
        ],
    )
    return prepared


def audit_federation(db: Database) -> str | None:
    """Return the federation in the log's header, or ``None`` before the first entry.

    Cached once read: the header never changes. For preparing links outside a
    transaction (:func:`prepare_links`); the header is checked again when they are
    stored.
    """
    cached = db.audit_cache.get("federation")
    if isinstance(cached, str):
        return cached
    with db.transaction() as session:
        header = session.execute(_READ_HEADER).first()
    if header is None:
        return None
    db.audit_cache["federation"] = str(header[0])
    return str(header[0])


def _event_encoding(seq: int, row: NewEvent) -> bytes:
    """Return ``_entry(seq, row).canonical()``, without building the entry (hot path)."""
    text = _CANONICAL.encode(
        {
            "action": row.action,
            "actor": row.actor,
            "metadata": row.details,
            "outcome": row.outcome,
            "resource": row.resource,
            "seq": seq,
            "time": canonical_time(row.time),
        }
    )
    return text.encode("ascii")


def _entry(seq: int, row: NewEvent) -> Entry:
    return Entry(
        seq=seq,
        time=row.time,
        actor=row.actor,
        action=row.action,
        resource=row.resource,
        outcome=row.outcome,
        metadata=row.details,
    )


def sign_tree_head(db: Database, *, round: int, now: datetime) -> TreeHead:
    """Sign and store the tree head of the whole log as it is now.

    Parameters
    ----------
    db
        The database.
    round
        The round just committed (recorded in the head).
    now
        When (timezone-aware; stored beside the head, not signed).

    Returns
    -------
    TreeHead
        The signed head (version 2: it also signs the digest of every entry
        signature). Costs one pass over the stored entry hashes and signatures.
    """
    now = check_utc(now)
    key = audit_key(db)
    with db.transaction(write=True) as session:
        header = session.get(AuditLogRow, _HEADER_ID)
        if header is None:
            raise StorageError("the audit log is empty: there is no tree to sign")
        acc = MerkleAccumulator()
        signed = signatures_digest()
        for digest, signature in session.execute(
            select(AuditChainRow.entry_hash, AuditChainRow.signature).order_by(AuditChainRow.seq)
        ):
            acc.append(bytes.fromhex(digest))
            signed.update(bytes.fromhex(signature))
        signatures = signed.digest()
        head = _sign_head(
            key,
            federation=header.federation,
            round=round,
            size=acc.size,
            root=acc.root(),
            signatures=signatures,
        )
        row = TreeHeadRow(
            round=round,
            size=head.size,
            root=head.root.hex(),
            signature=head.signature.hex(),
            created_at=now,
        )
        session.add(row)
        session.flush()  # gives the row its id
        session.add(TreeHeadSignaturesRow(head_id=row.id, digest=signatures.hex()))
    return head


def _head(federation: str, row: TreeHeadRow, signatures: str | None) -> TreeHead:
    return TreeHead(
        federation=federation,
        round=row.round,
        size=row.size,
        root=_unhex(row.root),
        signature=_unhex(row.signature),
        signatures=None if signatures is None else _unhex(signatures),
    )


def _heads_query() -> Select[TreeHeadRow, str]:  # the digest is None for a v1 head
    return select(TreeHeadRow, TreeHeadSignaturesRow.digest).outerjoin(
        TreeHeadSignaturesRow, TreeHeadSignaturesRow.head_id == TreeHeadRow.id
    )


@dataclass(frozen=True)
class StoredEntry:
    """One chain link as read back, with the entry it links to.

    Attributes
    ----------
    seq
        The position stored with the link.
    entry
        The entry, or ``None`` if its content row is gone or unreadable.
    event_id
        The event row the link refers to.
    entry_hash, signature
        Hex, as stored.
    """

    seq: int
    entry: Entry | None
    event_id: int
    entry_hash: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        """Return the JSON line written by ``fedshield audit export``."""
        body = (
            self.entry.to_json() if self.entry is not None else {"seq": self.seq, "missing": True}
        )
        return {**body, "entry_hash": self.entry_hash, "signature": self.signature}

    def record(self) -> ChainRecord:
        """Return the verifier's view of this link."""
        return ChainRecord(
            seq=self.seq,
            entry=self.entry,
            entry_hash=_unhex(self.entry_hash),
            signature=_unhex(self.signature),
        )


def _raw_entry(seq: int, values: Sequence[Any]) -> Entry | None:
    """Build an entry from raw column values; ``None`` if they no longer parse.

    The columns are read without SQLAlchemy's type processing, so a tampered timestamp
    or JSON document makes this entry fail verification instead of crashing the reader.
    """
    time, actor, action, resource, outcome, details = values
    try:
        if isinstance(time, str):
            time = datetime.fromisoformat(time)
        if not isinstance(time, datetime):
            return None
        if time.tzinfo is None:
            time = time.replace(tzinfo=UTC)
        if isinstance(details, str | bytes):
            details = json.loads(details)
        if not isinstance(details, dict):
            return None
        return Entry(
            seq=seq,
            time=time,
            actor=str(actor),
            action=str(action),
            resource=str(resource),
            outcome=str(outcome),
            metadata=details,
        )
    except ValueError:
        return None


_STORED_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}")


def _stored_encoding(seq: int, values: Sequence[Any]) -> bytes | None:
    """Return the canonical encoding of a stored entry, straight from its raw columns.

    The fast path of verification (three times faster than building an
    :class:`~fedshield.audit.entry.Entry`): it applies only to the form SQLite stores
    (a naive UTC time ``YYYY-MM-DD HH:MM:SS.ffffff``, details as JSON text, text
    columns) and returns ``None`` for anything else, which :func:`_raw_entry` then
    reads. When it applies, it returns exactly ``_raw_entry(seq, values).canonical()``
    (a property test holds it to that).
    """
    time, actor, action, resource, outcome, details = values
    if not (
        isinstance(time, str)
        and isinstance(details, str)
        and isinstance(actor, str)
        and isinstance(action, str)
        and isinstance(resource, str)
        and isinstance(outcome, str)
        and _STORED_TIME.fullmatch(time)
    ):
        return None
    try:
        datetime.fromisoformat(time)  # a valid date, as _raw_entry requires
        metadata = json.loads(details)
        if not isinstance(metadata, dict):
            return None
        text = _CANONICAL.encode(
            {
                "action": action,
                "actor": actor,
                "metadata": metadata,
                "outcome": outcome,
                "resource": resource,
                "seq": seq,
                "time": f"{time[:10]}T{time[11:]}Z",
            }
        )
    except (ValueError, RecursionError):
        return None
    return text.encode("ascii")


def _found(row: Sequence[Any]) -> bool:
    """Return whether a row of ``AuditLog._entries_query`` has its entry's content."""
    return row[4] is not None and row[0] >= 1


def _encode_rows(rows: Sequence[tuple[int, tuple[Any, ...]] | None]) -> list[bytes | None]:
    """:func:`_stored_encoding` of each ``(seq, raw columns)``; a worker process runs it."""
    return [None if row is None else _stored_encoding(*row) for row in rows]


def _record(row: Sequence[Any], encoding: bytes | None) -> ChainRecord:
    """Return the verifier's view of one row of ``AuditLog._entries_query``."""
    seq, _, entry_hash, signature, _found_id = row[:5]
    if not _found(row):
        return ChainRecord(seq, None, _unhex(entry_hash), _unhex(signature))
    entry = _raw_entry(seq, row[5:]) if encoding is None else None
    return ChainRecord(seq, entry, _unhex(entry_hash), _unhex(signature), encoding)


class AuditLog:
    """Read access to a database's audit log: verify, export, receipts.

    Parameters
    ----------
    db
        The database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def header(self) -> tuple[str, str] | None:
        """Return ``(federation, public key hex)`` from the log header, if it has one."""
        with self._db.transaction() as session:
            row = session.get(AuditLogRow, _HEADER_ID)
            return None if row is None else (row.federation, row.public_key)

    def entries(self, session: Session) -> Iterator[StoredEntry]:
        """Yield every chain link with its entry, in ``seq`` order, inside ``session``."""
        for row in session.execute(self._entries_query()):
            seq, event_id, entry_hash, signature, found = row[:5]
            entry = None if found is None or seq < 1 else _raw_entry(seq, row[5:])
            yield StoredEntry(seq, entry, event_id, entry_hash, signature)

    @staticmethod
    def _entries_query() -> Executable:
        raw = [
            type_coerce(column, String)
            for column in (
                EventRow.time,
                EventRow.actor,
                EventRow.action,
                EventRow.resource,
                EventRow.outcome,
                EventRow.details,
            )
        ]
        return (
            select(
                AuditChainRow.seq,
                AuditChainRow.event_id,
                AuditChainRow.entry_hash,
                AuditChainRow.signature,
                EventRow.id,
                *raw,
            )
            .outerjoin(EventRow, EventRow.id == AuditChainRow.event_id)
            .order_by(AuditChainRow.seq)
            .execution_options(yield_per=5000)
        )

    def heads(self) -> list[TreeHead]:
        """Return the stored tree heads, oldest first."""
        header = self.header()
        federation = "" if header is None else header[0]
        with self._db.transaction() as session:
            rows = session.execute(_heads_query().order_by(TreeHeadRow.id))
            return [_head(federation, row, digest) for row, digest in rows]

    def verify(
        self,
        public_key: ed25519.Ed25519PublicKey,
        *,
        external_heads: Sequence[TreeHead] = (),
        workers: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        all_signatures: bool = False,
    ) -> VerifyReport:
        """Verify the chain, the signatures and every tree head with ``public_key``.

        One pass in ``seq`` order recomputes the chain and the tree heads here. Entry
        signatures that no verified version-2 tree head vouches for (or all of them,
        with ``all_signatures``: see :mod:`fedshield.audit.verify`) are checked by
        worker processes (:mod:`fedshield.storage.signature_pool`); the entry named is
        the one a serial pass names.

        Parameters
        ----------
        public_key
            The audit public key the verifier trusts (never taken from the database).
        external_heads
            Tree heads from participants' receipts, for truncation and rewrites.
        workers
            Processes checking signatures: ``None`` for one per available core, ``0``
            to check them inline in this process.
        chunk
            Signatures handed to a worker at a time; a log shorter than one chunk is
            checked in this process.
        all_signatures
            Check every entry signature one by one (one Ed25519 verification per
            entry), also those a verified tree head vouches for. Same verdict, slower.

        Raises
        ------
        AuditError
            Naming the first bad entry and the check that failed.
        """
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        header = self.header()
        heads = self.heads()
        federation = "" if header is None else header[0]
        with self._db.transaction() as session:
            unchained = list(
                session.scalars(
                    select(EventRow.id)
                    .where(~exists().where(AuditChainRow.event_id == EventRow.id))
                    .order_by(EventRow.id)
                )
            )
            if header is None and session.scalar(select(AuditChainRow.seq).limit(1)) is not None:
                raise AuditError(
                    "audit log verification failed at log: header: the header row "
                    "(federation and key) is missing",
                    check="header",
                )
            # One set of worker processes per call, shared by the entry encodings and
            # the signatures, and stopped when the call ends, whatever happened.
            executor = process_pool(workers) if workers > 0 else None
            signatures = (
                SignaturePool(
                    public_key_bytes(public_key),
                    federation,
                    workers=workers,
                    chunk=chunk,
                    executor=executor,
                )
                if executor is not None
                else None
            )
            records = self._records(session, executor=executor, workers=workers, chunk=chunk)
            try:
                return verify_log(
                    records,
                    federation=federation,
                    public_key=public_key,
                    heads=heads,
                    external_heads=external_heads,
                    unchained=unchained,
                    signatures=signatures,
                    all_signatures=all_signatures,
                )
            finally:
                records.close()
                if signatures is not None:
                    signatures.close()
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)

    def _records(
        self,
        session: Session,
        *,
        executor: ProcessPoolExecutor | None = None,
        workers: int = 0,
        chunk: int = DEFAULT_CHUNK,
    ) -> Generator[ChainRecord, None, None]:
        """Yield the verifier's view of every link, in ``seq`` order (lean: no ORM objects).

        An entry stored the usual way is handed over as its canonical encoding, built
        from the raw columns (:func:`_stored_encoding`); anything else as an
        :class:`~fedshield.audit.entry.Entry` parsed the careful way. With an
        ``executor`` (of ``workers`` processes), the encodings of each chunk of rows are
        built in the workers while this process verifies the chunks before it (the
        encoding is most of a verifier's work per entry once signatures are vouched for
        by tree heads); a log shorter than two chunks is encoded here.
        """
        # Core rows from the session's connection: no ORM layer per row.
        rows = session.connection().execute(self._entries_query())
        first = rows.fetchmany(2 * chunk) if executor is not None else []
        if executor is None or len(first) < 2 * chunk:
            for row in itertools.chain(first, rows):
                yield _record(row, _stored_encoding(row[0], row[5:]) if _found(row) else None)
            return
        in_flight: collections.deque[tuple[Sequence[Any], Future[list[bytes | None]]]]
        in_flight = collections.deque()
        batch: Sequence[Any] = first[:chunk]
        rest: Sequence[Any] = first[chunk:]
        while batch:
            work = [(row[0], tuple(row[5:])) if _found(row) else None for row in batch]
            in_flight.append((batch, executor.submit(_encode_rows, work)))
            if len(in_flight) > workers:  # keep every worker busy, yield in order
                done, encodings = in_flight.popleft()
                yield from map(_record, done, encodings.result())
            batch, rest = (rest, []) if rest else (rows.fetchmany(chunk), [])
        while in_flight:
            done, encodings = in_flight.popleft()
            yield from map(_record, done, encodings.result())

    def export_jsonl(self, out: IO[str]) -> int:
        """Write every entry as one JSON line (entry fields, ``entry_hash``, ``signature``).

        Returns
        -------
        int
            How many lines were written.
        """
        count = 0
        with self._db.transaction() as session:
            for item in self.entries(session):
                out.write(json.dumps(item.to_json(), sort_keys=True) + "\n")
                count += 1
        return count

    def receipt(self, participant: str, round: int) -> Receipt:
        """Return ``participant``'s receipt for its contribution to committed ``round``.

        The entry is the round's ``round.contribution`` event for the participant; the
        head is the last tree head signed for that round.

        Raises
        ------
        NotFoundError
            If the participant has no contribution entry or the round no tree head.
        AuditError
            If the stored log does not reproduce the head (verify it).
        """
        header = self.header()
        if header is None:
            raise NotFoundError("the audit log is empty")
        federation, public_hex = header
        with self._db.transaction() as session:
            candidates = session.execute(
                select(AuditChainRow.seq, EventRow.details)
                .join(EventRow, EventRow.id == AuditChainRow.event_id)
                .where(
                    EventRow.action == "round.contribution",
                    EventRow.resource == f"participant/{participant}",
                )
                .order_by(AuditChainRow.seq)
            ).all()
            seqs = [seq for seq, details in candidates if details.get("round") == round]
            if not seqs:
                raise NotFoundError(
                    f"no contribution of {participant!r} to round {round} in the audit log",
                    hint="Receipts exist for committed rounds a participant's update was in.",
                )
            seq = seqs[-1]
            found = session.execute(
                _heads_query()
                .where(TreeHeadRow.round == round, TreeHeadRow.size >= seq)
                .order_by(TreeHeadRow.id.desc())
                .limit(1)
            ).first()
            if found is None:
                raise NotFoundError(f"round {round} has no signed tree head yet")
            head_row, digest = found
            head = _head(federation, head_row, digest)
            # The tree's leaves (hashes only) and the one entry: no entry but this one
            # is parsed, so a receipt costs one read of the hash column, not of the log.
            hashes = [
                _unhex(digest)
                for (digest,) in session.execute(
                    select(AuditChainRow.entry_hash)
                    .where(AuditChainRow.seq <= head_row.size)
                    .order_by(AuditChainRow.seq)
                )
            ]
            row = session.execute(
                self._entries_query().where(AuditChainRow.seq == seq)  # type: ignore[attr-defined]
            ).first()
            mine = None
            if row is not None:
                found_entry = _raw_entry(seq, row[5:]) if _found(row) else None
                mine = StoredEntry(seq, found_entry, row[1], row[2], row[3])
        public_key = parse_public_key(public_hex)
        if mine is None or mine.entry is None:
            raise AuditError(f"cannot issue a receipt: entry {seq} is damaged; verify the log")
        prev = (
            anchor_hash(federation=federation, public_key=public_key_bytes(public_key))
            if seq == 1
            else hashes[seq - 2]
        )
        try:
            return receipt_for(
                entry=mine.entry,
                prev_hash=prev,
                signature=_unhex(mine.signature),
                entry_hashes=hashes,
                head=head,
                public_key=public_key,
            )
        except ValueError as exc:
            raise AuditError(
                f"cannot issue a receipt: {exc}", hint="Run `fedshield audit verify` first."
            ) from exc


def _unhex(text: object) -> bytes:
    try:
        return bytes.fromhex(str(text))
    except ValueError:
        return b""  # a corrupted hex field then fails its signature or hash check


def read_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Read an ``audit.pub`` file (64 hex characters).

    Raises
    ------
    ConfigError
        If it is missing or malformed.
    """
    try:
        return parse_public_key(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the audit public key {path}: {exc.strerror or exc}",
            hint="Pass --public-key HEX (from a receipt or the coordinator operator).",
        ) from exc
