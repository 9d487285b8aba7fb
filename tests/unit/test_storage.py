"""Specification of fedshield.storage: database, blob store, model registry, records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sqlalchemy import text

import fedshield.storage as storage
from fedshield.errors import NotFoundError, PayloadError, StorageError
from fedshield.storage import (
    BlobStore,
    Database,
    EventLog,
    ModelRegistry,
    Participants,
    RoundLog,
)
from fedshield.tensors import decode, weights_sha3

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def later(minutes: int) -> datetime:
    """Return NOW plus some minutes."""
    return NOW + timedelta(minutes=minutes)


def make_weights(seed: int) -> dict[str, np.ndarray]:
    """Return a small deterministic model."""
    rng = np.random.default_rng(seed)
    return {
        "fc.bias": rng.standard_normal(3).astype(np.float32),
        "fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Return a fresh coordinator working directory."""
    return tmp_path / "work"


@pytest.fixture
def db(workdir: Path) -> Iterator[Database]:
    """Return a database in the workdir, closed after the test."""
    database = Database.for_workdir(workdir)
    yield database
    database.close()


@pytest.fixture
def blobs(workdir: Path) -> BlobStore:
    """Return a blob store in the workdir."""
    return BlobStore(workdir / "models")


@pytest.fixture
def registry(db: Database, blobs: BlobStore) -> ModelRegistry:
    """Return a model registry."""
    return ModelRegistry(db, blobs)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Assert two weight dicts are identical, bit for bit."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name])


# --------------------------------------------------------------------------- surface


def test_public_surface() -> None:
    assert set(storage.__all__) == {
        "Base",
        "BlobStore",
        "Database",
        "EventLog",
        "EventRecord",
        "EventRow",
        "HeadRow",
        "ModelRegistry",
        "ModelVersion",
        "ModelVersionRow",
        "ParticipantRecord",
        "ParticipantRow",
        "Participants",
        "PrivacyEventRecord",
        "PrivacyEventRow",
        "PrivacyEvents",
        "RoundLog",
        "RoundRecord",
        "RoundRow",
    }
    for name in storage.__all__:
        assert getattr(storage, name).__doc__


# --------------------------------------------------------------------------- database


def test_sqlite_pragmas(db: Database) -> None:
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    assert db.is_sqlite


def test_database_file_is_in_workdir(workdir: Path, db: Database) -> None:
    assert (workdir / "fedshield.db").is_file()


def test_workdir_path_with_url_characters(tmp_path: Path) -> None:
    odd = tmp_path / "a b?c#d"
    database = Database.for_workdir(odd)
    database.close()
    assert (odd / "fedshield.db").is_file()


def test_unopenable_database_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open database"):
        Database(f"sqlite:///{tmp_path}/missing/dir/x.db")


def test_not_a_database_file_is_a_storage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(StorageError, match="not a database"):
        Database(f"sqlite:///{bogus}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+nosuchdriver://alice:s3cret-pw@db.example:5432/fl",
        "nosuchdialect://alice:s3cret-pw@db.example/fl",
        "://alice:s3cret-pw@",
    ],
)
def test_database_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(StorageError) as info:
        Database(url)
    assert "s3cret-pw" not in str(info.value)
    assert "s3cret-pw" not in repr(info.value.hint)


def test_database_failures_become_storage_errors(db: Database) -> None:
    with pytest.raises(StorageError, match="failed"), db.transaction() as session:
        session.execute(text("SELECT * FROM no_such_table"))


def test_naive_time_is_refused(registry: ModelRegistry, db: Database) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        registry.commit(
            make_weights(0), parent=None, round=None, metrics={}, now=datetime(2025, 1, 1)
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        RoundLog(db).start(
            number=1, attempt=0, kind="fit", base_version=0, selected=[], now=datetime(2025, 1, 1)
        )


def test_times_come_back_as_aware_utc(registry: ModelRegistry) -> None:
    plus_two = timezone(timedelta(hours=2))
    when = datetime(2025, 3, 1, 14, 0, tzinfo=plus_two)
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=when)
    got = registry.get(0).created_at
    assert got.tzinfo is not None
    assert got.utcoffset() == timedelta(0)
    assert got == when


# --------------------------------------------------------------------------- blobs


def test_blob_put_get_roundtrip(blobs: BlobStore) -> None:
    weights = make_weights(1)
    sha3 = blobs.put(weights)
    assert sha3 == weights_sha3(weights)
    assert blobs.path(sha3) == blobs.root / f"{sha3}.safetensors"
    assert blobs.exists(sha3)
    assert_same(blobs.get(sha3), weights)


def test_blob_put_is_idempotent_and_leaves_no_temp_files(blobs: BlobStore) -> None:
    weights = make_weights(1)
    first = blobs.put(weights)
    before = blobs.path(first).stat().st_mtime_ns
    assert blobs.put(weights) == first
    assert blobs.path(first).stat().st_mtime_ns == before
    assert [p.name for p in blobs.root.iterdir()] == [f"{first}.safetensors"]


def test_blob_put_stores_float32_and_hashes_what_it_stores(blobs: BlobStore) -> None:
    as64 = {k: v.astype(np.float64) for k, v in make_weights(2).items()}
    sha3 = blobs.put(as64)
    loaded = blobs.get(sha3)
    assert all(v.dtype == np.float32 for v in loaded.values())
    assert weights_sha3(loaded) == sha3


def test_blob_put_refuses_nan(blobs: BlobStore) -> None:
    weights = make_weights(1)
    weights["fc.bias"][0] = np.nan
    with pytest.raises(PayloadError, match="fc.bias"):
        blobs.put(weights)
    assert list(blobs.root.iterdir()) == []


def test_missing_blob_is_not_found(blobs: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        blobs.get("0" * 64)


def test_flipped_data_byte_is_detected(blobs: BlobStore) -> None:
    sha3 = blobs.put(make_weights(3))
    path = blobs.path(sha3)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last byte is tensor data, not the header
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match=f"model blob {sha3} is corrupt: hash mismatch"):
        blobs.get(sha3)


def test_flipped_header_byte_is_detected(blobs: BlobStore) -> None:
    sha3 = blobs.put(make_weights(3))
    path = blobs.path(sha3)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="corrupt"):
        blobs.get(sha3)


def test_swapped_blob_is_detected(blobs: BlobStore) -> None:
    a = blobs.put(make_weights(4))
    b = blobs.put(make_weights(5))
    blobs.path(a).write_bytes(blobs.path(b).read_bytes())
    with pytest.raises(StorageError, match="hash mismatch"):
        blobs.get(a)


def test_blob_over_size_limit_is_refused(blobs: BlobStore) -> None:
    sha3 = blobs.put(make_weights(1))
    with pytest.raises(StorageError, match="over the limit"):
        blobs.get(sha3, max_bytes=16)


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "../" + "a" * 61,
        "/" + "a" * 63,
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "a" * 64 + "\n",
        "g" * 64,
        "",
    ],
)
def test_malformed_hash_is_rejected_before_touching_files(blobs: BlobStore, bad: str) -> None:
    with pytest.raises(StorageError, match="64 lowercase hex"):
        blobs.path(bad)
    with pytest.raises(StorageError, match="64 lowercase hex"):
        blobs.get(bad)
    with pytest.raises(StorageError, match="64 lowercase hex"):
        blobs.exists(bad)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12)
_tensors = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(_names, _tensors, min_size=1, max_size=5))
def test_blob_roundtrip_property(weights: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = BlobStore(Path(root))
        sha3 = store.put(weights)
        assert sha3 == weights_sha3(weights)
        assert store.put(weights) == sha3
        loaded = store.get(sha3)
        assert_same(loaded, weights)
        assert weights_sha3(loaded) == sha3


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=80).filter(lambda s: len(s) != 64 or s != s.lower()))
def test_only_canonical_hashes_name_files_property(name: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = BlobStore(Path(root))
        is_hex = len(name) == 64 and all(c in "0123456789abcdef" for c in name)
        if is_hex:
            assert store.path(name).parent == Path(root)
        else:
            with pytest.raises(StorageError):
                store.path(name)


# --------------------------------------------------------------------------- registry


def test_empty_registry(registry: ModelRegistry) -> None:
    assert registry.head() is None
    assert registry.list() == []
    assert registry.head_history() == []
    with pytest.raises(NotFoundError, match=r"model version 0 does not exist \(the registry"):
        registry.get(0)


def test_first_commit_is_version_zero_and_head(registry: ModelRegistry) -> None:
    weights = make_weights(0)
    v0 = registry.commit(
        weights, parent=None, round=None, metrics={"accuracy": 0.1}, now=NOW, note="init"
    )
    assert v0.version == 0
    assert v0.parent is None
    assert v0.sha3 == weights_sha3(weights)
    assert v0.num_parameters == 15
    assert v0.metrics == {"accuracy": 0.1}
    assert v0.note == "init"
    assert registry.head() == v0
    assert registry.get(0) == v0
    assert registry.head_history() == [(0, "initial", "coordinator", NOW)]
    assert_same(registry.load(0), weights)


def test_versions_increment(registry: ModelRegistry) -> None:
    v0 = registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    parent = v0.version
    for r in range(1, 4):
        v = registry.commit(
            make_weights(r), parent=parent, round=r, metrics={"loss": 1.0 / r}, now=later(r)
        )
        assert v.version == r
        assert v.parent == parent
        assert v.round == r
        parent = v.version
    assert [v.version for v in registry.list()] == [0, 1, 2, 3]
    head = registry.head()
    assert head is not None and head.version == 3
    assert [h[1] for h in registry.head_history()] == ["initial", "commit", "commit", "commit"]


def test_get_missing_version_names_the_latest(registry: ModelRegistry) -> None:
    for i in range(4):
        registry.commit(make_weights(i), parent=None, round=None, metrics={}, now=NOW)
    with pytest.raises(NotFoundError, match=r"^model version 7 does not exist \(latest is 3\)$"):
        registry.get(7)
    with pytest.raises(NotFoundError):
        registry.load(7)


def test_parent_must_exist(registry: ModelRegistry, blobs: BlobStore) -> None:
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    with pytest.raises(NotFoundError, match="model version 5 does not exist"):
        registry.commit(make_weights(1), parent=5, round=1, metrics={}, now=NOW)
    assert [v.version for v in registry.list()] == [0]
    assert not blobs.exists(weights_sha3(make_weights(1)))


def test_identical_weights_make_a_new_version_sharing_the_blob(
    registry: ModelRegistry, blobs: BlobStore
) -> None:
    # A round whose updates cancel out is still a round: it gets its own version.
    first = registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    again = registry.commit(make_weights(0), parent=0, round=1, metrics={}, now=NOW)
    assert (again.version, again.parent, again.sha3) == (1, 0, first.sha3)
    assert registry.head() == again
    assert len(list(blobs.root.glob("*.safetensors"))) == 1
    assert weights_sha3(registry.load(1)) == first.sha3


def test_non_finite_metric_is_refused_before_anything_is_written(
    registry: ModelRegistry, blobs: BlobStore
) -> None:
    with pytest.raises(ValueError, match="finite"):
        registry.commit(
            make_weights(0), parent=None, round=None, metrics={"loss": float("nan")}, now=NOW
        )
    assert registry.list() == []
    assert list(blobs.root.iterdir()) == []


def test_rollback_moves_head_and_loses_nothing(registry: ModelRegistry) -> None:
    v0 = registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    v1 = registry.commit(make_weights(1), parent=0, round=1, metrics={}, now=later(1))
    v2 = registry.commit(make_weights(2), parent=1, round=2, metrics={}, now=later(2))

    back = registry.rollback(1, actor="alice", reason="round 2 was poisoned", now=later(3))
    assert back == v1
    assert registry.head() == v1

    head = registry.head()
    assert head is not None
    v3 = registry.commit(make_weights(3), parent=head.version, round=3, metrics={}, now=later(4))
    assert v3.version == 3
    assert v3.parent == 1
    assert registry.head() == v3

    assert registry.list() == [v0, v1, v2, v3]
    for i, v in enumerate(registry.list()):
        assert_same(registry.load(v.version), make_weights(i))
    assert registry.head_history() == [
        (0, "initial", "coordinator", NOW),
        (1, "commit", "coordinator", later(1)),
        (2, "commit", "coordinator", later(2)),
        (1, "rollback", "alice", later(3)),
        (3, "commit", "coordinator", later(4)),
    ]


def test_rollback_to_the_head_is_refused(registry: ModelRegistry) -> None:
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    with pytest.raises(StorageError, match="already the head"):
        registry.rollback(0, actor="alice", reason="oops", now=NOW)
    assert len(registry.head_history()) == 1


def test_rollback_to_a_missing_version_is_not_found(registry: ModelRegistry) -> None:
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    with pytest.raises(NotFoundError, match=r"\(latest is 0\)"):
        registry.rollback(4, actor="alice", reason="x", now=NOW)


def test_rollback_to_a_corrupt_blob_is_refused(registry: ModelRegistry, blobs: BlobStore) -> None:
    v0 = registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    registry.commit(make_weights(1), parent=0, round=1, metrics={}, now=NOW)
    path = blobs.path(v0.sha3)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="corrupt"):
        registry.rollback(0, actor="alice", reason="x", now=NOW)
    head = registry.head()
    assert head is not None and head.version == 1


def test_corrupt_blob_raises_on_load(registry: ModelRegistry, blobs: BlobStore) -> None:
    v0 = registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    path = blobs.path(v0.sha3)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 + 40] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="corrupt"):
        registry.load(0)


def test_commit_and_rollback_are_journaled(registry: ModelRegistry, db: Database) -> None:
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    registry.commit(make_weights(1), parent=0, round=1, metrics={}, now=later(1))
    registry.rollback(0, actor="alice", reason="bad round", now=later(2))
    events = EventLog(db).list()
    assert [(e.action, e.resource, e.actor) for e in events] == [
        ("model.commit", "model/0", "coordinator"),
        ("model.commit", "model/1", "coordinator"),
        ("model.rollback", "model/0", "alice"),
    ]
    assert events[1].details["parent"] == 0
    assert events[2].details == {"from": 1, "to": 0, "reason": "bad round"}


def test_export_to_directory_and_file(registry: ModelRegistry, tmp_path: Path) -> None:
    weights = make_weights(0)
    v0 = registry.commit(weights, parent=None, round=None, metrics={"acc": 0.5}, now=NOW)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    written = registry.export(0, out_dir)
    assert written == out_dir / f"model-v0-{v0.sha3[:12]}.safetensors"
    assert_same(decode(written.read_bytes(), max_bytes=2**20), weights)
    meta = json.loads(Path(f"{written}.json").read_text())
    assert meta["version"] == 0
    assert meta["sha3"] == v0.sha3
    assert meta["metrics"] == {"acc": 0.5}
    assert datetime.fromisoformat(meta["created_at"]) == NOW

    named = registry.export(0, tmp_path / "nested" / "final.safetensors")
    assert named == tmp_path / "nested" / "final.safetensors"
    assert (tmp_path / "nested" / "final.safetensors.json").is_file()
    assert weights_sha3(decode(named.read_bytes(), max_bytes=2**20)) == v0.sha3


def test_concurrent_commits_get_distinct_versions(registry: ModelRegistry) -> None:
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            registry.commit(make_weights(seed), parent=0, round=seed, metrics={}, now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [v.version for v in registry.list()] == list(range(9))


# --------------------------------------------------------------------------- records


def test_round_log_lifecycle(db: Database) -> None:
    rounds = RoundLog(db)
    assert rounds.last_completed_number() == 0
    rid = rounds.start(
        number=1, attempt=0, kind="fit", base_version=0, selected=["a", "b", "c"], now=NOW
    )
    (rec,) = rounds.list()
    assert rec.id == rid and rec.status == "running" and rec.finished_at is None
    assert rec.selected == ("a", "b", "c")

    rounds.finish(
        rid,
        status="committed",
        answered=["a", "b"],
        dropped=["c"],
        reason=None,
        model_version=1,
        metrics={"accuracy": 0.9},
        now=later(1),
    )
    (rec,) = rounds.list()
    assert rec.status == "committed"
    assert rec.answered == ("a", "b") and rec.dropped == ("c",)
    assert rec.model_version == 1 and rec.metrics == {"accuracy": 0.9}
    assert rec.finished_at == later(1)
    assert rounds.last_completed_number() == 1

    with pytest.raises(StorageError, match="already committed"):
        rounds.finish(
            rid,
            status="failed",
            answered=[],
            dropped=[],
            reason="x",
            model_version=None,
            metrics={},
            now=later(2),
        )
    with pytest.raises(NotFoundError):
        rounds.finish(
            999,
            status="failed",
            answered=[],
            dropped=[],
            reason="x",
            model_version=None,
            metrics={},
            now=later(2),
        )


def test_round_log_validates(db: Database) -> None:
    rounds = RoundLog(db)
    with pytest.raises(ValueError, match="kind"):
        rounds.start(number=1, attempt=0, kind="train", base_version=0, selected=[], now=NOW)
    with pytest.raises(ValueError, match="number"):
        rounds.start(number=0, attempt=0, kind="fit", base_version=0, selected=[], now=NOW)
    with pytest.raises(ValueError, match="selected"):
        rounds.start(number=1, attempt=0, kind="fit", base_version=0, selected="ab", now=NOW)
    rid = rounds.start(number=1, attempt=0, kind="fit", base_version=0, selected=[], now=NOW)
    with pytest.raises(ValueError, match="status"):
        rounds.finish(
            rid,
            status="running",
            answered=[],
            dropped=[],
            reason=None,
            model_version=None,
            metrics={},
            now=NOW,
        )
    with pytest.raises(ValueError, match="finite"):
        rounds.finish(
            rid,
            status="failed",
            answered=[],
            dropped=[],
            reason=None,
            model_version=None,
            metrics={"loss": float("inf")},
            now=NOW,
        )
    assert rounds.list()[0].status == "running"


def test_abort_running(db: Database) -> None:
    rounds = RoundLog(db)
    done = rounds.start(number=1, attempt=0, kind="fit", base_version=0, selected=["a"], now=NOW)
    rounds.finish(
        done,
        status="committed",
        answered=["a"],
        dropped=[],
        reason=None,
        model_version=1,
        metrics={},
        now=NOW,
    )
    rounds.start(number=2, attempt=0, kind="fit", base_version=1, selected=["a"], now=NOW)
    rounds.start(number=2, attempt=0, kind="evaluate", base_version=1, selected=["a"], now=NOW)

    assert rounds.abort_running(reason="coordinator restarted", now=later(5)) == 2
    recs = rounds.list()
    assert [r.status for r in recs] == ["committed", "aborted", "aborted"]
    assert recs[1].reason == "coordinator restarted"
    assert recs[1].finished_at == later(5)
    assert rounds.abort_running(reason="again", now=later(6)) == 0
    assert rounds.last_completed_number() == 1
    with pytest.raises(StorageError, match="already aborted"):
        rounds.finish(
            recs[1].id,
            status="committed",
            answered=[],
            dropped=[],
            reason=None,
            model_version=2,
            metrics={},
            now=later(7),
        )


def test_count_done(db: Database) -> None:
    rounds = RoundLog(db)
    for n in (1, 2):
        rid = rounds.start(
            number=n, attempt=0, kind="evaluate", base_version=0, selected=[], now=NOW
        )
        rounds.finish(
            rid,
            status="done",
            answered=[],
            dropped=[],
            reason=None,
            model_version=None,
            metrics={"accuracy": 0.5},
            now=NOW,
        )
    rounds.start(number=3, attempt=0, kind="fit", base_version=0, selected=[], now=NOW)
    assert rounds.count_done() == 2


def test_participants_upsert(db: Database) -> None:
    people = Participants(db)
    first = people.seen(
        name="hospital-a", organization="A", role="participant", cert_sha256="aa", now=NOW
    )
    assert first.first_seen == first.last_seen == NOW
    people.seen(name="bank-b", organization="B", role="participant", cert_sha256="bb", now=NOW)
    again = people.seen(
        name="hospital-a", organization="A", role="participant", cert_sha256="cc", now=later(9)
    )
    assert again.first_seen == NOW
    assert again.last_seen == later(9)
    assert again.cert_sha256 == "cc"
    assert [p.name for p in people.list()] == ["bank-b", "hospital-a"]


def test_event_log(db: Database) -> None:
    log = EventLog(db)
    for i in range(5):
        log.record(
            actor="coordinator",
            action="round.start",
            resource=f"round/{i}",
            outcome="ok",
            details={
                "i": i,
                "when": NOW,
                "loss": float("nan"),
                "n": np.int64(3),
                "names": ("a", "b"),
            },
            now=later(i),
        )
    events = log.list()
    assert [e.resource for e in events] == [f"round/{i}" for i in range(5)]
    assert events[0].details == {
        "i": 0,
        "when": NOW.isoformat(),
        "loss": "nan",
        "n": 3,
        "names": ["a", "b"],
    }
    assert events[0].time == NOW
    assert [e.resource for e in log.list(limit=2)] == ["round/3", "round/4"]
    assert log.list(limit=0) == []


# --------------------------------------------------------------------------- durability


def test_everything_survives_reopening(workdir: Path) -> None:
    db = Database.for_workdir(workdir)
    registry = ModelRegistry(db, BlobStore(workdir / "models"))
    registry.commit(make_weights(0), parent=None, round=None, metrics={}, now=NOW)
    registry.commit(make_weights(1), parent=0, round=1, metrics={"acc": 0.7}, now=later(1))
    registry.rollback(0, actor="alice", reason="x", now=later(2))
    rid = RoundLog(db).start(
        number=1, attempt=0, kind="fit", base_version=0, selected=["a"], now=NOW
    )
    Participants(db).seen(name="a", organization="A", role="p", cert_sha256="aa", now=NOW)
    versions = registry.list()
    history = registry.head_history()
    db.close()

    db2 = Database.for_workdir(workdir)
    registry2 = ModelRegistry(db2, BlobStore(workdir / "models"))
    assert registry2.list() == versions
    assert registry2.head_history() == history
    head = registry2.head()
    assert head is not None and head.version == 0
    assert_same(registry2.load(1), make_weights(1))
    assert [r.id for r in RoundLog(db2).list()] == [rid]
    assert [p.name for p in Participants(db2).list()] == ["a"]
    assert len(EventLog(db2).list()) == 3
    db2.close()


def test_commit_survives_sigkill_right_after_it_returns(workdir: Path) -> None:
    src = Path(storage.__file__).resolve().parents[2]
    script = textwrap.dedent(
        f"""
        import os, signal
        from datetime import datetime, timezone
        from pathlib import Path
        import numpy as np
        from fedshield.storage import BlobStore, Database, ModelRegistry

        work = Path({str(workdir)!r})
        db = Database.for_workdir(work)
        reg = ModelRegistry(db, BlobStore(work / "models"))
        now = datetime(2025, 3, 1, tzinfo=timezone.utc)
        rng = np.random.default_rng(7)
        w = {{"w": rng.standard_normal((16, 16)).astype(np.float32)}}
        reg.commit(w, parent=None, round=None, metrics={{}}, now=now)
        v = reg.commit({{"w": w["w"] + 1}}, parent=0, round=1, metrics={{"acc": 0.5}}, now=now)
        print(v.sha3, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sha3 = proc.stdout.strip()

    db = Database.for_workdir(workdir)
    registry = ModelRegistry(db, BlobStore(workdir / "models"))
    head = registry.head()
    assert head is not None
    assert head.version == 1 and head.sha3 == sha3 and head.metrics == {"acc": 0.5}
    rng = np.random.default_rng(7)
    expected = rng.standard_normal((16, 16)).astype(np.float32) + 1
    np.testing.assert_array_equal(registry.load(1)["w"], expected)
    assert list((workdir / "models").glob(".tmp-*")) == []
    db.close()
