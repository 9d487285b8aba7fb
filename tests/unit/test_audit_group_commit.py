"""Group commit of audit events: order, durability, one valid chain, all-or-nothing batches.

Real SQLite files, real threads and a real killed process; a failing commit is a real
SQLite trigger aborting the transaction, never a mock.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.errors import IdentityError, StorageError
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, read_public_key
from fedshield.storage.group_commit import group_commit

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "w"


@pytest.fixture
def db(workdir: Path) -> Iterator[Database]:
    database = Database.for_workdir(workdir)
    database.federation = "gc"
    yield database
    database.close()


def record(log: EventLog, who: str, i: int) -> int:
    return log.record(
        actor=who,
        action="test.append",
        resource=f"thing/{i}",
        outcome="ok",
        details={"i": i, "who": who},
        now=T0 + timedelta(microseconds=i),
    )


def chain(workdir: Path) -> list[tuple[int, int, str, int]]:
    """``(seq, event_id, actor, i)`` of every link, in seq order, read with plain sqlite3."""
    conn = sqlite3.connect(workdir / "fedshield.db")
    try:
        rows = conn.execute(
            "SELECT c.seq, c.event_id, e.actor, json_extract(e.details, '$.i') "
            "FROM audit_chain c JOIN events e ON e.id = c.event_id ORDER BY c.seq"
        ).fetchall()
    finally:
        conn.close()
    return [(int(a), int(b), str(c), int(d)) for a, b, c, d in rows]


def run_threads(log: EventLog, threads: int, each: int) -> dict[str, list[int]]:
    """Append ``each`` events from each of ``threads`` threads at once; ids per thread."""
    ids: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(name: str) -> None:
        try:
            start.wait()
            ids[name] = [record(log, name, i) for i in range(each)]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    return ids


def verifies(db: Database, workdir: Path) -> int:
    return AuditLog(db).verify(read_public_key(workdir / "audit.pub"), workers=0).entries


def test_a_lone_appender_commits_each_event_in_call_order(db: Database, workdir: Path) -> None:
    log = EventLog(db)
    ids = [record(log, "solo", i) for i in range(5)]
    assert ids == sorted(ids)
    assert [(s, e, i) for s, e, _, i in chain(workdir)] == [(n + 1, ids[n], n) for n in range(5)]
    assert group_commit(db).batches == 5  # no waiting for company: one commit each
    assert verifies(db, workdir) == 5


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(threads=st.integers(2, 12), each=st.integers(1, 12))
def test_concurrent_appenders_yield_one_valid_chain_in_order(
    tmp_path_factory: pytest.TempPathFactory, threads: int, each: int
) -> None:
    workdir = tmp_path_factory.mktemp("gc") / "w"
    db = Database.for_workdir(workdir)
    try:
        ids = run_threads(EventLog(db), threads, each)
        links = chain(workdir)
        total = threads * each
        assert verifies(db, workdir) == total
        assert [s for s, *_ in links] == list(range(1, total + 1))
        # Every acknowledged id is chained exactly once; seq order is insertion order.
        assert sorted(e for _, e, _, _ in links) == sorted(i for v in ids.values() for i in v)
        assert [e for _, e, _, _ in links] == sorted(e for _, e, _, _ in links)
        # Each thread's events keep its call order in the chain.
        for name, mine in ids.items():
            assert [i for _, _, who, i in links if who == name] == list(range(each))
            assert mine == sorted(mine)
        committer = group_commit(db)
        assert committer.events == total and 1 <= committer.batches <= total
    finally:
        db.close()


def test_appenders_that_wait_share_one_commit(db: Database, workdir: Path) -> None:
    """While another connection holds the write lock, arrivals queue into one batch."""
    log = EventLog(db)
    record(log, "first", 0)
    blocker = sqlite3.connect(workdir / "fedshield.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        done: list[int] = []
        workers = [
            threading.Thread(target=lambda k=k: done.append(record(log, f"t{k}", k)))
            for k in range(20)
        ]
        for w in workers:
            w.start()
        time.sleep(0.5)  # the first leader waits on the lock; the others queue behind it
        assert done == []  # nobody is acknowledged before its commit
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for w in workers:
        w.join()
    assert len(done) == 20
    # The lock holder's wait was shared: besides the first event, one batch waited on
    # the lock, one was prepared behind it, and every other arrival queued into one.
    assert group_commit(db).batches <= 4
    assert verifies(db, workdir) == 21


def test_a_failed_commit_releases_every_waiter_and_writes_nothing(
    db: Database, workdir: Path
) -> None:
    log = EventLog(db)
    for i in range(3):
        record(log, "before", i)
    conn = sqlite3.connect(workdir / "fedshield.db", isolation_level=None)
    # A real failure inside the batch's transaction, after its events were inserted and
    # some links written: the 6th link aborts (as a full disk or an I/O error would).
    conn.execute(
        "CREATE TRIGGER fail_link BEFORE INSERT ON audit_chain WHEN NEW.seq >= 6 "
        "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END"
    )
    conn.execute("BEGIN IMMEDIATE")  # hold the lock so that the waiters share one batch
    outcomes: list[BaseException | int] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        try:
            result: BaseException | int = record(log, f"t{k}", k)
        except StorageError as exc:
            result = exc
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    conn.execute("ROLLBACK")
    for w in workers:
        w.join(timeout=30)
    assert not any(w.is_alive() for w in workers)  # every waiter was released
    assert len(outcomes) == 12
    # Whoever committed before the trigger fired got seq 4 and 5 and an id; everyone in
    # a batch that reached seq 6 got the error, and none of that batch was written.
    acked = [o for o in outcomes if isinstance(o, int)]
    failed = [o for o in outcomes if isinstance(o, StorageError)]
    assert len(acked) + len(failed) == 12 and len(failed) >= 7
    assert all("simulated write failure" in str(e) for e in failed)
    links = chain(workdir)
    assert len(links) == 3 + len(acked) <= 5
    assert sorted(acked) == [e for _, e, _, _ in links[3:]]
    events = sqlite3.connect(workdir / "fedshield.db").execute("SELECT count(*) FROM events")
    assert events.fetchone()[0] == len(links)  # no event row without its link
    conn.execute("DROP TRIGGER fail_link")
    conn.close()
    # The next batch chains from the committed head, not from the failed batch.
    record(log, "after", 99)
    assert verifies(db, workdir) == len(links) + 1


def test_a_batch_refused_for_the_wrong_key_fails_every_waiter(workdir: Path) -> None:
    db = Database.for_workdir(workdir)
    record(EventLog(db), "first", 0)
    db.close()
    key = read_public_key(workdir / "audit.pub")
    (workdir / "audit.key").unlink()  # a process with another key
    db = Database.for_workdir(workdir)
    try:
        log = EventLog(db)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                record(log, f"t{k}", k)
            except IdentityError as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        assert len(errors) == 8
        assert AuditLog(db).verify(key, workers=0).entries == 1
        assert len(chain(workdir)) == 1
    finally:
        db.close()


CRASHER = """
import sys, threading
from datetime import UTC, datetime
from pathlib import Path
from fedshield.storage import Database, EventLog

db = Database.for_workdir(Path(sys.argv[1]))
log = EventLog(db)
out = threading.Lock()

def work(k):
    for i in range(100000):
        n = log.record(actor=f"t{k}", action="crash.test", resource="r", outcome="ok",
                       details={"i": i}, now=datetime.now(UTC))
        with out:
            sys.stdout.write(f"{n}\\n")
            sys.stdout.flush()

for k in range(8):
    threading.Thread(target=work, args=(k,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.slow
def test_every_acknowledged_event_survives_a_killed_process(workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(workdir)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[int] = []
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)  # mid-batch: no clean shutdown, no final commit
    proc.wait()
    acked += [int(line) for line in proc.stdout.read().split()]
    assert len(acked) >= 300, "the appender did not get going"
    db = Database.for_workdir(workdir)
    try:
        entries = verifies(db, workdir)
    finally:
        db.close()
    links = chain(workdir)
    assert entries == len(links)
    assert set(acked) <= {e for _, e, _, _ in links}  # acknowledged means committed


def test_links_prepared_on_a_head_another_writer_moved_are_recomputed(
    db: Database, workdir: Path
) -> None:
    """A batch is signed ahead of its transaction; if the log moved meanwhile, it is redone."""
    from fedshield.storage.audit import chain_events
    from fedshield.storage.db import EventRow

    log = EventLog(db)
    record(log, "first", 0)
    committer = group_commit(db)
    assert committer.reprepared == 1  # the very first batch has no known head to build on
    record(log, "second", 1)  # prepared on the head the first batch left: used as is
    assert committer.reprepared == 1
    # Another writer (as the model registry does) appends in its own transaction.
    with db.transaction(write=True) as session:
        row = EventRow(
            time=T0, actor="registry", action="model.commit", resource="model/1",
            outcome="ok", details={"i": 99, "version": 1},
        )  # fmt: skip
        session.add(row)
        session.flush()
        chain_events(session, db, [row])
    record(log, "third", 2)  # prepared on the stale head: recomputed under the lock
    assert committer.reprepared == 2
    assert [actor for _, _, actor, _ in chain(workdir)] == ["first", "second", "registry", "third"]
    assert verifies(db, workdir) == 4
