"""Receipts served to participants over real mutual TLS (real processes, 127.0.0.1).

A federation of three sites runs two rounds (and the final evaluation) with two
participant processes; the third site never takes part. What must hold:

* each participant process ends with a verified receipt in ``<kit>/receipts/`` for every
  round it contributed to (the audit log's ``round.contribution`` entries), and the
  coordinator's audit key pinned beside them;
* ``fedshield audit verify --workdir COORD --receipt FILE`` accepts every one of them;
* a site that pinned another audit key in its ``participant.toml`` stores none, says so
  loudly, and still trains to the end;
* a participant asking for a round it did not contribute to gets a 404 JSON error.
"""

from __future__ import annotations

import json
import tomllib
from typing import TYPE_CHECKING

import pytest
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield import _toml
from fedshield.audit import Receipt, public_key_bytes, verify_receipt
from fedshield.cli import main
from fedshield.federation.receipts import PIN_FILE, RECEIPTS_DIR
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import read_public_key
from fedshield.transport.client import RejectedError

if TYPE_CHECKING:
    from conftest import Federation, FederationFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def contributions(federation: Federation) -> dict[str, set[int]]:
    """Who contributed to which round, from the coordinator's audit log."""
    db = Database.for_workdir(federation.workdir)
    try:
        events = EventLog(db).list()
    finally:
        db.close()
    found: dict[str, set[int]] = {}
    for event in events:
        if event.action == "round.contribution":
            name = str(event.resource).removeprefix("participant/")
            found.setdefault(name, set()).add(int(event.details["round"]))  # type: ignore[call-overload]
    return found


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return int(done.value.code or 0), out + err


def test_participants_fetch_verify_and_keep_their_receipts(
    federation_factory: FederationFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    federation = federation_factory(
        {"rounds": {"count": 2, "min_participants": 2, "min_available": 2}}
    )
    site_1, site_2, outsider = federation.names
    # site-2 pins an audit key that is not the coordinator's: nothing may be kept.
    wrong = public_key_bytes(ed25519.Ed25519PrivateKey.generate().public_key()).hex()
    toml_path = federation.kits.participant_dirs[site_2] / "participant.toml"
    document = tomllib.loads(toml_path.read_text())
    document["participant"]["audit_public_key"] = wrong
    toml_path.write_text(_toml.dumps(document))

    federation.start_coordinator()
    federation.start_participants((site_1, site_2))
    codes = federation.wait_exit(federation.participants, timeout_s=240)
    assert codes == {site_1: 0, site_2: 0}, federation.describe()

    # The coordinator waits (end_grace_s) for the outsider to hear the end: ask now.
    with federation.client(outsider) as client:
        with pytest.raises(RejectedError) as info:
            client.receipt(1)
        assert info.value.status == 404
        assert "no contribution" in info.value.message
        assert "commits" in info.value.hint
        reply = client._client.get("/v1/rounds/0/receipt")
        # The envelope check refuses a round that is not a positive integer first.
        assert reply.status_code == 400 and "positive integer" in reply.json()["error"]
        with pytest.raises(RejectedError) as info:
            client.receipt(10**30)  # no overflow, no traceback
        assert info.value.status in (400, 404)
        ended = wait_until(lambda: client.next_task(wait_s=1.0), timeout_s=30.0, what="the end")
        assert ended.kind == "finished"
    wait_until(
        lambda: federation.coordinator is not None and federation.coordinator.poll() is not None,
        timeout_s=60.0,
        what="the coordinator to exit",
    )

    key = read_public_key(federation.workdir / "audit.pub")
    rounds = contributions(federation)
    assert rounds.get(site_1) == {1, 2}, rounds
    assert outsider not in rounds

    # site-1: a verified receipt per contributed round, the key pinned on first use.
    receipts = federation.kits.participant_dirs[site_1] / RECEIPTS_DIR
    assert (receipts / PIN_FILE).read_text().strip() == (
        federation.workdir / "audit.pub"
    ).read_text().strip()
    kept = sorted(p.name for p in receipts.glob("round-*.json"))
    assert kept == [f"round-{n}.json" for n in sorted(rounds[site_1])]
    for name in kept:
        receipt = Receipt.from_json(json.loads((receipts / name).read_text()))
        entry = verify_receipt(receipt, key)
        assert entry.resource == f"participant/{site_1}"
        code, text = cli(
            capsys, "audit", "verify", "--workdir", str(federation.workdir),
            "--receipt", str(receipts / name),
        )  # fmt: skip
        assert code == 0, text
        assert "1 receipts" in text
    log = " ".join(federation.group.tail(site_1, 400).split())  # the console wraps lines
    assert "audit receipt verified and kept" in log

    # site-2 pinned another key: it contributed, kept nothing, said why, finished.
    assert rounds.get(site_2) == {1, 2}, rounds
    refused = federation.kits.participant_dirs[site_2] / RECEIPTS_DIR
    assert not refused.exists()
    log = " ".join(federation.group.tail(site_2, 400).split())
    assert "ERROR: audit receipt for round 1 refused" in log, log
    assert "not the pinned" in log and "audit_public_key in participant.toml" in log
    assert "done (finished); trained 2 rounds" in log


def test_the_receipt_endpoint_never_names_another_participant(
    federation_factory: FederationFactory,
) -> None:
    # The path has no participant in it; a query parameter naming one changes nothing.
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    federation.start_coordinator()
    site_1 = federation.names[0]
    with federation.client(site_1) as client:
        reply = client._client.get(
            "/v1/rounds/1/receipt", params={"participant": federation.names[1]}
        )
    assert reply.status_code == 404, reply.text
    assert federation.names[1] not in reply.text
