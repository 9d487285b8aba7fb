"""Specification of the revocation list, its cache, and what a revocation does to a round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import ConfigError
from fedshield.federation.admin import Administration, StateConflict
from fedshield.federation.coordinator import Committed, Coordinator
from fedshield.federation.round import RoundOpened
from fedshield.storage import Database, EventLog
from fedshield.storage.identity import RevocationCache, Revocations

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FINGERPRINT = "ab" * 32


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_revocations_are_durable_and_versioned(tmp_path: Path) -> None:
    db = Database.for_workdir(tmp_path)
    store = Revocations(db)
    assert store.version() == 0
    first = store.revoke("site-1", reason="key leaked", actor="admin", now=NOW)
    second = store.revoke(
        "site-2", reason="rotated", actor="admin", now=NOW, fingerprint_sha256=FINGERPRINT
    )
    assert store.version() == second.id > first.id
    db.close()
    again = Revocations(Database.for_workdir(tmp_path)).list()
    assert [(r.name, r.fingerprint_sha256, r.reason) for r in again] == [
        ("site-1", None, "key leaked"),
        ("site-2", FINGERPRINT, "rotated"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reason": "  "}, "reason must be"),
        ({"reason": "x" * 1001}, "reason must be"),
        ({"reason": "r", "fingerprint_sha256": "AB" * 32}, "fingerprint_sha256"),
        ({"reason": "r", "fingerprint_sha256": "ab"}, "fingerprint_sha256"),
    ],
)
def test_malformed_revocations_are_refused(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    store = Revocations(Database.for_workdir(tmp_path))
    with pytest.raises(ValueError, match=message):
        store.revoke("site-1", actor="admin", now=NOW, **kwargs)
    assert store.version() == 0


def test_cache_sees_another_process_within_the_refresh_bound(tmp_path: Path) -> None:
    # Two Database objects on one file behave as two processes (separate engines).
    server_db = Database.for_workdir(tmp_path)
    cli_db = Database.for_workdir(tmp_path)
    clock = FakeClock()
    cache = RevocationCache(Revocations(server_db), refresh_s=1.0, clock=clock)
    assert cache.revoked("site-1", FINGERPRINT) is None
    Revocations(cli_db).revoke("site-1", reason="stolen laptop", actor="cli", now=NOW)
    clock.t = 0.5  # inside the refresh bound: the cached list is still used
    assert cache.revoked("site-1", FINGERPRINT) is None
    clock.t = 1.0  # the bound is reached: the version is re-read
    found = cache.revoked("site-1", FINGERPRINT)
    assert found is not None and found.reason == "stolen laptop"
    assert cache.names == frozenset({"site-1"})
    # The same process invalidates at once.
    Revocations(server_db).revoke(
        "site-2", reason="rotated", actor="admin", now=NOW, fingerprint_sha256=FINGERPRINT
    )
    cache.invalidate()
    assert cache.revoked("site-2", "cd" * 32) is None  # another certificate of site-2
    assert cache.revoked("anyone", FINGERPRINT) is not None  # the revoked certificate
    assert cache.names == frozenset({"site-1"})  # a single certificate is not the entity


def test_refresh_reports_newly_revoked_entities_once(tmp_path: Path) -> None:
    db = Database.for_workdir(tmp_path)
    cache = RevocationCache(Revocations(db), refresh_s=0.0)
    assert cache.refresh() == frozenset()
    Revocations(db).revoke("site-3", reason="r", actor="a", now=NOW)
    assert cache.refresh() == frozenset({"site-3"})
    assert cache.refresh() == frozenset()


def _config(secure: bool = False) -> FederationConfig:
    return parse_config(
        {
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 3},
            "rounds": {"count": 2, "min_participants": 2},
            "secure_aggregation": {"enabled": secure},
        }
    )


def _coordinator(workdir: Path) -> Coordinator:
    return Coordinator(
        _config(),
        workdir=workdir,
        base_dir=workdir,
        now=NOW,
        rng=np.random.default_rng(0),
        clock=lambda: NOW,
    )


NAMES = ["site-1", "site-2", "site-3"]


def test_a_participant_revoked_mid_round_is_a_dropout_and_never_selected_again(
    tmp_path: Path,
) -> None:
    coordinator = _coordinator(tmp_path)
    try:
        opened = [r for r in coordinator.step(NOW, NAMES) if isinstance(r, RoundOpened)]
        assert opened and set(opened[0].selected) == set(NAMES)
        head, weights = coordinator.head_weights()
        zero = {n: np.zeros_like(a) for n, a in weights.items()}

        def submit(name: str) -> None:
            coordinator.submit_fit(
                name,
                round=1,
                attempt=1,
                model_sha3=head.sha3,
                num_examples=5,
                update=zero,
                metrics={},
                now=NOW,
            )

        submit("site-1")
        submit("site-3")  # it answered, then its certificate is revoked: the update goes
        coordinator.revoke("site-3", "key leaked")
        assert coordinator.assignment_for("site-3", NOW) is None
        submit("site-2")
        # Everyone selected has answered or dropped out: the round closes at once.
        reports = coordinator.step(NOW + timedelta(seconds=1), NAMES)
        committed = [r for r in reports if isinstance(r, Committed)]
        assert len(committed) == 1
        assert committed[0].answered == ("site-1", "site-2")
        assert committed[0].dropped == ("site-3",)
        assert "certificate revoked" in committed[0].rejected["site-3"]
        # The next round draws from the others only, whoever says site-3 is available.
        nxt = [
            r
            for r in coordinator.step(NOW + timedelta(seconds=2), NAMES)
            if isinstance(r, RoundOpened)
        ]
        assert nxt and "site-3" not in nxt[0].selected
    finally:
        coordinator.close()


def test_a_restarted_coordinator_keeps_the_revoked_out(tmp_path: Path) -> None:
    _coordinator(tmp_path).close()  # the workdir of a federation that ran
    db = Database.for_workdir(tmp_path)
    Administration(db, config=_config(), models_dir=tmp_path / "models").revoke(
        "site-2", reason="compromised", actor="cli:alice", now=NOW
    )
    db.close()
    coordinator = _coordinator(tmp_path)
    try:
        assert coordinator.revoked() == frozenset({"site-2"})
        opened = [r for r in coordinator.step(NOW, NAMES) if isinstance(r, RoundOpened)]
        assert opened and "site-2" not in opened[0].selected
    finally:
        coordinator.close()


def test_administration_revokes_quarantines_releases_and_audits(tmp_path: Path) -> None:
    db = Database.for_workdir(tmp_path)
    admin = Administration(db, config=_config(), models_dir=tmp_path / "models")
    admin.revoke("site-1", reason="key leaked", actor="admin", now=NOW)
    with pytest.raises(StateConflict, match="already revoked"):
        admin.revoke("site-1", reason="again", actor="admin", now=NOW)
    admin.quarantine("site-2", reason="odd updates", actor="admin", now=NOW)
    with pytest.raises(StateConflict, match="already quarantined"):
        admin.quarantine("site-2", reason="odd updates", actor="admin", now=NOW)
    rows = {r.name: r for r in admin.participants()}
    assert rows["site-1"].status == "revoked" and rows["site-1"].revoked_reason == "key leaked"
    assert rows["site-2"].status == "quarantined"
    assert rows["site-3"].status == "enrolled"
    admin.release("site-2", actor="admin", now=NOW)
    with pytest.raises(StateConflict, match="not quarantined"):
        admin.release("site-2", actor="admin", now=NOW)
    assert {r.name: r.status for r in admin.participants()}["site-2"] == "enrolled"
    actions = [(e.action, e.resource, e.actor) for e in EventLog(db).list()]
    assert actions == [
        ("participant.revoke", "participant/site-1", "admin"),
        ("participant.quarantine", "participant/site-2", "admin"),
        ("participant.release", "participant/site-2", "admin"),
    ]
    db.close()


@pytest.mark.parametrize(
    ("name", "reason", "message"),
    [
        ("bad name", "r", "participant name must be"),
        ("coordinator", "r", "is not a participant name"),
        ("site-1", "", "reason must be"),
        ("site-1", "a\nb", "reason must be"),
    ],
)
def test_administration_refuses_malformed_input(
    tmp_path: Path, name: str, reason: str, message: str
) -> None:
    db = Database.for_workdir(tmp_path)
    admin = Administration(db, config=None, models_dir=tmp_path / "models")
    with pytest.raises(ConfigError, match=message):
        admin.revoke(name, reason=reason, actor="admin", now=NOW)
    assert Revocations(db).version() == 0
    db.close()
