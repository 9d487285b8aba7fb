"""A participant's receipts: pinning, refusals, atomic storage, the collector's retries.

Receipts here are real: issued by :class:`~fedshield.storage.audit.AuditLog` from a
real SQLite audit log signed with a real Ed25519 key, as the coordinator does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedshield.audit import Receipt
from fedshield.errors import AuditError, ConfigError, FedshieldError, ProtocolError
from fedshield.federation.agent import ParticipantSection
from fedshield.federation.receipts import (
    PIN_FILE,
    ReceiptCollector,
    ReceiptStore,
    parse_audit_key,
)
from fedshield.policy import BUILTIN_ROLES, Permission
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, sign_tree_head
from fedshield.transport.client import RejectedError, parse_receipt

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FED = "demo"


def coordinator_log(workdir: Path, rounds: int = 2, sites: tuple[str, ...] = ("a", "b")) -> None:
    """Write the audit log a coordinator writes: contributions, then a head per round."""
    db = Database.for_workdir(workdir)
    db.federation = FED
    events = EventLog(db)
    try:
        for number in range(1, rounds + 1):
            for site in sites:
                events.record(
                    actor="coordinator",
                    action="round.contribution",
                    resource=f"participant/{site}",
                    outcome="included",
                    details={"round": number, "attempt": 1, "model_version": number},
                    now=T0,
                )
            sign_tree_head(db, round=number, now=T0)
    finally:
        db.close()


def issue(workdir: Path, site: str, number: int) -> Receipt:
    db = Database.for_workdir(workdir)
    try:
        return AuditLog(db).receipt(site, number)
    finally:
        db.close()


@pytest.fixture
def coord(tmp_path: Path) -> Path:
    workdir = tmp_path / "coord"
    coordinator_log(workdir)
    return workdir


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """Another coordinator workdir: same federation and events, another audit key."""
    workdir = tmp_path / "other"
    coordinator_log(workdir)
    return workdir


def store(kit: Path, name: str = "a", **options: str | None) -> ReceiptStore:
    return ReceiptStore(kit / "receipts", participant=name, federation=FED, **options)


def pub(workdir: Path) -> str:
    return (workdir / "audit.pub").read_text().strip()


def test_the_first_receipt_pins_its_key_and_is_stored_verified(coord: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    keeper = store(kit)
    assert keeper.pinned is None
    path = keeper.accept(issue(coord, "a", 1), round=1)
    assert path == kit / "receipts" / "round-1.json"
    assert (kit / "receipts" / PIN_FILE).read_text().strip() == pub(coord)
    assert keeper.pinned == bytes.fromhex(pub(coord))
    kept = Receipt.from_json(json.loads(path.read_text()))
    assert kept == issue(coord, "a", 1)
    # No temporary file is left behind by the atomic write.
    assert sorted(p.name for p in (kit / "receipts").iterdir()) == [PIN_FILE, "round-1.json"]
    # A restarted agent reads the pin back.
    assert store(kit).pinned == bytes.fromhex(pub(coord))


def test_a_receipt_under_another_key_than_the_pinned_one_is_refused_and_not_stored(
    coord: Path, other: Path, tmp_path: Path
) -> None:
    kit = tmp_path / "kit"
    store(kit).accept(issue(coord, "a", 1), round=1)
    with pytest.raises(AuditError, match="not the pinned") as info:
        store(kit).accept(issue(other, "a", 2), round=2)
    assert "out of band" in info.value.hint
    assert not (kit / "receipts" / "round-2.json").exists()
    assert (kit / "receipts" / PIN_FILE).read_text().strip() == pub(coord)  # pin unchanged


def test_a_receipt_claiming_the_pinned_key_but_signed_by_another_is_refused(
    coord: Path, other: Path, tmp_path: Path
) -> None:
    kit = tmp_path / "kit"
    keeper = store(kit)
    keeper.accept(issue(coord, "a", 1), round=1)
    forged = dataclasses.replace(issue(other, "a", 2), public_key=keeper.pinned or b"")
    with pytest.raises(AuditError, match="does not verify"):
        keeper.accept(forged, round=2)
    assert not keeper.path(2).exists()


def test_an_unpinned_receipt_that_does_not_verify_pins_nothing(coord: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    receipt = issue(coord, "a", 1)
    bad = dataclasses.replace(receipt, signature=bytes(64))
    with pytest.raises(AuditError, match="does not verify"):
        store(kit).accept(bad, round=1)
    assert not (kit / "receipts" / PIN_FILE).exists()
    assert not (kit / "receipts" / "round-1.json").exists()


@pytest.mark.parametrize(
    ("site", "number", "claimed"), [("b", 1, 1), ("a", 1, 2)], ids=["another-site", "round"]
)
def test_a_receipt_of_someone_else_or_another_round_is_refused(
    coord: Path, tmp_path: Path, site: str, number: int, claimed: int
) -> None:
    kit = tmp_path / "kit"
    with pytest.raises(AuditError, match="is not a receipt of"):
        store(kit).accept(issue(coord, site, number), round=claimed)
    assert not (kit / "receipts").exists()


def test_an_explicit_key_takes_precedence_over_the_pin_file(
    coord: Path, other: Path, tmp_path: Path
) -> None:
    kit = tmp_path / "kit"
    store(kit).accept(issue(coord, "a", 1), round=1)  # pins coord's key
    keeper = store(kit, pinned_key=pub(other))
    assert keeper.pinned == bytes.fromhex(pub(other))
    assert "participant.toml" in (keeper.pin_source or "")
    keeper.accept(issue(other, "a", 2), round=2)
    with pytest.raises(AuditError, match="not the pinned"):
        keeper.accept(issue(coord, "a", 2), round=2)
    assert (kit / "receipts" / PIN_FILE).read_text().strip() == pub(coord)  # not rewritten


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_bad_keys_are_refused_with_a_hint(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="64 hex characters") as info:
        parse_audit_key(text, source="test")
    assert "audit.pub" in info.value.hint
    with pytest.raises(ConfigError):
        store(tmp_path, pinned_key=text)
    (tmp_path / "receipts").mkdir(exist_ok=True)
    (tmp_path / "receipts" / PIN_FILE).write_text(text)
    with pytest.raises(ConfigError, match="64 hex characters"):
        store(tmp_path)


def test_the_participant_config_validates_the_pin(coord: Path) -> None:
    section = ParticipantSection(name="a", federation=FED, audit_public_key=pub(coord))
    assert section.audit_public_key == pub(coord)
    with pytest.raises(ValueError, match="64 hex characters"):
        ParticipantSection(name="a", federation=FED, audit_public_key="not hex")


def test_a_receipt_that_cannot_be_written_leaves_no_file(coord: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    keeper = store(kit)
    keeper.accept(issue(coord, "a", 1), round=1)
    keeper.path(2).mkdir()  # the rename onto it fails, even for root
    with pytest.raises(OSError):
        keeper.accept(issue(coord, "a", 2), round=2)
    names = sorted(p.name for p in (kit / "receipts").iterdir())
    assert names == [PIN_FILE, "round-1.json", "round-2.json"]  # no temporary file left
    assert keeper.path(2).is_dir()


# ------------------------------------------------------------------------ the collector


class Coordinator:
    """Answers receipt requests from a real audit log, or with scripted failures."""

    def __init__(self, workdir: Path, site: str) -> None:
        self.workdir = workdir
        self.site = site
        self.asked: list[int] = []
        self.failures: dict[int, list[FedshieldError]] = {}

    def __call__(self, number: int) -> Receipt:
        self.asked.append(number)
        queued = self.failures.get(number)
        if queued:
            raise queued.pop(0)
        return issue(self.workdir, self.site, number)


def collector(kit: Path, fetch: Callable[[int], Receipt]) -> tuple[ReceiptCollector, list[str]]:
    said: list[str] = []
    return ReceiptCollector(store(kit), fetch, said.append), said


def not_found() -> RejectedError:
    return RejectedError(404, "round 1 has no signed tree head yet")


def test_receipts_are_fetched_once_their_round_ended(coord: Path, tmp_path: Path) -> None:
    remote = Coordinator(coord, "a")
    keeper, said = collector(tmp_path / "kit", remote)
    keeper.contributed(1)
    keeper.collect(before=1)  # round 1 still open: nothing asked
    assert remote.asked == []
    keeper.contributed(2)
    keeper.collect(before=2)
    assert remote.asked == [1] and keeper.stored == [1]
    keeper.collect(before=None)  # the federation finished
    assert remote.asked == [1, 2] and keeper.stored == [1, 2]
    assert all("verified and kept" in line for line in said)


def test_a_missing_receipt_is_a_warning_retried_once_after_the_next_round(
    coord: Path, tmp_path: Path
) -> None:
    remote = Coordinator(coord, "a")
    remote.failures[1] = [not_found(), not_found()]
    keeper, said = collector(tmp_path / "kit", remote)
    keeper.contributed(1)
    keeper.collect(before=2)
    assert said[-1].startswith("WARNING") and "once more" in said[-1]
    keeper.collect(before=2)  # the same boundary (a secagg stage task): no retry yet
    assert remote.asked == [1]
    keeper.collect(before=3)
    assert remote.asked == [1, 1]
    assert keeper.missing == [1] and "giving up" in said[-1]
    assert "fedshield audit receipt a --round 1" in said[-1]
    keeper.collect(before=None)
    assert remote.asked == [1, 1]  # at most once more


def test_a_receipt_missing_at_the_first_try_is_kept_on_the_retry(
    coord: Path, tmp_path: Path
) -> None:
    remote = Coordinator(coord, "a")
    remote.failures[1] = [not_found()]
    keeper, _ = collector(tmp_path / "kit", remote)
    keeper.contributed(1)
    keeper.collect(before=2)
    keeper.collect(before=None)
    assert keeper.stored == [1] and keeper.missing == []


def test_at_the_end_a_missing_receipt_is_asked_once_more_at_once(
    coord: Path, tmp_path: Path
) -> None:
    remote = Coordinator(coord, "a")
    remote.failures[2] = [not_found()]
    keeper, _ = collector(tmp_path / "kit", remote)
    keeper.contributed(2)
    keeper.collect(before=None)
    assert remote.asked == [2, 2] and keeper.stored == [2]


def test_bad_replies_and_forged_receipts_never_raise(
    coord: Path, other: Path, tmp_path: Path
) -> None:
    remote = Coordinator(coord, "a")
    remote.failures[1] = [ProtocolError("the coordinator sent a malformed receipt")] * 2
    keeper, said = collector(tmp_path / "kit", remote)
    keeper.contributed(1)
    keeper.collect(before=None)
    assert keeper.missing == [1] and "malformed" in said[-1]
    keeper.contributed(2)
    keeper.collect(before=None)  # pins coord's key
    forger = Coordinator(other, "a")
    keeper._fetch = forger
    keeper.contributed(3)
    coordinator_log(other, rounds=3)  # round 3 exists only there
    keeper.collect(before=None)
    assert keeper.refused == [3]
    assert said[-1].startswith("ERROR") and "not the pinned" in said[-1]
    assert not keeper.store.path(3).exists()


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"version": 1}', b'{"version": 1, "entry": {}}',
     b"[" * 100_000, b'{"version": 2}'],
    ids=["empty", "text", "list", "fields", "entry", "deep", "version"],
)  # fmt: skip
def test_the_client_turns_a_malformed_reply_into_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed receipt for round 3"):
        parse_receipt(body, round_number=3)


def test_the_client_reads_a_real_receipt_back(coord: Path) -> None:
    receipt = issue(coord, "a", 2)
    assert parse_receipt(json.dumps(receipt.to_json()).encode(), round_number=2) == receipt


def test_only_the_participant_role_may_read_receipts() -> None:
    holders = {
        role for role, perms in BUILTIN_ROLES.items() if Permission("receipts", "read") in perms
    }
    assert holders == {"participant"}
