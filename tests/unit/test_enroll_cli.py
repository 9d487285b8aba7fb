"""``fedshield participants enroll`` on the coordinator host (--workdir): the CLI's checks.

In-process through :func:`fedshield.cli.main` (the same error handling as the real
command): exit codes, one-line errors with hints, never a traceback, and no certificate
written unless the enrollment was recorded. The networked path (--kit) is in
tests/integration/test_access.py.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedshield.cli import main
from fedshield.config import FederationConfig, parse_config
from fedshield.federation.coordinator import config_digest
from fedshield.federation.kits import write_config
from fedshield.identity import Kit, KitSpec, provision
from fedshield.identity.csr import make_request
from fedshield.storage import Database, EventLog
from fedshield.storage.enrollment import Enrollments

NOW = datetime.now(UTC)


def _config(rounds: int = 2) -> FederationConfig:
    return parse_config(
        {
            "federation": {"name": "fed"},
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"names": ["site-1", "site-2"]},
            "rounds": {"count": rounds, "min_participants": 2},
            "secure_aggregation": {"enabled": False},
        }
    )


class Host:
    """A coordinator host: CA, config file, and a workdir whose coordinator started once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        provision(
            root / "kits",
            federation="fed",
            participants=[KitSpec(n, n, "participant") for n in ("site-1", "site-2")],
            now=NOW,
        )
        self.ca = root / "kits" / "ca"
        self.config = root / "federation.toml"
        write_config(_config(), self.config)
        self.workdir = root / "coordinator"
        db = Database.for_workdir(self.workdir)
        try:
            db.federation = "fed"
            EventLog(db).record(
                actor="coordinator",
                action="coordinator.start",
                resource="fed",
                outcome="ok",
                details={"config_sha3": config_digest(_config())},
                now=NOW,
            )
        finally:
            db.close()

    def csr(self, name: str) -> Path:
        site = self.root / f"site-{name}"
        return make_request(site, federation="fed", name=name, organization=name).request_path

    def enroll(self, name: str, csr: Path, *extra: str) -> int:
        args = ["participants", "enroll", name, "--csr", str(csr), "--ca", str(self.ca)]
        args += ["--workdir", str(self.workdir), *extra]
        with pytest.raises(SystemExit) as done:
            main(args)
        code = done.value.code
        assert isinstance(code, int)
        return code

    def enrolled(self) -> list[str]:
        db = Database.for_workdir(self.workdir)
        try:
            return [e.name for e in Enrollments(db).list()]
        finally:
            db.close()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_a_local_enrollment_writes_a_working_certificate_beside_the_csr(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    csr = host.csr("hospital-b")
    assert host.enroll("hospital-b", csr, "--config", str(host.config)) == 0
    out = capsys.readouterr().out
    assert "enrolled hospital-b" in out and "accepts it within" in out
    shutil.copy(host.ca / "ca.crt", csr.parent / "ca.crt")
    assert Kit.load(csr.parent).name == "hospital-b"  # the site's own keys, now certified
    assert host.enrolled() == ["hospital-b"]


def test_a_refused_enrollment_hands_out_no_certificate(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    csr = host.csr("site-1")  # listed in the config already
    assert host.enroll("site-1", csr, "--config", str(host.config)) == 2
    err = capsys.readouterr().err
    assert "the federation config lists it" in err and "Traceback" not in err
    assert not (csr.parent / "cert.pem").exists()
    assert host.enrolled() == []


def test_enrolling_locally_needs_the_running_config(
    host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csr = host.csr("hospital-b")
    assert host.enroll("hospital-b", csr) == 2
    assert "needs --config" in capsys.readouterr().err
    other = tmp_path / "other.toml"
    write_config(_config(rounds=5), other)
    assert host.enroll("hospital-b", csr, "--config", str(other)) == 2
    err = capsys.readouterr().err
    assert "is not the config the coordinator" in err and "hint:" in err
    assert host.enroll("hospital-b", csr, "--config", str(host.config), "--kit", "k") == 2
    assert "--config is for enrolling locally" in capsys.readouterr().err
    assert host.enrolled() == []


def test_bad_files_are_clear_errors(
    host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ("--config", str(host.config))
    assert host.enroll("hospital-b", tmp_path / "missing.csr", *config) == 2
    assert "cannot read the CSR" in capsys.readouterr().err
    huge = tmp_path / "huge.csr"
    huge.write_bytes(b"A" * (1 << 20))
    assert host.enroll("hospital-b", huge, *config) == 3
    assert "over 65536 bytes" in capsys.readouterr().err
    csr = host.csr("hospital-b")
    (csr.parent / "cert.pem").write_text("already here")
    assert host.enroll("hospital-b", csr, *config) == 2
    assert "already exists" in capsys.readouterr().err
    assert host.enroll("hospital-b", csr, *config, "--out", str(tmp_path / "b.pem")) == 0
    assert host.enrolled() == ["hospital-b"]
    # The same name again: refused, nothing overwritten.
    assert host.enroll("hospital-b", csr, *config, "--out", str(tmp_path / "c.pem")) == 2
    assert "already enrolled" in capsys.readouterr().err
    assert not (tmp_path / "c.pem").exists()
