"""What the audit log costs: signing one entry, durable appends, verifying a whole log.

JSON lines on stdout, every figure read against the machine's own Ed25519 speed
measured in the same run (the machine is shared: compare ratios, not absolutes):

* ``ed25519``: raw ``cryptography`` sign and verify of one 77-byte message (best of 5,
  CPU time; ``*_wall_us`` in wall time), the cores this process may use and the load
  average. These are the physical limits:
  one signature per appended entry, one verification per verified entry;
* ``entry_sign``: the pure CPU cost of one entry (canonical JSON + SHA3-256 chain hash
  + Ed25519 signature), in microseconds, and its ratio to the raw signature;
* ``append``: ``EventLog.record`` in a fresh workdir from ``threads`` threads at once
  (the coordinator's request handlers), each call returning only after the
  transaction holding its event committed to SQLite (WAL, ``synchronous=FULL``:
  fsynced). Concurrent calls share one transaction (group commit,
  ``fedshield.storage.group_commit``): ``commits`` and ``mean_batch`` say how many.
  ``threads: 1`` is the serial rate, one fsync per event. ``appends_per_s`` (goal
  >= 5,000), the CPU spent per append (all threads) and ``cpu_of_sign``, that over one
  raw signature, and ``of_sign_limit``: the rate as a fraction of one core signing
  nothing but entries;
* ``verify``: ``AuditLog.verify`` (read from SQLite, recompute every hash and the tree
  heads) over a log of ``--entries`` entries with one signed tree head per 10,000, in
  two modes:

  - ``signatures: "vouched"`` (the default of ``fedshield audit verify``): an entry
    signature under a verified tree head is checked through the head, which signs the
    digest of every signature it covers (:mod:`fedshield.audit.verify`), and the rest
    (``signatures_checked``: the tail after the last head) one by one. Same verdict as
    the other mode. Its limit is the hashing alone: ``hash_floor_s`` is SHA3-256 over
    the canonical entries, the Merkle leaves and nodes, and the signatures digest,
    measured on the same entries in this run (no parsing, no reading);
  - ``signatures: "all"`` (``--all-signatures``): every entry signature verified one by
    one, inline (``workers: 0``) and by one worker process per core while this process
    recomputes the chain. ``floor_s`` is the Ed25519 verifications alone spread over
    every core; ``of_floor`` is the measured time over it.

  ``cpu_us_per_entry`` counts this process and its workers, and ``cpu_of_verify`` is
  that over one raw verification: it depends less on how busy the shared machine is
  than the wall time. Goal: 1e5 entries in < 5 s.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python benchmarks/audit.py
    PYTHONPATH=src .venv/bin/python benchmarks/audit.py --entries 20000 --threads 1 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, insert, select

from fedshield.audit import Entry, MerkleAccumulator, chain_hash, sign_entry, signatures_digest
from fedshield.audit.entry import chain_hash_encoded
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, chain_events, read_public_key, sign_tree_head
from fedshield.storage.db import EventRow
from fedshield.storage.group_commit import PendingEvent, group_commit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DETAILS = {"round": 12, "attempt": 1, "model_version": 12, "model_sha3": "ab" * 32}
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load() -> float:
    return round(os.getloadavg()[0], 2)


def bench_ed25519() -> dict[str, object]:
    key = ed25519.Ed25519PrivateKey.generate()
    message = b"x" * 77
    signature = key.sign(message)
    public = key.public_key()

    def best_us(fn: Callable[[], object], timer: Callable[[], float]) -> float:
        return 1e6 * min(timeit.repeat(fn, number=500, repeat=5, timer=timer)) / 500

    def verify() -> None:
        public.verify(signature, message)

    # CPU time is what the ratios below divide by: on a loaded machine the wall time of
    # a tight loop also counts the time this process waited for a core.
    return {
        "bench": "ed25519",
        "sign_us": best_us(lambda: key.sign(message), time.process_time),
        "verify_us": best_us(verify, time.process_time),
        "sign_wall_us": best_us(lambda: key.sign(message), time.perf_counter),
        "verify_wall_us": best_us(verify, time.perf_counter),
        "cores": CORES,
        "load_avg_1m": load(),
    }


def bench_sign(count: int, sign_us: float) -> dict[str, object]:
    key = ed25519.Ed25519PrivateKey.generate()
    best = float("inf")
    for _ in range(5):
        prev = bytes(32)
        start = time.process_time()  # CPU time, as the raw figures it is read against
        for seq in range(1, count + 1):
            entry = Entry(seq, T0, "coordinator", "round.contribution", "participant/site-1",
                          "included", DETAILS)  # fmt: skip
            prev = chain_hash(prev, entry)
            sign_entry(key, federation="bench", seq=seq, entry_hash=prev)
        best = min(best, time.process_time() - start)
    us = 1e6 * best / count
    return {"bench": "entry_sign", "entries": count, "us_per_entry": us, "of_sign": us / sign_us}


def bench_append(root: Path, threads: int, count: int, sign_us: float) -> dict[str, object]:
    db = Database.for_workdir(root / f"append-{threads}")
    db.federation = "bench"
    log = EventLog(db)
    log.record(actor="c", action="warmup", resource="r", outcome="ok", details={}, now=T0)
    each = max(1, count // threads)
    gate = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        gate.wait()
        for i in range(each):
            log.record(
                actor="coordinator",
                action="round.contribution",
                resource=f"participant/site-{k}",
                outcome="included",
                details=DETAILS,
                now=T0 + timedelta(microseconds=i),
            )

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    committer = group_commit(db)
    batches, events = committer.batches, committer.events
    gate.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    commits, appended = committer.batches - batches, committer.events - events
    db.close()
    rate = appended / elapsed
    return {
        "bench": "append",
        "threads": threads,
        "appends": appended,
        "durable": "each call returns after the COMMIT holding its event (sqlite WAL, "
        "synchronous=FULL)",
        "appends_per_s": rate,
        "commits": commits,
        "mean_batch": appended / commits,
        "cpu_us_per_append": 1e6 * cpu / appended,
        "cpu_of_sign": 1e6 * cpu / appended / sign_us,
        "of_sign_limit": rate * sign_us / 1e6,
        "goal_appends_per_s": 5000,
        "load_avg_1m": load(),
    }


def write_log(workdir: Path, count: int, head_every: int) -> float:
    """Write a log of ``count`` entries in transactions of 5,000 (the group commit path)."""
    db = Database.for_workdir(workdir)
    db.federation = "bench"
    start = time.perf_counter()
    for first in range(0, count, 5000):
        batch = [
            PendingEvent(
                time=T0 + timedelta(microseconds=i),
                actor="coordinator",
                action="round.contribution",
                resource=f"participant/site-{i % 10}",
                outcome="included",
                details=dict(DETAILS),
            )
            for i in range(first, min(count, first + 5000))
        ]
        with db.transaction(write=True) as session:
            conn = session.connection()
            last = conn.execute(select(func.max(EventRow.id))).scalar_one_or_none() or 0
            for i, event in enumerate(batch, start=1):
                event.id = last + i
            conn.execute(insert(EventRow), [{"id": e.id, **e.values()} for e in batch])
            chain_events(session, db, batch)
        done = first + len(batch)
        if done % head_every == 0 or done == count:
            sign_tree_head(db, round=done // head_every, now=T0)
    db.close()
    return time.perf_counter() - start


def hash_floor(workdir: Path) -> float:
    """Seconds of the SHA3-256 work alone of verifying the log: best of 3, CPU time."""
    db = Database.for_workdir(workdir)
    with db.transaction() as session:
        items = [
            (item.entry.canonical(), bytes.fromhex(item.signature))
            for item in AuditLog(db).entries(session)
            if item.entry is not None
        ]
    db.close()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        prev, acc, signed = bytes(32), MerkleAccumulator(), signatures_digest()
        for encoding, signature in items:
            prev = chain_hash_encoded(prev, encoding)
            acc.append(prev)
            signed.update(signature)
        acc.root()
        best = min(best, time.process_time() - start)
    return best


def bench_verify(
    workdir: Path, count: int, workers: int, verify_us: float, *, all_signatures: bool
) -> dict[str, object]:
    db = Database.for_workdir(workdir)
    key = read_public_key(workdir / "audit.pub")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, cpu = time.perf_counter(), time.process_time()
    report = AuditLog(db).verify(key, workers=workers, all_signatures=all_signatures)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped by now
    workers_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    db.close()
    assert report.entries == count
    result: dict[str, object] = {
        "bench": "verify",
        "signatures": "all" if all_signatures else "vouched",
        "entries": count,
        "tree_heads": report.tree_heads,
        "signatures_checked": report.signatures_checked,
        "workers": workers,
        "verify_s": elapsed,
        "us_per_entry": 1e6 * elapsed / count,
        "parent_cpu_s": cpu,
        "workers_cpu_s": workers_cpu,
        "cpu_us_per_entry": 1e6 * (cpu + workers_cpu) / count,
        "cpu_of_verify": (cpu + workers_cpu) / (count * verify_us / 1e6),
    }
    if all_signatures:
        floor = count * verify_us / 1e6 / CORES
        result |= {"floor_s": floor, "of_floor": elapsed / floor}
    else:
        floor = hash_floor(workdir)
        result |= {"hash_floor_s": floor, "of_hash_floor": elapsed / floor}
    return result | {
        "projected_s_for_1e5": elapsed * 1e5 / count,
        "goal_s_for_1e5": 5.0,
        "load_avg_1m": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sign", type=int, default=2000)
    parser.add_argument("--appends", type=int, default=4000, help="per concurrent run")
    parser.add_argument("--serial-appends", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--no-serial-verify", action="store_true")
    args = parser.parse_args()
    raw = bench_ed25519()
    print(json.dumps(raw), flush=True)
    sign_us, verify_us = float(raw["sign_us"]), float(raw["verify_us"])  # type: ignore[arg-type]
    print(json.dumps(bench_sign(args.sign, sign_us)), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for threads in args.threads:
            count = args.serial_appends if threads == 1 else args.appends
            print(json.dumps(bench_append(root, threads, count, sign_us)), flush=True)
        workdir = root / "verify"
        written = write_log(workdir, args.entries, head_every=10_000)
        print(json.dumps({"bench": "verify_log_written", "entries": args.entries,
                          "write_s": written}), flush=True)  # fmt: skip
        for workers, every in ((CORES, False), (CORES, True), (0, True)):
            if workers == 0 and args.no_serial_verify:
                continue
            result = bench_verify(workdir, args.entries, workers, verify_us, all_signatures=every)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
