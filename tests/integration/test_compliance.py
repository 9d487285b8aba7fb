"""``fedshield compliance report|check`` on real workdirs and real certificate stores.

One small in-process federation with DP and secure aggregation both off writes a real
workdir; its kits are provisioned for real, and one participant's certificate is then
re-issued by the federation CA already expired, as a stale certificate store would hold
it. The demo's own report (every control passing, rendered in headless Chromium) is in
``test_demo.py``, which already runs a demo.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.cli import main
from fedshield.config import parse_config
from fedshield.errors import ComplianceError
from fedshield.federation.kits import provision_federation
from fedshield.federation.simulation import run_simulation
from fedshield.identity.pki import issue_certificate, load_certificate, load_private_key

pytestmark = pytest.mark.slow

CONFIG = {
    "federation": {"name": "compliance-test", "seed": 2},
    "task": {"name": "digits", "local_epochs": 1, "learning_rate": 0.1},
    "data": {"dataset": "digits", "partition": "iid"},
    "participants": {"count": 3},
    "rounds": {"count": 2, "min_participants": 2, "max_retries": 0},
    "privacy": {"mode": "off"},
    "secure_aggregation": {"enabled": False},
}


@pytest.fixture(scope="module")
def insecure_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compliance")
    config = parse_config(CONFIG, source="test")
    result = run_simulation(config, workdir=root / "work", base_dir=root)
    assert result.rounds_completed == 2
    provision_federation(config, out_dir=root / "kits", base_dir=root, now=datetime.now(UTC))
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return int(done.value.code or 0), out + err


def report(
    capsys: pytest.CaptureFixture[str], root: Path, tmp: Path, *extra: str
) -> dict[str, Any]:
    code, text = cli(
        capsys,
        "compliance", "report", "--workdir", str(root / "work"), "--kits", str(root / "kits"),
        "--out", str(tmp / "report.html"), "--json", str(tmp / "report.json"), *extra,
    )  # fmt: skip
    assert code == 0, text
    assert (tmp / "report.html").read_text().startswith("<!doctype html>")
    data: dict[str, Any] = json.loads((tmp / "report.json").read_text())
    return data


def statuses(data: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    controls = {c["control"]: c["status"] for c in data["controls"]}
    evidence = {e["id"]: e["status"] for e in data["evidence"]}
    return controls, evidence


def test_a_run_without_dp_or_secure_aggregation_shows_the_failures(
    insecure_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report(capsys, insecure_run, tmp_path)
    controls, evidence = statuses(data)
    assert evidence["differential_privacy"] == "fail"
    assert evidence["clipping"] == "fail"
    assert evidence["secure_aggregation"] == "fail"
    # Untouched evidence still passes: the log verifies, the lineage holds, certs are fresh.
    assert evidence["audit_chain"] == "pass"
    assert evidence["model_lineage"] == "pass"
    assert evidence["key_ages"] == "pass"
    assert evidence["transport"] == "warn"  # in-process: nothing crossed a network
    assert controls["GDPR Art. 25"] == "fail"
    assert controls["GDPR Art. 5(1)(c)"] == "fail"
    assert controls["HIPAA 164.312(e)(1)"] == "fail"
    assert controls["HIPAA 164.312(b)"] == "pass"
    dp = next(e for e in data["evidence"] if e["id"] == "differential_privacy")
    assert sorted(dp["facts"]["without_dp"]) == ["site-1", "site-2", "site-3"]

    code, text = cli(
        capsys, "compliance", "check", "--workdir", str(insecure_run / "work"),
        "--kits", str(insecure_run / "kits"),
    )  # fmt: skip
    assert code == ComplianceError.exit_code
    assert "GDPR Art. 25" in text and "required controls fail" in text
    # A control that holds passes the check on its own.
    code, text = cli(
        capsys, "compliance", "check", "--workdir", str(insecure_run / "work"),
        "--kits", str(insecure_run / "kits"), "--require", "HIPAA 164.312(b)",
    )  # fmt: skip
    assert code == 0, text


def test_an_expired_certificate_fails_authentication(
    insecure_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Provisioned 40 days ago; site-2's certificate then was issued for 30 days only.
    kits = tmp_path / "kits"
    issued = datetime.now(UTC) - timedelta(days=40)
    config = parse_config(CONFIG, source="test")
    provision_federation(config, out_dir=kits, base_dir=tmp_path, now=issued)
    ca_key = load_private_key(kits / "ca" / "ca.key")
    ca_cert = load_certificate(kits / "ca" / "ca.crt")
    _, expired = issue_certificate(
        ca_key, ca_cert, name="site-2", organization="site-2", role="participant",
        now=issued, valid_days=30,
        signing_key=ed25519.Ed25519PrivateKey.generate().public_key(),
    )  # fmt: skip
    from cryptography.hazmat.primitives.serialization import Encoding

    (kits / "participants" / "site-2" / "cert.pem").write_bytes(expired.public_bytes(Encoding.PEM))
    root = tmp_path / "run"
    root.mkdir()
    (root / "work").symlink_to(insecure_run / "work")
    (root / "kits").symlink_to(kits)
    data = report(capsys, root, tmp_path)
    controls, evidence = statuses(data)
    assert evidence["key_ages"] == "fail"
    certs = next(e for e in data["evidence"] if e["id"] == "key_ages")["facts"]["certificates"]
    assert [c["kit"] for c in certs if c["status"] == "fail"] == ["participants/site-2"]
    assert controls["HIPAA 164.312(d)"] == "fail"
    assert controls["HIPAA 164.312(a)(1)"] == "fail"
    assert controls["GDPR Art. 32"] == "fail"
    code, text = cli(
        capsys, "compliance", "check", "--workdir", str(root / "work"), "--kits", str(kits),
        "--require", "HIPAA 164.312(d)",
    )  # fmt: skip
    assert code == ComplianceError.exit_code
    assert "HIPAA 164.312(d)" in text and "participants/site-2" in text


def test_a_tampered_log_fails_the_audit_controls(
    insecure_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import sqlite3

    root = tmp_path / "run"
    shutil.copytree(insecure_run / "work", root / "work")
    (root / "kits").symlink_to(insecure_run / "kits")
    conn = sqlite3.connect(root / "work" / "fedshield.db", isolation_level=None)
    try:
        conn.execute(
            "UPDATE events SET outcome = 'ok' WHERE id = (SELECT min(id) FROM events "
            "WHERE action = 'security.no_dp')"
        )
    finally:
        conn.close()
    _, evidence = statuses(report(capsys, root, tmp_path))
    assert evidence["audit_chain"] == "fail"


def test_bad_arguments_get_a_clear_error(
    insecure_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(capsys, "compliance", "report", "--workdir", str(tmp_path))
    assert code == 2 and "holds no fedshield database" in text
    code, text = cli(
        capsys, "compliance", "check", "--workdir", str(insecure_run / "work"),
        "--require", "HIPAA 999",
    )  # fmt: skip
    assert code == 2 and "unknown control 'HIPAA 999'" in text
    code, text = cli(
        capsys, "compliance", "report", "--workdir", str(insecure_run / "work"),
        "--kits", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"),
    )  # fmt: skip
    assert code == 2 and "is not a folder" in text
