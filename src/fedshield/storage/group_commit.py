"""Group commit of audit events: many concurrent appends, one durable transaction.

Each :meth:`~fedshield.storage.records.EventLog.record` must be committed (on SQLite:
WAL with ``synchronous=FULL``, so fsynced) before it returns, because the caller replies
right after. One transaction per event caps the rate at one fsync per event (a few
hundred per second on this machine's disk). Group commit (DeWitt et al., "Implementation
techniques for main memory database systems", SIGMOD 1984; the same idea as
PostgreSQL's ``commit_delay`` and InnoDB's binlog group commit) keeps every event's
durability and pays the fsync once per *batch*:

* a caller queues its event and, if no batch is being prepared, becomes the *leader*:
  it takes every event queued so far and *prepares* it (chains and signs it in queue
  order, :func:`~fedshield.storage.audit.prepare_links`: CPU only) after the chain head
  the previous batch will leave;
* it then hands the lead to the first caller that queued meanwhile, who prepares the
  next batch while this one is written: so the signatures of one batch are computed
  while the previous batch's fsync runs (which releases the GIL), instead of after it;
* batches are written strictly in the order they were prepared, each in one write
  transaction (``BEGIN IMMEDIATE``): insert the events and their prepared links, commit,
  release every caller of the batch (with its event id, or the error).

No timer and no added latency: a lone caller writes its event at once, exactly as one
transaction per event did. What it guarantees:

* **order**: ``seq`` follows queue order, and a batch's events are chained after
  everything committed before it: the chain head is read again under the write lock,
  and prepared links whose base is not that head (the batch before failed, or another
  process or a registry transaction appended in between) are recomputed there;
* **durability**: a caller returns only after the COMMIT of the transaction holding
  its event returned;
* **atomicity**: a batch commits whole or not at all. If it fails (disk full, the
  database locked past its timeout, the log signed by another key), every caller in it
  gets the error and nothing of the batch is written; a crash mid-batch loses only
  events whose callers had not returned. The next batch starts from the committed head.

Events are checked (:func:`~fedshield.audit.entry.check_metadata`) by their caller
before they are queued, so one bad event never fails the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, insert, select

from fedshield.storage.audit import (
    PreparedLinks,
    audit_federation,
    audit_key,
    chain_events,
    prepare_links,
)
from fedshield.storage.db import Database, EventRow

__all__ = ["GroupCommit", "PendingEvent", "group_commit"]

_LAST_EVENT_ID: Final = select(func.max(EventRow.id))
_INSERT_EVENTS: Final = insert(EventRow)


class _Latch:
    """Wakes one waiting thread: a bare lock, cheaper than ``threading.Event``.

    :meth:`wait` returns once :meth:`set` was called, and consumes it (the next
    :meth:`wait` waits for the next :meth:`set`). At most one :meth:`set` may be
    pending at a time.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self) -> None:
        """Block until :meth:`set`."""
        self._lock.acquire()

    def set(self) -> None:
        """Wake the waiter (or the next call to :meth:`wait`)."""
        self._lock.release()


@dataclass
class PendingEvent:
    """An event waiting for its batch's commit (the row values of an ``EventRow``).

    Attributes
    ----------
    time, actor, action, resource, outcome, details
        The event's content; ``details`` already strict JSON data.
    id
        The event row id, set once the batch committed.
    """

    time: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    details: dict[str, Any]
    id: int = 0
    error: BaseException | None = None
    lead: bool = False
    done: _Latch = field(default_factory=lambda: _Latch())

    def values(self) -> dict[str, Any]:
        """Return the column values to insert."""
        return {
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "details": self.details,
        }


class GroupCommit:
    """The group committer of one database's audit events (see the module docstring).

    Parameters
    ----------
    db
        The database. Use :func:`group_commit` to get the one shared by every
        :class:`~fedshield.storage.records.EventLog` of a :class:`Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._queue: list[PendingEvent] = []
        self._preparing = False
        # Write order: batch number ``ticket`` writes when ``_serving`` reaches it.
        self._turn = threading.Condition()
        self._tickets = 0
        self._serving = 0
        # (ticket, (seq, hash)): the chain head batch ``ticket`` leaves, as prepared or
        # written; None when unknown.
        self._head: tuple[int, tuple[int, bytes]] | None = None
        #: Batches committed and events in them (for benchmarks and tests).
        self.batches = 0
        self.events = 0
        #: Batches whose prepared links were stale at write time and were recomputed.
        self.reprepared = 0

    def append(self, event: PendingEvent) -> int:
        """Queue ``event``, wait until the transaction holding it committed; return its id.

        Raises
        ------
        StorageError, IdentityError, ConfigError
            If the batch holding ``event`` failed: nothing of it was written.
        """
        with self._lock:
            self._queue.append(event)
            lead = event.lead = not self._preparing
            self._preparing = True
        if not lead:
            event.done.wait()  # the lead was passed to it, or its batch was written
        if event.lead:
            self._lead()
        if event.error is not None:
            raise event.error
        return event.id

    def _lead(self) -> None:
        """Prepare everything queued, pass the lead on, write the batch in turn."""
        ticket = self._tickets  # only the leader changes it
        with self._turn:
            # At most one batch written while this one is prepared: arrivals meanwhile
            # queue into the next batch instead of each becoming a batch of its own.
            while self._serving < ticket - 1:
                self._turn.wait()
        with self._lock:
            batch, self._queue = self._queue, []
            self._tickets = ticket + 1
        try:
            prepared = self._prepare(batch, ticket)
        except Exception:  # noqa: BLE001 - the write computes the links and raises properly
            prepared = None
        with self._lock:
            if prepared is not None:
                self._head = ticket, prepared.head
            following = self._queue[0] if self._queue else None
            if following is None:
                self._preparing = False
            else:
                following.lead = True
        if following is not None:
            following.done.set()
        with self._turn:
            while self._serving != ticket:
                self._turn.wait()
        try:
            stored = self._write(batch, prepared)
            with self._lock:
                if stored is not prepared:
                    self.reprepared += 1
                if stored is not None and (self._head is None or self._head[0] <= ticket):
                    self._head = ticket, stored.head
        except BaseException as exc:  # every waiter must be released, whatever failed
            for event in batch:
                event.error = exc
            with self._lock:
                if self._head is not None and self._head[0] >= ticket:
                    self._head = None  # prepared on what was never written
        finally:
            with self._turn:
                self.batches += 1
                self.events += len(batch)
                self._serving += 1
                self._turn.notify_all()
        for event in batch:
            event.done.set()

    def _prepare(self, batch: list[PendingEvent], ticket: int) -> PreparedLinks | None:
        """Chain and sign batch ``ticket`` after the head batch ``ticket - 1`` leaves.

        Returns ``None`` (the write then computes the links) when that head is unknown
        even after waiting for batch ``ticket - 1`` to be written: the first batch, or
        after a failure.
        """
        with self._lock:
            known = self._head
        if known is None or known[0] != ticket - 1:
            # The batch before was not prepared: its head is known once it is written.
            with self._turn:
                while self._serving < ticket:
                    self._turn.wait()
            with self._lock:
                known = self._head
            if known is None or known[0] != ticket - 1:
                return None
        federation = audit_federation(self._db)
        if federation is None:
            return None
        return prepare_links(audit_key(self._db), federation, known[1], batch)

    def _write(
        self, batch: list[PendingEvent], prepared: PreparedLinks | None
    ) -> PreparedLinks | None:
        with self._db.write_connection() as conn:
            if self._db.is_sqlite:
                # BEGIN IMMEDIATE holds the write lock: the ids after the largest are
                # ours to give, and one executemany is far cheaper than RETURNING, which
                # SQLite can only keep in order one row per statement.
                last = conn.execute(_LAST_EVENT_ID).scalar_one_or_none() or 0
                for i, event in enumerate(batch, start=1):
                    event.id = last + i
                conn.execute(_INSERT_EVENTS, [{"id": e.id, **e.values()} for e in batch])
            else:
                ids = conn.execute(
                    insert(EventRow).returning(EventRow.id, sort_by_parameter_order=True),
                    [event.values() for event in batch],
                )
                for event, (row_id,) in zip(batch, ids, strict=True):
                    event.id = row_id
            return chain_events(conn, self._db, batch, checked=True, prepared=prepared)


def group_commit(db: Database) -> GroupCommit:
    """Return ``db``'s group committer, creating it on first use (thread-safe)."""
    committer = db.audit_cache.get("group_commit")
    if not isinstance(committer, GroupCommit):
        committer = db.audit_cache.setdefault("group_commit", GroupCommit(db))
    return committer  # type: ignore[no-any-return]
