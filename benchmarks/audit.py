"""What the audit log costs: signing one entry, durable appends, verifying a whole log.

Three JSON lines on stdout:

* ``entry_sign``: the pure cost of one entry (canonical JSON + SHA3-256 chain hash +
  Ed25519 signature), best-of-5 mean over ``--sign`` entries, in microseconds;
* ``append``: ``EventLog.record`` in a fresh workdir, ``--appends`` times, each its own
  transaction committed to SQLite (WAL, ``synchronous=FULL``: fsynced) before it
  returns, i.e. durable before any reply. ``appends_per_s`` (goal >= 5,000) and the
  per-event cost; on a loaded machine the fsync dominates;
* ``verify``: ``AuditLog.verify`` (read from SQLite, recompute every hash, verify every
  signature and the tree heads) over a log of ``--entries`` entries with one signed tree
  head per 1,000 entries. The log is written in one transaction (appending 1e5 entries
  one durable transaction at a time would only measure the disk). Goal: 1e5 entries in
  < 5 s.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python benchmarks/audit.py
    PYTHONPATH=src .venv/bin/python benchmarks/audit.py --entries 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit import Entry, chain_hash, sign_entry
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, chain_events, read_public_key, sign_tree_head
from fedshield.storage.db import EventRow

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DETAILS = {"round": 12, "attempt": 1, "model_version": 12, "model_sha3": "ab" * 32}


def bench_sign(count: int) -> dict[str, object]:
    key = ed25519.Ed25519PrivateKey.generate()
    best = float("inf")
    for _ in range(5):
        prev = bytes(32)
        start = time.perf_counter()
        for seq in range(1, count + 1):
            entry = Entry(seq, T0, "coordinator", "round.contribution", "participant/site-1",
                          "included", DETAILS)  # fmt: skip
            prev = chain_hash(prev, entry)
            sign_entry(key, federation="bench", seq=seq, entry_hash=prev)
        best = min(best, time.perf_counter() - start)
    # The machine's own Ed25519 speed right now, to read the figures against (it is
    # shared and loaded: every figure here scales with it).
    message = b"x" * 77
    signature = key.sign(message)
    public = key.public_key()
    sign_s = min(timeit.repeat(lambda: key.sign(message), number=200, repeat=5)) / 200
    verify_s = min(timeit.repeat(lambda: public.verify(signature, message), number=200, repeat=5))
    return {
        "bench": "entry_sign",
        "entries": count,
        "us_per_entry": 1e6 * best / count,
        "ed25519_sign_us": 1e6 * sign_s,
        "ed25519_verify_us": 1e6 * verify_s / 200,
    }


def bench_append(root: Path, count: int) -> dict[str, object]:
    db = Database.for_workdir(root / "append")
    db.federation = "bench"
    log = EventLog(db)
    log.record(actor="c", action="warmup", resource="r", outcome="ok", details={}, now=T0)
    start = time.perf_counter()
    for i in range(count):
        log.record(
            actor="coordinator",
            action="round.contribution",
            resource=f"participant/site-{i % 10}",
            outcome="included",
            details=DETAILS,
            now=T0 + timedelta(microseconds=i),
        )
    elapsed = time.perf_counter() - start
    db.close()
    return {
        "bench": "append",
        "appends": count,
        "durable": "sqlite WAL synchronous=FULL, one commit per append",
        "appends_per_s": count / elapsed,
        "us_per_append": 1e6 * elapsed / count,
        "goal_appends_per_s": 5000,
    }


def bench_verify(root: Path, count: int) -> dict[str, object]:
    workdir = root / "verify"
    db = Database.for_workdir(workdir)
    db.federation = "bench"
    start = time.perf_counter()
    for first in range(0, count, 1000):
        with db.transaction(write=True) as session:
            rows = [
                EventRow(
                    time=T0 + timedelta(microseconds=i),
                    actor="coordinator",
                    action="round.contribution",
                    resource=f"participant/site-{i % 10}",
                    outcome="included",
                    details=DETAILS,
                )
                for i in range(first, min(count, first + 1000))
            ]
            session.add_all(rows)
            session.flush()
            chain_events(session, db, rows)
        sign_tree_head(db, round=first // 1000 + 1, now=T0)
    written = time.perf_counter() - start
    key = read_public_key(workdir / "audit.pub")
    start = time.perf_counter()
    report = AuditLog(db).verify(key)
    elapsed = time.perf_counter() - start
    db.close()
    assert report.entries == count
    return {
        "bench": "verify",
        "entries": count,
        "tree_heads": report.tree_heads,
        "verify_s": elapsed,
        "us_per_entry": 1e6 * elapsed / count,
        "write_s": written,
        "goal_s_for_1e5": 5.0,
        "projected_s_for_1e5": elapsed * 1e5 / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sign", type=int, default=2000)
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(bench_sign(args.sign)), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(bench_append(Path(tmp), args.appends)), flush=True)
        print(json.dumps(bench_verify(Path(tmp), args.entries)), flush=True)


if __name__ == "__main__":
    main()
