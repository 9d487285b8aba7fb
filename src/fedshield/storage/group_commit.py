"""Group commit of audit events: many concurrent appends, one durable transaction.

Each :meth:`~fedshield.storage.records.EventLog.record` must be committed (on SQLite:
WAL with ``synchronous=FULL``, so fsynced) before it returns, because the caller replies
right after. One transaction per event caps the rate at one fsync per event (a few
hundred per second on this machine's disk). Group commit (DeWitt et al., "Implementation
techniques for main memory database systems", SIGMOD 1984; the same idea as
PostgreSQL's ``commit_delay`` and InnoDB's binlog group commit) keeps every event's
durability and pays the fsync once per *batch*:

* a caller queues its event and, if no write is in progress, becomes the *leader*: it
  takes every event queued so far, and in one write transaction (``BEGIN IMMEDIATE``)
  inserts them, chains and signs them in queue order and commits;
* callers arriving while that transaction runs wait; when it ends, the leader releases
  every caller of its batch (with its event id, or the error) and hands the lead to the
  first waiting caller, whose batch is everything that queued meanwhile.

No timer and no added latency: a lone caller writes its event at once, exactly as one
transaction per event did. What it guarantees:

* **order**: ``seq`` follows queue order, and a batch's events are chained after
  everything committed before it (the chain head is read under the write lock);
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

from fedshield.storage.audit import chain_events
from fedshield.storage.db import Database, EventRow

__all__ = ["GroupCommit", "PendingEvent", "group_commit"]

_LAST_EVENT_ID: Final = select(func.max(EventRow.id))
_INSERT_EVENTS: Final = insert(EventRow)


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
    done: threading.Event = field(default_factory=threading.Event)

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
        self._writing = False
        #: Batches committed and events in them (for benchmarks and tests).
        self.batches = 0
        self.events = 0

    def append(self, event: PendingEvent) -> int:
        """Queue ``event``, wait until the transaction holding it committed; return its id.

        Raises
        ------
        StorageError, IdentityError, ConfigError
            If the batch holding ``event`` failed: nothing of it was written.
        """
        with self._lock:
            self._queue.append(event)
            lead = event.lead = not self._writing
            self._writing = True
        if not lead:
            event.done.wait()
        if event.lead:
            self._lead()
        if event.error is not None:
            raise event.error
        return event.id

    def _lead(self) -> None:
        """Write everything queued in one transaction, release it, pass the lead on."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._write(batch)
        except BaseException as exc:  # every waiter must be released, whatever failed
            for event in batch:
                event.error = exc
        with self._lock:
            self.batches += 1
            self.events += len(batch)
            following = self._queue[0] if self._queue else None
            if following is None:
                self._writing = False
            else:
                following.lead = True
        for event in batch:
            if not event.lead:
                event.done.set()
        if following is not None:
            following.done.set()

    def _write(self, batch: list[PendingEvent]) -> None:
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
            chain_events(conn, self._db, batch, checked=True)


def group_commit(db: Database) -> GroupCommit:
    """Return ``db``'s group committer, creating it on first use (thread-safe)."""
    committer = db.audit_cache.get("group_commit")
    if not isinstance(committer, GroupCommit):
        committer = db.audit_cache.setdefault("group_commit", GroupCommit(db))
    return committer  # type: ignore[no-any-return]
