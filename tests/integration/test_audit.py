"""The audit log of a real simulation: untouched it verifies; every tampering is named.

One small in-process federation (digits, 3 sites, 2 rounds, no DP, plain aggregation)
writes a real workdir once per module; each test tampers with its own copy directly in
SQLite, as someone with write access to the database but not the coordinator's audit
key would, and runs ``fedshield audit verify`` in-process.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit import (
    Entry,
    Receipt,
    anchor_hash,
    chain_hash,
    check_metadata,
    public_key_bytes,
    sign_entry,
    sign_tree_head,
    signatures_digest,
    verify_receipt,
)
from fedshield.audit.merkle import merkle_root
from fedshield.cli import main
from fedshield.config import parse_config
from fedshield.errors import AuditError
from fedshield.federation.simulation import run_simulation
from fedshield.identity.pki import load_signing_key
from fedshield.storage.audit import read_public_key

pytestmark = pytest.mark.slow

AUDIT_EXIT = AuditError.exit_code


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit-sim")
    config = parse_config(
        {
            "federation": {"name": "audit-test", "seed": 1},
            "task": {"name": "digits", "local_epochs": 1, "learning_rate": 0.1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 3},
            "rounds": {"count": 2, "min_participants": 2, "max_retries": 0},
            "privacy": {"mode": "off"},
            "secure_aggregation": {"enabled": False},
        },
        source="test",
    )
    result = run_simulation(config, workdir=root / "work", base_dir=root)
    assert result.rounds_completed == 2
    return root / "work"


@pytest.fixture
def workdir(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(pristine, copy)
    return copy


@pytest.fixture
def sql(workdir: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(workdir / "fedshield.db", isolation_level=None)
    yield conn
    conn.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return int(done.value.code or 0), out, err


def verify(capsys: pytest.CaptureFixture[str], workdir: Path, *extra: str) -> tuple[int, str]:
    code, out, err = cli(capsys, "audit", "verify", "--workdir", str(workdir), *extra)
    return code, out + err


def assert_names(code: int, text: str, seq: int, check: str) -> None:
    assert code == AUDIT_EXIT, text
    flat = " ".join(text.split())
    assert f"failed at entry {seq}: {check}:" in flat, flat


def entry_count(sql: sqlite3.Connection) -> int:
    return int(sql.execute("SELECT count(*) FROM audit_chain").fetchone()[0])


# --------------------------------------------------------------------------- untouched


def test_an_untouched_log_verifies(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = verify(capsys, workdir)
    assert code == 0, text
    assert text.startswith("OK: ") and "tree heads verified" in text
    code, out, _ = cli(capsys, "audit", "verify", "--workdir", str(workdir), "--json", "-")
    summary = json.loads(out)
    assert summary["audit_verified"] is True
    # model v0, start, plain aggregation, no DP (federation + 3 sites), 2 x (commit +
    # 3 contributions), finish; one head per round and one at the end.
    assert summary["entries"] == 16 and summary["tree_heads"] == 3


def test_export_jsonl_has_every_entry_with_hash_and_signature(
    workdir: Path, capsys: pytest.CaptureFixture[str], sql: sqlite3.Connection
) -> None:
    out_path = workdir / "audit.jsonl"
    code, _, _ = cli(capsys, "audit", "export", "--workdir", str(workdir), "--out", str(out_path))
    assert code == 0
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, entry_count(sql) + 1))
    assert set(lines[0]) == {
        "seq", "time", "actor", "action", "resource", "outcome", "metadata",
        "entry_hash", "signature",
    }  # fmt: skip
    code, _, err = cli(capsys, "audit", "export", "--workdir", str(workdir), "--format", "csv")
    assert code == 2 and "jsonl" in err


# --------------------------------------------------------------------------- no payloads


FORBIDDEN_KEYS = {"weights", "update", "updates", "gradient", "data", "share", "shares",
                  "seed", "private_key", "secret", "mask"}  # fmt: skip


def test_no_entry_holds_a_payload(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "audit", "export", "--workdir", str(workdir))
    assert code == 0
    # The audit key's private bytes appear nowhere.
    raw = load_signing_key(workdir / "audit.key").private_bytes_raw().hex()
    assert raw not in out

    def keys(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)
        elif isinstance(value, list):
            for v in value:
                yield from keys(v)

    entries = [json.loads(line) for line in out.splitlines()]
    assert entries
    for entry in entries:
        check_metadata(entry["metadata"])  # no bytes, arrays, blobs, oversized values
        assert not FORBIDDEN_KEYS & set(keys(entry["metadata"])), entry
        floats = [v for v in json.dumps(entry["metadata"]).split(",") if "." in v]
        assert len(floats) < 50, entry  # a handful of scores, never a vector


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("column", "seq"),
    [("actor", 1), ("outcome", 4), ("resource", 9), ("time", 7), ("details", 5), ("action", 16)],
)
def test_one_modified_byte_is_named(
    workdir: Path,
    sql: sqlite3.Connection,
    capsys: pytest.CaptureFixture[str],
    column: str,
    seq: int,
) -> None:
    event_id = sql.execute("SELECT event_id FROM audit_chain WHERE seq = ?", (seq,)).fetchone()[0]
    (value,) = sql.execute(f"SELECT {column} FROM events WHERE id = ?", (event_id,)).fetchone()  # noqa: S608
    text = str(value)
    # Change one digit or letter in place, keeping the value readable.
    i = next(i for i, c in enumerate(text) if c.isdigit()) if column in ("time", "details") else 0
    swapped = "1" if text[i] != "1" else "2"
    if not text[i].isdigit():
        swapped = "X" if text[i] != "X" else "Y"
    sql.execute(
        f"UPDATE events SET {column} = ? WHERE id = ?",  # noqa: S608
        (text[:i] + swapped + text[i + 1 :], event_id),
    )
    code, text = verify(capsys, workdir)
    assert_names(code, text, seq, "hash")


def test_a_modified_hash_or_signature_is_named(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    (sig,) = sql.execute("SELECT signature FROM audit_chain WHERE seq = 4").fetchone()
    sql.execute(
        "UPDATE audit_chain SET signature = ? WHERE seq = 4",
        (("0" if sig[0] != "0" else "1") + sig[1:],),
    )
    code, text = verify(capsys, workdir)
    assert_names(code, text, 4, "signature")


def test_a_deleted_entry_is_named(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    sql.execute("DELETE FROM events WHERE id = (SELECT event_id FROM audit_chain WHERE seq = 6)")
    code, text = verify(capsys, workdir)
    assert_names(code, text, 6, "missing entry")


def test_an_entry_deleted_with_its_chain_link_is_named(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    sql.execute("DELETE FROM events WHERE id = (SELECT event_id FROM audit_chain WHERE seq = 6)")
    sql.execute("DELETE FROM audit_chain WHERE seq = 6")
    code, text = verify(capsys, workdir)
    assert_names(code, text, 6, "sequence")


def test_two_reordered_entries_are_named(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [sql.execute("SELECT event_id FROM audit_chain WHERE seq = ?", (s,)).fetchone()[0]
           for s in (8, 9)]  # fmt: skip
    # Swap which content each position links to (the same as swapping the rows' content).
    sql.execute("UPDATE audit_chain SET event_id = -1 WHERE seq = 8")
    sql.execute("UPDATE audit_chain SET event_id = ? WHERE seq = 9", (ids[0],))
    sql.execute("UPDATE audit_chain SET event_id = ? WHERE seq = 8", (ids[1],))
    code, text = verify(capsys, workdir)
    assert_names(code, text, 8, "hash")


def test_an_event_added_without_the_key_is_refused(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    sql.execute(
        "INSERT INTO events (time, actor, action, resource, outcome, details) "
        "VALUES ('2024-01-01 00:00:00.000000', 'admin', 'model.rollback', 'model/0', 'ok', '{}')"
    )
    code, text = verify(capsys, workdir)
    assert code == AUDIT_EXIT and "unchained" in text and "not in the chain" in text


def test_a_truncated_tail_is_named_against_the_last_tree_head(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    n = entry_count(sql)
    sql.execute("DELETE FROM events WHERE id IN (SELECT event_id FROM audit_chain WHERE seq > ?)",
                (n - 2,))  # fmt: skip
    sql.execute("DELETE FROM audit_chain WHERE seq > ?", (n - 2,))
    code, text = verify(capsys, workdir)
    assert_names(code, text, n - 1, "truncated")


def test_truncation_that_also_drops_the_heads_needs_a_receipt(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt_path = workdir.parent / "site-2-round-2.json"
    code, _, _ = cli(capsys, "audit", "receipt", "site-2", "--round", "2",
                     "--workdir", str(workdir), "--out", str(receipt_path))  # fmt: skip
    assert code == 0
    receipt = Receipt.from_json(json.loads(receipt_path.read_text()))
    assert verify_receipt(receipt, read_public_key(workdir / "audit.pub")).resource == (
        "participant/site-2"
    )
    # Cut the log back to before round 2's contributions, heads included.
    cut = receipt.entry.seq - 2
    sql.execute("DELETE FROM events WHERE id IN (SELECT event_id FROM audit_chain WHERE seq > ?)",
                (cut,))  # fmt: skip
    sql.execute("DELETE FROM audit_chain WHERE seq > ?", (cut,))
    sql.execute("DELETE FROM audit_tree_heads WHERE size > ?", (cut,))
    # Alone, the shorter log is indistinguishable from an honest one ...
    code, text = verify(capsys, workdir)
    assert code == 0, text
    # ... but not from the receipt the participant kept.
    code, text = verify(capsys, workdir, "--receipt", str(receipt_path))
    assert_names(code, text, cut + 1, "truncated")


def test_a_chain_rewritten_without_the_coordinator_key_fails_signatures(
    workdir: Path, sql: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    forger = ed25519.Ed25519PrivateKey.generate()
    (federation,) = sql.execute("SELECT federation FROM audit_log").fetchone()
    rows = sql.execute(
        "SELECT c.seq, e.time, e.actor, e.action, e.resource, e.outcome, e.details "
        "FROM audit_chain c JOIN events e ON e.id = c.event_id ORDER BY c.seq"
    ).fetchall()
    prev = anchor_hash(federation=federation, public_key=public_key_bytes(forger.public_key()))
    hashes, signatures = [], []
    for seq, time, actor, action, resource, outcome, details in rows:
        when = datetime.fromisoformat(time).replace(tzinfo=UTC)
        # The forger rewrites history: the insecure start now looks fine.
        outcome = "ok" if action == "security.plain_aggregation" else outcome
        entry = Entry(seq, when, actor, action, resource, outcome, json.loads(details))
        digest = chain_hash(prev, entry)
        signature = sign_entry(forger, federation=federation, seq=seq, entry_hash=digest)
        sql.execute(
            "UPDATE audit_chain SET entry_hash = ?, signature = ? WHERE seq = ?",
            (digest.hex(), signature.hex(), seq),
        )
        sql.execute(
            "UPDATE events SET outcome = ? WHERE id = (SELECT event_id FROM audit_chain "
            "WHERE seq = ?)",
            (outcome, seq),
        )
        hashes.append(digest)
        signatures.append(signature)
        prev = digest
    sql.execute("UPDATE audit_log SET public_key = ?",
                (public_key_bytes(forger.public_key()).hex(),))  # fmt: skip
    for head_id, round_, size in sql.execute("SELECT id, round, size FROM audit_tree_heads"):
        digest = signatures_digest()
        for signature in signatures[:size]:
            digest.update(signature)
        head = sign_tree_head(forger, federation=federation, round=round_, size=size,
                              root=merkle_root(hashes[:size]),
                              signatures=digest.digest())  # fmt: skip
        sql.execute("UPDATE audit_tree_heads SET root = ?, signature = ? WHERE id = ?",
                    (head.root.hex(), head.signature.hex(), head_id))  # fmt: skip
        sql.execute("UPDATE audit_tree_head_signatures SET digest = ? WHERE head_id = ?",
                    (digest.hexdigest(), head_id))  # fmt: skip
    code, text = verify(capsys, workdir)
    assert_names(code, text, 1, "signature")
    # Trusting the forger's key instead (what the database now claims) it would pass:
    # the trust anchor must come from outside the database.
    pinned = public_key_bytes(forger.public_key()).hex()
    code, text = verify(capsys, workdir, "--public-key", pinned)
    assert code == 0, text


# --------------------------------------------------------------------------- receipts


def test_a_receipt_verifies_and_a_forged_one_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir.parent / "receipt.json"
    code, _, _ = cli(capsys, "audit", "receipt", "site-1", "--round", "1",
                     "--workdir", str(workdir), "--out", str(path))  # fmt: skip
    assert code == 0
    data = json.loads(path.read_text())
    receipt = Receipt.from_json(data)
    entry = verify_receipt(receipt, read_public_key(workdir / "audit.pub"))
    assert (entry.action, entry.metadata["round"]) == ("round.contribution", 1)
    code, text = verify(capsys, workdir, "--receipt", str(path))
    assert code == 0 and "1 receipts" in text
    forger = ed25519.Ed25519PrivateKey.generate()
    forged = sign_tree_head(forger, federation=receipt.head.federation, round=1,
                            size=receipt.head.size, root=receipt.head.root,
                            signatures=bytes(32))  # fmt: skip
    path.write_text(json.dumps({**data, "tree_head": forged.to_json()}))
    code, text = verify(capsys, workdir, "--receipt", str(path))
    assert code == AUDIT_EXIT and "does not verify" in text
    code, _, err = cli(capsys, "audit", "receipt", "site-9", "--round", "1",
                       "--workdir", str(workdir))  # fmt: skip
    assert code == 4 and "no contribution" in err
