"""Every way of verifying names the same first bad entry, with the same check.

One real log (SQLite, 40 signed entries, tree heads after 10, 20 and 30) is tampered
with in random ways, one to three at a time, directly in SQLite; each tampered copy is
verified four ways, and the verdicts must agree exactly: every signature checked one by
one inline (``workers=0, all_signatures=True``: the reference), the same with worker
processes in chunks of 3 (``workers=2``), and both again with the signatures the tree
heads vouch for left to the heads (the default).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.audit.verify import ChainRecord, verify_log
from fedshield.errors import AuditError
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, read_public_key, sign_tree_head

ENTRIES = 40
T0 = datetime(2025, 1, 1, tzinfo=UTC)

Tamper = Callable[[sqlite3.Connection], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("pv") / "w"
    db = Database.for_workdir(workdir)
    db.federation = "pv"
    log = EventLog(db)
    for i in range(ENTRIES):
        log.record(
            actor=f"site-{i % 3}",
            action="round.contribution",
            resource=f"participant/site-{i % 3}",
            outcome="included",
            details={"round": i // 10 + 1, "score": i / 7},
            now=T0 + timedelta(seconds=i),
        )
        if (i + 1) % 10 == 0 and i + 1 < ENTRIES:
            sign_tree_head(db, round=(i + 1) // 10, now=T0)
    db.close()
    return workdir


def _event_id(sql: sqlite3.Connection, seq: int) -> int:
    return int(sql.execute("SELECT event_id FROM audit_chain WHERE seq = ?", (seq,)).fetchone()[0])


def _flip(text: str) -> str:
    return ("0" if text[0] != "0" else "1") + text[1:]


def tampers() -> st.SearchStrategy[tuple[str, int]]:
    kinds = st.sampled_from(
        [
            "actor",
            "details",
            "signature",
            "entry_hash",
            "delete_event",
            "delete_link",
            "swap",
            "truncate",
            "time",
            "head_digest",
            "drop_head_digest",
        ]
    )
    return st.tuples(kinds, st.integers(1, ENTRIES - 1))


def apply(sql: sqlite3.Connection, kind: str, seq: int) -> None:
    if sql.execute("SELECT 1 FROM audit_chain WHERE seq = ?", (seq,)).fetchone() is None:
        return  # an earlier tamper already removed it
    event = _event_id(sql, seq)
    if kind == "actor":
        sql.execute("UPDATE events SET actor = actor || 'x' WHERE id = ?", (event,))
    elif kind == "details":
        sql.execute("UPDATE events SET details = '{\"round\": 99}' WHERE id = ?", (event,))
    elif kind in ("signature", "entry_hash"):
        (value,) = sql.execute(
            f"SELECT {kind} FROM audit_chain WHERE seq = ?",  # noqa: S608
            (seq,),
        ).fetchone()
        sql.execute(
            f"UPDATE audit_chain SET {kind} = ? WHERE seq = ?",  # noqa: S608
            (_flip(value), seq),
        )
    elif kind == "delete_event":
        sql.execute("DELETE FROM events WHERE id = ?", (event,))
    elif kind == "delete_link":
        sql.execute("DELETE FROM audit_chain WHERE seq = ?", (seq,))
    elif kind == "swap":
        if sql.execute("SELECT 1 FROM audit_chain WHERE seq = ?", (seq + 1,)).fetchone() is None:
            return
        other = _event_id(sql, seq + 1)
        sql.execute("UPDATE audit_chain SET event_id = -1 WHERE seq = ?", (seq,))
        sql.execute("UPDATE audit_chain SET event_id = ? WHERE seq = ?", (event, seq + 1))
        sql.execute("UPDATE audit_chain SET event_id = ? WHERE seq = ?", (other, seq))
    elif kind == "time":
        sql.execute("UPDATE events SET time = '2025-01-01 00:00:07.000001' WHERE id = ?", (event,))
    elif kind in ("head_digest", "drop_head_digest"):
        # The head whose size is the first multiple of 10 at or after seq (if any).
        row = sql.execute(
            "SELECT h.id, s.digest FROM audit_tree_heads h JOIN audit_tree_head_signatures s "
            "ON s.head_id = h.id WHERE h.size >= ? ORDER BY h.size LIMIT 1",
            (seq,),
        ).fetchone()
        if row is None:
            return
        if kind == "head_digest":
            sql.execute(
                "UPDATE audit_tree_head_signatures SET digest = ? WHERE head_id = ?",
                (_flip(row[1]), row[0]),
            )
        else:
            sql.execute("DELETE FROM audit_tree_head_signatures WHERE head_id = ?", (row[0],))
    elif kind == "truncate":
        sql.execute(
            "DELETE FROM events WHERE id IN (SELECT event_id FROM audit_chain WHERE seq >= ?)",
            (seq,),
        )
        sql.execute("DELETE FROM audit_chain WHERE seq >= ?", (seq,))


def verdict(
    db: Database, workdir: Path, workers: int, *, all_signatures: bool
) -> tuple[int | None, str | None]:
    key = read_public_key(workdir / "audit.pub")
    try:
        AuditLog(db).verify(key, workers=workers, chunk=3, all_signatures=all_signatures)
    except AuditError as exc:
        return exc.seq, exc.check
    return None, None


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(tampers(), min_size=0, max_size=3))
def test_every_way_of_verifying_names_the_same_entry(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[str, int]]
) -> None:
    workdir = tmp_path_factory.mktemp("copy") / "w"
    shutil.copytree(pristine, workdir)
    sql = sqlite3.connect(workdir / "fedshield.db", isolation_level=None)
    try:
        for kind, seq in changes:
            apply(sql, kind, seq)
    finally:
        sql.close()
    db = Database.for_workdir(workdir)
    try:
        serial = verdict(db, workdir, workers=0, all_signatures=True)
        parallel = verdict(db, workdir, workers=2, all_signatures=True)
        vouched = verdict(db, workdir, workers=0, all_signatures=False)
        vouched_parallel = verdict(db, workdir, workers=2, all_signatures=False)
    finally:
        db.close()
    assert parallel == serial
    assert vouched == serial
    assert vouched_parallel == serial
    if not changes:
        assert serial == (None, None)


class InProcess:
    """A :class:`~fedshield.audit.verify.SignatureBatch` that checks on ``first_bad``."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.items: list[tuple[int, bytes, bytes]] = []

    def add(self, seq: int, signature: bytes, entry_hash: bytes) -> None:
        self.items.append((seq, signature, entry_hash))

    def first_bad(self) -> int | None:
        from fedshield.audit.verify import first_bad_signature

        return first_bad_signature(self.key, "pv", self.items)


def test_deferred_signatures_follow_the_checks_that_precede_them(pristine: Path) -> None:
    """A bad signature after the first other failure is never reported; one before is."""
    from fedshield.audit.entry import public_key_bytes

    db = Database.for_workdir(pristine)
    try:
        key = read_public_key(pristine / "audit.pub")
        with db.transaction() as session:
            records = [item.record() for item in AuditLog(db).entries(session)]
        heads = AuditLog(db).heads()
    finally:
        db.close()

    def run(recs: list[ChainRecord], batch: InProcess | None) -> tuple[int | None, str | None]:
        try:
            verify_log(recs, federation="pv", public_key=key, heads=heads, signatures=batch)
        except AuditError as exc:
            return exc.seq, exc.check
        return None, None

    bad_sig = ChainRecord(records[24].seq, records[24].entry, records[24].entry_hash, b"\0" * 64)
    other = records[6]
    bad_hash = ChainRecord(other.seq, other.entry, b"\1" * 32, other.signature)
    raw = public_key_bytes(key)
    for recs in (
        [*records[:24], bad_sig, *records[25:]],
        [*records[:6], bad_hash, *records[7:24], bad_sig, *records[25:]],
        [*records[:6], *records[7:24], bad_sig, *records[25:]],  # a gap before it
    ):
        assert run(recs, InProcess(raw)) == run(recs, None)
