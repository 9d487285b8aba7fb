"""Specification of fedshield.identity: the CA, leaf certificates, PEM files and kits."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import fedshield.identity as identity
from fedshield.errors import IdentityError
from fedshield.identity import (
    ROLES,
    Kit,
    KitSpec,
    client_ssl_context,
    create_ca,
    identity_from_der,
    identity_of,
    issue_certificate,
    load_certificate,
    load_private_key,
    provision,
    server_ssl_context,
    verify_issued_by,
    write_certificate,
    write_private_key,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUT_S = 5.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return create_ca("demo", now=NOW)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> identity.ProvisionResult:
    return provision(
        tmp_path_factory.mktemp("fed") / "demo",
        federation="demo",
        participants=[
            KitSpec("hospital-a", "Hospital A", "participant"),
            KitSpec("auditor", "Audit & Co", "observer"),
        ],
        coordinator_hosts=["coord.example.org", "10.0.0.5"],
        now=NOW,
    )


def _provision_small(out_dir: Path, **kwargs: object) -> identity.ProvisionResult:
    return provision(
        out_dir,
        federation="small",
        participants=[KitSpec("site-1", "Site One", "participant")],
        now=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


# --- public surface -----------------------------------------------------------------


def test_public_surface_is_what_we_mean() -> None:
    assert set(identity.__all__) == {
        "ROLES",
        "SIGNING_KEY_OID",
        "Identity",
        "Kit",
        "KitSpec",
        "ProvisionResult",
        "Role",
        "client_ssl_context",
        "create_ca",
        "identity_from_der",
        "identity_of",
        "issue_certificate",
        "load_certificate",
        "load_private_key",
        "load_signing_key",
        "provision",
        "server_ssl_context",
        "signing_key_of",
        "verify_issued_by",
        "verify_roster",
        "write_certificate",
        "write_private_key",
    }
    assert ROLES == ("coordinator", "participant", "admin", "observer", "auditor")


# --- CA and leaf certificates -------------------------------------------------------


def test_ca_is_a_self_signed_ca(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key, cert = ca
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "demo federation CA"
    )
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)


def test_leaf_verifies_against_its_ca_and_not_another(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    _, leaf = issue_certificate(
        ca_key, ca_cert, name="site-1", organization="Site One", role="participant", now=NOW
    )
    verify_issued_by(leaf, ca_cert, now=NOW)
    _, other_ca = create_ca("demo", now=NOW)  # same name, different key
    with pytest.raises(IdentityError, match="was not issued by"):
        verify_issued_by(leaf, other_ca, now=NOW)


def test_leaf_is_not_a_ca_and_a_leaf_cannot_issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    leaf_key, leaf = issue_certificate(
        ca_key, ca_cert, name="site-1", organization="Site One", role="participant", now=NOW
    )
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    with pytest.raises(IdentityError, match="not a CA"):
        issue_certificate(leaf_key, leaf, name="evil", organization="Evil", role="admin", now=NOW)
    with pytest.raises(IdentityError, match="not a CA"):
        verify_issued_by(leaf, leaf, now=NOW)


def test_leaf_extensions_depend_on_role(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for role in ROLES:
        _, leaf = issue_certificate(
            ca_key, ca_cert, name=f"e-{role}", organization="Org", role=role, now=NOW
        )
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature
        assert not usage.value.key_cert_sign
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        expected = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if role == "coordinator"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        assert list(eku) == [expected]
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        assert leaf.not_valid_after_utc == NOW + timedelta(days=825)


def test_serial_numbers_are_random(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    serials = {
        issue_certificate(ca_key, ca_cert, name="s", organization="O", role="observer", now=NOW)[
            1
        ].serial_number
        for _ in range(3)
    }
    assert len(serials) == 3


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "has space", "../etc", "..", ".", "-dash", "naïve", "a/b"]
)
def test_issue_refuses_bad_names(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str
) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(IdentityError, match="name must be"):
        issue_certificate(ca_key, ca_cert, name=name, organization="O", role="participant", now=NOW)


def test_issue_refuses_bad_role_org_days_and_sans(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    ok = {"name": "site-1", "organization": "Org", "role": "participant", "now": NOW}
    with pytest.raises(IdentityError, match="role must be one of"):
        issue_certificate(ca_key, ca_cert, **{**ok, "role": "root"})  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="organization must be"):
        issue_certificate(ca_key, ca_cert, **{**ok, "organization": "Evil\u202eCorp"})  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="valid_days must be >= 1, got 0"):
        issue_certificate(ca_key, ca_cert, **ok, valid_days=0)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="outlive the CA"):
        issue_certificate(ca_key, ca_cert, **ok, valid_days=5000)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="IP address is not valid"):
        issue_certificate(ca_key, ca_cert, **ok, ip_addresses=["999.1.1.1"])  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="DNS name"):
        issue_certificate(ca_key, ca_cert, **ok, dns_names=["bad host"])  # type: ignore[arg-type]
    other_key, _ = create_ca("other", now=NOW)
    with pytest.raises(IdentityError, match="does not belong"):
        issue_certificate(other_key, ca_cert, **ok)  # type: ignore[arg-type]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        create_ca("demo", now=datetime(2026, 1, 1))


# --- identities ---------------------------------------------------------------------


def test_identity_round_trips(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    _, leaf = issue_certificate(
        ca_key, ca_cert, name="hospital.b_2", organization="Hôpital B", role="admin", now=NOW
    )
    found = identity_of(leaf)
    assert (found.name, found.organization, found.role) == ("hospital.b_2", "Hôpital B", "admin")
    assert found.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert len(found.fingerprint_sha256) == 64
    assert found.not_after == leaf.not_valid_after_utc
    assert identity_from_der(leaf.public_bytes(Encoding.DER)) == found


def _forged(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    attributes: list[x509.NameAttribute[str]],
) -> x509.Certificate:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )


def test_identity_of_refuses_unknown_role_and_missing_cn(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    cn = x509.NameAttribute(NameOID.COMMON_NAME, "x")
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O")
    with pytest.raises(IdentityError, match="role must be one of"):
        identity_of(
            _forged(ca, [cn, org, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "root")])
        )
    with pytest.raises(IdentityError, match=r"common name \(CN\)"):
        identity_of(
            _forged(ca, [org, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "participant")])
        )
    with pytest.raises(IdentityError, match=r"organizational unit"):
        identity_of(_forged(ca, [cn, org]))
    with pytest.raises(IdentityError, match="not valid DER"):
        identity_from_der(b"not a certificate")


def test_expired_and_not_yet_valid_certificates_fail(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    _, leaf = issue_certificate(
        ca_key,
        ca_cert,
        name="site-1",
        organization="O",
        role="participant",
        now=NOW,
        valid_days=30,
    )
    verify_issued_by(leaf, ca_cert, now=leaf.not_valid_after_utc)
    with pytest.raises(IdentityError, match="expired at"):
        verify_issued_by(leaf, ca_cert, now=leaf.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(IdentityError, match="not valid before"):
        verify_issued_by(leaf, ca_cert, now=NOW - timedelta(days=1))


# --- PEM files ----------------------------------------------------------------------


def test_private_key_file_is_0600_and_round_trips(
    tmp_path: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> None:
    key, cert = ca
    path = tmp_path / "ca.key"
    write_private_key(path, key)
    assert _mode(path) == 0o600
    assert load_private_key(path).private_numbers() == key.private_numbers()
    write_certificate(tmp_path / "ca.crt", cert)
    assert _mode(tmp_path / "ca.crt") == 0o644
    assert load_certificate(tmp_path / "ca.crt") == cert


def test_load_private_key_refuses_group_readable(
    tmp_path: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, ca[0])
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by group or others") as info:
        load_private_key(path)
    assert "chmod 600" in info.value.hint


def test_write_refuses_existing_file_unless_overwrite(
    tmp_path: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, ca[0])
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IdentityError, match="already exists"):
        write_private_key(path, other)
    path.chmod(0o640)  # overwrite must not inherit the old, wider mode
    write_private_key(path, other, overwrite=True)
    assert _mode(path) == 0o600
    assert load_private_key(path).private_numbers() == other.private_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(IdentityError, match=str(missing)):
        load_private_key(missing)
    with pytest.raises(IdentityError, match=str(missing)):
        load_certificate(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    garbage.chmod(0o600)
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        load_private_key(garbage)
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        load_certificate(garbage)


# --- provisioning -------------------------------------------------------------------


def test_provision_writes_the_layout(federation: identity.ProvisionResult) -> None:
    out = federation.out_dir
    assert federation.ca_cert_path == out / "ca" / "ca.crt"
    assert _mode(out / "ca" / "ca.key") == 0o600
    assert federation.coordinator_dir == out / "coordinator"
    assert federation.admin_dir == out / "admin"
    assert dict(federation.participant_dirs) == {
        "hospital-a": out / "participants" / "hospital-a",
        "auditor": out / "participants" / "auditor",
    }
    for kit_dir in [
        federation.coordinator_dir,
        federation.admin_dir,
        *federation.participant_dirs.values(),
    ]:
        assert sorted(p.name for p in kit_dir.iterdir()) == [
            "ca.crt",
            "cert.pem",
            "key.pem",
            "kit.toml",
            "signing.key",
        ]
        assert _mode(kit_dir) == 0o700
        assert _mode(kit_dir / "key.pem") == 0o600
        assert _mode(kit_dir / "signing.key") == 0o600
    for d in (out, out / "ca", out / "participants"):
        assert _mode(d) == 0o700
    toml = tomllib.loads((federation.participant_dirs["auditor"] / "kit.toml").read_text())
    assert toml == {
        "federation": "demo",
        "name": "auditor",
        "organization": "Audit & Co",
        "role": "observer",
        "files": {"cert": "cert.pem", "key": "key.pem", "signing": "signing.key", "ca": "ca.crt"},
    }


def test_coordinator_sans_include_loopback_and_extra_hosts(
    federation: identity.ProvisionResult,
) -> None:
    cert = load_certificate(federation.coordinator_dir / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert {"localhost", "coord.example.org"} <= set(dns)
    assert {ip_address("127.0.0.1"), ip_address("10.0.0.5")} <= set(ips)
    assert identity_of(cert).role == "coordinator"


def test_provision_refuses_to_overwrite(tmp_path: Path) -> None:
    first = _provision_small(tmp_path / "fed")
    old_ca = first.ca_cert_path.read_bytes()
    with pytest.raises(IdentityError, match="already holds a federation"):
        _provision_small(tmp_path / "fed")
    assert first.ca_cert_path.read_bytes() == old_ca
    _provision_small(tmp_path / "fed", overwrite=True)
    assert first.ca_cert_path.read_bytes() != old_ca
    Kit.load(first.participant_dirs["site-1"], now=NOW)


def test_provision_refuses_partial_leftovers_without_touching_disk(tmp_path: Path) -> None:
    kit_dir = tmp_path / "fed" / "participants" / "site-1"
    kit_dir.mkdir(parents=True)
    (kit_dir / "key.pem").write_text("old")
    with pytest.raises(IdentityError, match="key.pem already exists"):
        _provision_small(tmp_path / "fed")
    assert not (tmp_path / "fed" / "ca").exists()


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([KitSpec("a", "O", "participant"), KitSpec("A", "O", "participant")], "given twice"),
        ([KitSpec("coordinator", "O", "participant")], "reserved"),
        ([KitSpec("Admin", "O", "participant")], "reserved"),
        ([KitSpec("c2", "O", "coordinator")], "has role 'coordinator'"),
    ],
)
def test_provision_refuses_bad_participant_lists(
    tmp_path: Path, specs: list[KitSpec], message: str
) -> None:
    with pytest.raises(IdentityError, match=message):
        provision(tmp_path / "fed", federation="f", participants=specs, now=NOW)
    assert not (tmp_path / "fed").exists()


def test_kitspec_validates_at_construction() -> None:
    with pytest.raises(IdentityError, match="name must be"):
        KitSpec("bad name", "O", "participant")
    with pytest.raises(IdentityError, match="role must be"):
        KitSpec("ok", "O", "Root!")


def test_provision_refuses_a_role_outside_the_policy(tmp_path: Path) -> None:
    # A well-formed custom role name is a valid KitSpec, but provision only issues roles
    # the federation's access policy knows (built-in ones by default).
    spec = KitSpec("ok", "O", "root")
    with pytest.raises(IdentityError, match="role must be one of"):
        provision(tmp_path / "fed", federation="f", participants=[spec], now=NOW)
    assert not (tmp_path / "fed").exists()
    made = provision(
        tmp_path / "fed2", federation="f", participants=[spec], now=NOW, roles=(*ROLES, "root")
    )
    assert Kit.load(made.participant_dirs["ok"], now=NOW).role == "root"


def test_provision_writes_extra_files(tmp_path: Path) -> None:
    result = _provision_small(
        tmp_path / "fed", extra_files={"site-1": {"participant.toml": 'name = "site-1"\n'}}
    )
    written = result.participant_dirs["site-1"] / "participant.toml"
    assert written.read_text() == 'name = "site-1"\n'
    for bad, message in [
        ({"nobody": {"x.toml": ""}}, "not being provisioned"),
        ({"site-1": {"../x.toml": ""}}, "plain file name"),
        ({"site-1": {"key.pem": ""}}, "would replace"),
    ]:
        with pytest.raises(IdentityError, match=message):
            _provision_small(tmp_path / "other", extra_files=bad)


# --- kits ---------------------------------------------------------------------------


def test_kit_load_reads_a_kit(federation: identity.ProvisionResult) -> None:
    kit = Kit.load(federation.participant_dirs["hospital-a"], now=NOW)
    assert (kit.federation, kit.name, kit.organization, kit.role) == (
        "demo",
        "hospital-a",
        "Hospital A",
        "participant",
    )
    assert kit.key_path == federation.participant_dirs["hospital-a"] / "key.pem"
    assert Kit.load(federation.coordinator_dir, now=NOW).role == "coordinator"
    assert Kit.load(federation.admin_dir, now=NOW).role == "admin"


def test_kit_load_reports_a_missing_file(tmp_path: Path) -> None:
    kit_dir = _provision_small(tmp_path / "fed").participant_dirs["site-1"]
    (kit_dir / "cert.pem").unlink()
    with pytest.raises(IdentityError, match="missing cert.pem") as info:
        Kit.load(kit_dir, now=NOW)
    assert "fedshield provision" in info.value.hint
    with pytest.raises(IdentityError, match="kit.toml is missing") as info:
        Kit.load(tmp_path, now=NOW)
    assert "fedshield provision" in info.value.hint


def test_kit_load_refuses_a_certificate_for_someone_else(tmp_path: Path) -> None:
    fed = _provision_small(tmp_path / "fed")
    kit_dir = fed.participant_dirs["site-1"]
    (kit_dir / "cert.pem").write_bytes((fed.admin_dir / "cert.pem").read_bytes())
    with pytest.raises(IdentityError, match="kit.toml says"):
        Kit.load(kit_dir, now=NOW)


def test_kit_load_refuses_a_certificate_from_another_federation(tmp_path: Path) -> None:
    fed = _provision_small(tmp_path / "fed")
    other = _provision_small(tmp_path / "other")
    kit_dir = fed.participant_dirs["site-1"]
    for name in ("cert.pem", "key.pem"):
        (kit_dir / name).write_bytes((other.participant_dirs["site-1"] / name).read_bytes())
    with pytest.raises(IdentityError, match="was not issued by"):
        Kit.load(kit_dir, now=NOW)


def test_kit_load_refuses_an_expired_kit(tmp_path: Path) -> None:
    fed = _provision_small(tmp_path / "fed")
    with pytest.raises(IdentityError, match="expired at"):
        Kit.load(fed.admin_dir, now=NOW + timedelta(days=826))


def test_kit_load_refuses_wrong_key(tmp_path: Path) -> None:
    fed = _provision_small(tmp_path / "fed")
    kit_dir = fed.participant_dirs["site-1"]
    (kit_dir / "key.pem").write_bytes((fed.admin_dir / "key.pem").read_bytes())
    with pytest.raises(IdentityError, match="is not the private key of"):
        Kit.load(kit_dir, now=NOW)


# --- mutual TLS 1.3 over loopback ---------------------------------------------------


@dataclass
class _Server:
    port: int
    thread: threading.Thread
    peer: identity.Identity | None = None
    version: str | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _serve_once(context: ssl.SSLContext) -> _Server:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT_S)
    server = _Server(port=listener.getsockname()[1], thread=threading.Thread(daemon=True))

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT_S)
            with context.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                server.peer = identity_from_der(der)
                server.version = tls.version()
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except BaseException as exc:  # reported to the test thread
            server.error = exc
        finally:
            listener.close()

    server.thread = threading.Thread(target=run, daemon=True)
    server.thread.start()
    return server


def _talk(context: ssl.SSLContext, port: int, *, hostname: str = "localhost") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(4)


def _finish(server: _Server) -> None:
    server.thread.join(TIMEOUT_S)
    assert not server.thread.is_alive()


def test_mutual_tls13_handshake_succeeds(federation: identity.ProvisionResult) -> None:
    server_ctx = server_ssl_context(Kit.load(federation.coordinator_dir, now=NOW))
    client_ctx = client_ssl_context(Kit.load(federation.participant_dirs["hospital-a"], now=NOW))
    for hostname in ("localhost", "127.0.0.1"):
        server = _serve_once(server_ctx)
        assert _talk(client_ctx, server.port, hostname=hostname) == b"pong"
        _finish(server)
        assert server.error is None
        assert server.version == "TLSv1.3"
        assert server.peer is not None
        assert (server.peer.name, server.peer.role) == ("hospital-a", "participant")


def test_client_certificate_from_a_foreign_ca_is_rejected(
    federation: identity.ProvisionResult, tmp_path: Path
) -> None:
    server_ctx = server_ssl_context(Kit.load(federation.coordinator_dir, now=NOW))
    foreign = Kit.load(_provision_small(tmp_path / "foreign").participant_dirs["site-1"], now=NOW)
    # Trusts the real CA, so only the server's check of the client certificate can fail.
    sneaky = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    sneaky.load_verify_locations(cafile=str(federation.ca_cert_path))
    sneaky.load_cert_chain(str(foreign.cert_path), str(foreign.key_path))
    server = _serve_once(server_ctx)
    with pytest.raises((ssl.SSLError, OSError)):
        if _talk(sneaky, server.port) != b"pong":
            raise ssl.SSLError("connection closed")
    _finish(server)
    assert isinstance(server.error, ssl.SSLError)
    assert server.peer is None


def test_client_without_certificate_is_rejected(federation: identity.ProvisionResult) -> None:
    server_ctx = server_ssl_context(Kit.load(federation.coordinator_dir, now=NOW))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=str(federation.ca_cert_path))
    server = _serve_once(server_ctx)
    with pytest.raises((ssl.SSLError, OSError)):
        if _talk(anonymous, server.port) != b"pong":
            raise ssl.SSLError("connection closed")
    _finish(server)
    assert isinstance(server.error, ssl.SSLError)


def test_client_refuses_a_server_from_a_foreign_ca_or_wrong_host(
    federation: identity.ProvisionResult, tmp_path: Path
) -> None:
    server_ctx = server_ssl_context(Kit.load(federation.coordinator_dir, now=NOW))
    foreign = Kit.load(_provision_small(tmp_path / "foreign").participant_dirs["site-1"], now=NOW)
    server = _serve_once(server_ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        _talk(client_ssl_context(foreign), server.port)
    _finish(server)
    assert server.error is not None

    good = client_ssl_context(Kit.load(federation.participant_dirs["hospital-a"], now=NOW))
    server = _serve_once(server_ctx)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _talk(good, server.port, hostname="elsewhere.example.org")
    _finish(server)


def test_ssl_contexts_are_tls13_only_with_required_certs(
    federation: identity.ProvisionResult,
) -> None:
    server_ctx = server_ssl_context(Kit.load(federation.coordinator_dir, now=NOW))
    client_ctx = client_ssl_context(Kit.load(federation.participant_dirs["auditor"], now=NOW))
    for ctx in (server_ctx, client_ctx):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert client_ctx.check_hostname
    # Only the federation CA is trusted: no system CAs were loaded.
    assert client_ctx.cert_store_stats()["x509_ca"] == 1
