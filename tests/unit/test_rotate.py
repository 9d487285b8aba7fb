"""Rotation: a new key pair and certificate, the old certificate revoked after a grace period."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from fedshield.cli import app
from fedshield.identity import (
    Kit,
    KitSpec,
    identity_of,
    load_certificate,
    load_private_key,
    provision,
)
from fedshield.identity.rotate import rotate_kit
from fedshield.storage import Database, EventLog
from fedshield.storage.identity import RevocationCache, Revocations

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _federation(tmp_path: Path) -> Path:
    provision(
        tmp_path / "fed",
        federation="fed",
        participants=[KitSpec("site-1", "Site One", "participant")],
        now=NOW,
    )
    return tmp_path / "fed"


def test_rotation_rekeys_the_kit_and_keeps_the_identity(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    kit_dir = fed / "participants" / "site-1"
    before = Kit.load(kit_dir, now=NOW)
    old_key = (kit_dir / "key.pem").read_bytes()
    rotation = rotate_kit(
        before,
        load_private_key(fed / "ca" / "ca.key"),
        load_certificate(fed / "ca" / "ca.crt"),
        now=NOW + timedelta(days=1),
    )
    after = Kit.load(kit_dir, now=NOW + timedelta(days=1))  # keys match the new cert
    assert (after.name, after.organization, after.role) == ("site-1", "Site One", "participant")
    assert rotation.old.fingerprint_sha256 != rotation.new.fingerprint_sha256
    assert (kit_dir / "key.pem").read_bytes() != old_key
    previous = load_certificate(kit_dir / "cert.pem.previous")
    assert previous.serial_number != load_certificate(kit_dir / "cert.pem").serial_number


def test_the_old_certificate_is_refused_only_after_the_grace_period(tmp_path: Path) -> None:
    db = Database.for_workdir(tmp_path)
    old, new = "aa" * 32, "bb" * 32
    Revocations(db).revoke(
        "site-1",
        reason="rotated",
        actor="cli",
        now=NOW,
        fingerprint_sha256=old,
        effective_at=NOW + timedelta(hours=1),
    )
    wall = [NOW]
    cache = RevocationCache(Revocations(db), refresh_s=0.0, wall_clock=lambda: wall[0])
    assert cache.revoked("site-1", old) is None  # in the grace period
    wall[0] = NOW + timedelta(hours=1, seconds=1)
    assert cache.revoked("site-1", old) is not None
    assert cache.revoked("site-1", new) is None  # the new certificate is fine
    assert cache.names == frozenset()  # the entity is not revoked
    db.close()


def test_the_cli_rotates_and_schedules_the_revocation(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    workdir = tmp_path / "coordinator"
    Database.for_workdir(workdir).close()
    kit_dir = fed / "participants" / "site-1"
    old = Kit.load(kit_dir)
    shutil.copytree(kit_dir, tmp_path / "old-kit")
    result = CliRunner().invoke(
        app,
        [
            "identity", "rotate", "--kit", str(kit_dir), "--ca", str(fed / "ca"),
            "--workdir", str(workdir), "--grace-s", "0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    db = Database.for_workdir(workdir)
    (record,) = Revocations(db).list()
    old_identity = identity_of(load_certificate(old.cert_path.with_name("cert.pem.previous")))
    assert record.fingerprint_sha256 == old_identity.fingerprint_sha256
    cache = RevocationCache(Revocations(db), refresh_s=0.0)
    assert cache.revoked("site-1", old_identity.fingerprint_sha256) is not None
    new_identity = identity_of(load_certificate(kit_dir / "cert.pem"))
    assert cache.revoked("site-1", new_identity.fingerprint_sha256) is None
    assert [e.action for e in EventLog(db).list()] == ["identity.rotate"]
    db.close()
