"""Specification of enrollment: a site's CSR becomes a participant of a running federation.

The admin signs (where the CA key is), the coordinator's database records the name
(durable, audited, at most once, never a revoked name), the config's limits hold, and a
running coordinator's roster sees it within the refresh bound.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import ConfigError, IdentityError
from fedshield.federation.admin import (
    MAX_PARTICIPANTS,
    Administration,
    StateConflict,
    check_roster,
    sign_enrollment,
)
from fedshield.identity import (
    KitSpec,
    issue_certificate,
    load_certificate,
    load_private_key,
    provision,
)
from fedshield.identity.csr import _POP_LABEL, POP_OID, make_request
from fedshield.identity.pki import SIGNING_KEY_OID
from fedshield.storage import Database, EventLog
from fedshield.storage.enrollment import EnrollmentCache, Enrollments

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FEDERATION = "fed"
_SITES = itertools.count()


def _config(**overrides: dict[str, Any]) -> FederationConfig:
    document: dict[str, Any] = {
        "federation": {"name": FEDERATION},
        "task": {"name": "digits", "local_epochs": 1},
        "data": {"dataset": "digits", "partition": "iid"},
        "participants": {"names": ["site-1", "site-2", "site-3"]},
        "rounds": {"count": 2, "min_participants": 2},
        "secure_aggregation": {"enabled": False},
    }
    for table, values in overrides.items():
        document.setdefault(table, {}).update(values)
    return parse_config(document)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    provision(
        tmp_path / "kits",
        federation=FEDERATION,
        participants=[KitSpec(n, n, "participant") for n in ("site-1", "site-2", "site-3")],
        now=NOW,
    )
    return tmp_path / "kits" / "ca"


def _csr(
    tmp_path: Path, name: str, *, organization: str = "Hospital B", role: str = "participant"
) -> bytes:
    site = tmp_path / f"site-{next(_SITES)}"
    result = make_request(
        site, federation=FEDERATION, name=name, organization=organization, role=role
    )
    return result.request_path.read_bytes()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Setup:
    def __init__(self, tmp_path: Path, ca_dir: Path, config: FederationConfig) -> None:
        self.tmp_path = tmp_path
        self.ca_dir = ca_dir
        self.db = Database.for_workdir(tmp_path / "workdir")
        self.admin = Administration(self.db, config=config, models_dir=tmp_path / "models")
        self.ca_cert = load_certificate(ca_dir / "ca.crt")

    def sign(self, name: str, **kwargs: Any) -> bytes:
        request = _csr(self.tmp_path, name, **kwargs)
        return _pem(
            sign_enrollment(request, name=name, organization=None, ca_dir=self.ca_dir, now=NOW)
        )

    def enroll(self, name: str, pem: bytes, **kwargs: Any) -> Any:
        return self.admin.enroll(name, pem, ca_cert=self.ca_cert, actor="admin", now=NOW, **kwargs)


@pytest.fixture
def setup(tmp_path: Path, ca_dir: Path) -> Any:
    made = Setup(tmp_path, ca_dir, _config())
    yield made
    made.db.close()


# -- the happy path -------------------------------------------------------------------


def test_an_enrollment_is_durable_audited_and_listed(setup: Setup, tmp_path: Path) -> None:
    pem = setup.sign("hospital-b")
    record = setup.enroll("hospital-b", pem, organization="Hospital B")
    assert (record.name, record.organization, record.actor) == ("hospital-b", "Hospital B", "admin")
    cert = x509.load_pem_x509_certificate(pem)
    assert record.cert_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert record.serial == format(cert.serial_number, "x")
    assert b"PRIVATE" not in record.certificate.encode()
    setup.db.close()

    db = Database.for_workdir(tmp_path / "workdir")  # another process, later
    try:
        assert [e.name for e in Enrollments(db).list()] == ["hospital-b"]
        (event,) = [e for e in EventLog(db).list() if e.action == "participant.enroll"]
        assert (event.actor, event.resource, event.outcome) == (
            "admin",
            "participant/hospital-b",
            "ok",
        )
        assert event.details["cert_sha256"] == record.cert_sha256
        assert event.details["serial"] == record.serial
        assert "PRIVATE" not in str(event.details) and "BEGIN" not in str(event.details)
        rows = {
            r.name: r
            for r in Administration(db, config=_config(), models_dir=tmp_path).participants()
        }
        assert rows["hospital-b"].status == "enrolled"
        assert rows["hospital-b"].organization == "Hospital B"
        assert rows["site-1"].status == "enrolled"
    finally:
        db.close()


def test_the_roster_cache_sees_another_process_within_the_refresh_bound(
    setup: Setup, tmp_path: Path
) -> None:
    clock = [0.0]
    cache = EnrollmentCache(Enrollments(setup.db), refresh_s=1.0, clock=lambda: clock[0])
    assert cache.refresh() == frozenset()
    other = Database.for_workdir(tmp_path / "workdir")
    try:
        Administration(other, config=_config(), models_dir=tmp_path).enroll(
            "hospital-b",
            setup.sign("hospital-b"),
            ca_cert=setup.ca_cert,
            actor="cli:alice",
            now=NOW,
        )
    finally:
        other.close()
    clock[0] = 0.5
    assert cache.refresh() == frozenset() and "hospital-b" not in cache.names  # not due yet
    clock[0] = 1.0
    assert cache.refresh() == frozenset({"hospital-b"})
    assert cache.names == frozenset({"hospital-b"})
    cache.invalidate()
    assert cache.refresh() == frozenset()  # re-read, nothing new


# -- what is refused, and how ---------------------------------------------------------


def test_a_revoked_name_is_never_enrolled_again_and_the_attempt_is_audited(
    setup: Setup,
) -> None:
    pem = setup.sign("hospital-b")
    setup.enroll("hospital-b", pem)
    setup.admin.revoke("hospital-b", reason="key leaked", actor="admin", now=NOW)
    again = setup.sign("hospital-b")
    with pytest.raises(StateConflict, match="was revoked at .* never enrolled again") as info:
        setup.enroll("hospital-b", again)
    assert "--name NEW-NAME" in info.value.hint
    # Another case of the same name is the same participant to a human: refused too.
    with pytest.raises(StateConflict, match="'hospital-b' was revoked"):
        setup.enroll("Hospital-B", setup.sign("Hospital-B"))
    refused = [
        e
        for e in EventLog(setup.db).list()
        if e.action == "participant.enroll" and e.outcome == "refused"
    ]
    assert len(refused) == 2 and all("revoked" in str(e.details["reason"]) for e in refused)
    assert [e.name for e in Enrollments(setup.db).list()] == ["hospital-b"]


def test_an_enrolled_or_listed_name_is_refused(setup: Setup) -> None:
    setup.enroll("hospital-b", setup.sign("hospital-b"))
    with pytest.raises(StateConflict, match="already enrolled \\(at"):
        setup.enroll("hospital-b", setup.sign("hospital-b"))
    with pytest.raises(StateConflict, match="already enrolled \\(at"):
        setup.enroll("Hospital-B", setup.sign("Hospital-B"))
    with pytest.raises(StateConflict, match="the federation config lists it"):
        setup.enroll("site-2", setup.sign("site-2"))
    assert len(Enrollments(setup.db).list()) == 1


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda pem: b"not a certificate", IdentityError, "not a PEM X.509 certificate"),
        (lambda pem: pem + pem, IdentityError, "exactly one certificate"),
        (lambda pem: pem + b"\n" * 20_000, IdentityError, "over the limit"),
    ],
)
def test_malformed_certificates_are_refused(
    setup: Setup, mutate: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        setup.enroll("hospital-b", mutate(setup.sign("hospital-b")))
    assert Enrollments(setup.db).list() == []
    assert not [e for e in EventLog(setup.db).list() if e.action == "participant.enroll"]


def test_a_certificate_from_another_ca_or_for_another_name_is_refused(
    setup: Setup, tmp_path: Path
) -> None:
    provision(
        tmp_path / "evil",
        federation=FEDERATION,  # same federation name, another CA key
        participants=[KitSpec("x", "x", "participant")],
        now=NOW,
    )
    request = _csr(tmp_path, "hospital-b")
    forged = sign_enrollment(
        request, name="hospital-b", organization=None, ca_dir=tmp_path / "evil" / "ca", now=NOW
    )
    with pytest.raises(IdentityError, match="was not issued by"):
        setup.enroll("hospital-b", _pem(forged))
    with pytest.raises(IdentityError, match="is for 'hospital-b', not 'hospital-c'"):
        setup.enroll("hospital-c", setup.sign("hospital-b"))
    with pytest.raises(IdentityError, match="names organization"):
        setup.enroll("hospital-b", setup.sign("hospital-b"), organization="Hospital C")
    other = load_certificate(tmp_path / "evil" / "ca" / "ca.crt")
    renamed = Administration(
        setup.db, config=_config(federation={"name": "other"}), models_dir=tmp_path
    )
    with pytest.raises(IdentityError, match="is not the CA of federation 'other'"):
        renamed.enroll("hospital-b", _pem(forged), ca_cert=other, actor="admin", now=NOW)


def test_an_expired_certificate_or_one_without_a_signing_key_is_refused(
    setup: Setup, ca_dir: Path
) -> None:
    pem = setup.sign("hospital-b")
    with pytest.raises(IdentityError, match="expired at"):
        setup.admin.enroll(
            "hospital-b", pem, ca_cert=setup.ca_cert, actor="admin", now=NOW + timedelta(days=900)
        )
    ca_key = load_private_key(ca_dir / "ca.key")
    _, bare = issue_certificate(
        ca_key, setup.ca_cert, name="hospital-b", organization="B", role="participant", now=NOW
    )
    with pytest.raises(IdentityError, match="signing key"):
        setup.enroll("hospital-b", _pem(bare))
    _, auditor = issue_certificate(
        ca_key,
        setup.ca_cert,
        name="hospital-b",
        organization="B",
        role="auditor",
        now=NOW,
        signing_key=ed25519.Ed25519PrivateKey.generate().public_key(),
    )
    with pytest.raises(IdentityError, match="only participants are enrolled"):
        setup.enroll("hospital-b", _pem(auditor))
    assert Enrollments(setup.db).list() == []


def test_the_local_administration_needs_the_config_to_enroll(setup: Setup, tmp_path: Path) -> None:
    admin = Administration(setup.db, config=None, models_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs the federation config") as info:
        admin.enroll(
            "hospital-b", setup.sign("hospital-b"), ca_cert=setup.ca_cert, actor="a", now=NOW
        )
    assert "--config" in info.value.hint


@pytest.mark.parametrize("name", ["bad name", "coordinator", "admin", "", "x" * 65])
def test_malformed_or_reserved_names_are_refused(setup: Setup, name: str) -> None:
    with pytest.raises(ConfigError):
        sign_enrollment(b"", name=name, organization=None, ca_dir=setup.ca_dir, now=NOW)
    with pytest.raises(ConfigError):
        setup.enroll(name, b"")


# -- signing the CSR (the identity sign code, plus the enrollment's own checks) ---------


def _subject(name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "B"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "participant"),
        ]
    )


def _foreign_csr(key: Any, name: str = "hospital-b") -> bytes:
    subject = _subject(name)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)
    return request.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("request_pem", "message"),
    [
        (lambda t: b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", "not a PEM certificate"),
        (lambda t: b"A" * (64 * 1024 + 1), "over 65536 bytes"),
        (lambda t: _foreign_csr(rsa.generate_private_key(65537, 2048)), "P-256"),
        (lambda t: _foreign_csr(ed25519.Ed25519PrivateKey.generate()), "P-256"),
        (lambda t: _foreign_csr(ec.generate_private_key(ec.SECP256R1())), "lacks extension"),
        (lambda t: _csr(t, "hospital-c"), "is for 'hospital-c', not 'hospital-b'"),
        (lambda t: _csr(t, "hospital-b", role="auditor"), "only participants are enrolled"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_recorded(
    setup: Setup, tmp_path: Path, request_pem: Any, message: str
) -> None:
    with pytest.raises(IdentityError, match=message):
        sign_enrollment(
            request_pem(tmp_path),
            name="hospital-b",
            organization=None,
            ca_dir=setup.ca_dir,
            now=NOW,
        )
    assert Enrollments(setup.db).list() == []


def test_a_p384_request_with_valid_proofs_is_refused(setup: Setup) -> None:
    # Well formed in every other way (both proofs of possession hold): only the curve.
    tls_key = ec.generate_private_key(ec.SECP384R1())
    signing = ed25519.Ed25519PrivateKey.generate()
    spki = tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    proof = signing.sign(_POP_LABEL + spki)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject("hospital-b"))
        .add_extension(x509.UnrecognizedExtension(SIGNING_KEY_OID, b"\x04\x20" + raw), False)
        .add_extension(x509.UnrecognizedExtension(POP_OID, b"\x04\x40" + proof), False)
        .sign(tls_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(IdentityError, match="P-256"):
        sign_enrollment(request, name="hospital-b", organization=None, ca_dir=setup.ca_dir, now=NOW)


def test_the_organization_the_admin_names_must_be_the_requests(
    setup: Setup, tmp_path: Path
) -> None:
    request = _csr(tmp_path, "hospital-b", organization="Hospital B")
    with pytest.raises(IdentityError, match="names organization 'Hospital B', not 'Clinic'"):
        sign_enrollment(
            request, name="hospital-b", organization="Clinic", ca_dir=setup.ca_dir, now=NOW
        )
    cert = sign_enrollment(
        request, name="hospital-b", organization="Hospital B", ca_dir=setup.ca_dir, now=NOW
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Hospital B"


# -- the config's limits ------------------------------------------------------------------


def test_the_participant_cap_holds() -> None:
    config = _config()
    names = [f"s-{i}" for i in range(MAX_PARTICIPANTS)]
    check_roster(config, names)  # exactly the cap: fine
    with pytest.raises(StateConflict, match=f"the most it may have is {MAX_PARTICIPANTS}"):
        check_roster(config, [*names, "one-more"])


def test_the_secure_aggregation_ring_must_hold_the_larger_sum(tmp_path: Path, ca_dir: Path) -> None:
    # A 32-bit ring with max_weight 2**20 holds the sum of n updates while
    # n * 2**20 * 255 < 2**32: at most 16 participants.
    listed = [f"site-{i}" for i in range(1, 16)]
    config = _config(
        secure_aggregation={"enabled": True, "ring_bits": 32, "max_weight": 2**20},
        participants={"names": listed},
    )
    made = Setup(tmp_path, ca_dir, config)
    try:
        made.enroll("sixteenth", made.sign("sixteenth"))
        with pytest.raises(StateConflict, match="secure_aggregation") as info:
            made.enroll("seventeenth", made.sign("seventeenth"))
        assert "does not allow one more participant" in info.value.message
        assert "n=17" in info.value.message
        refused = [
            e
            for e in EventLog(made.db).list()
            if e.action == "participant.enroll" and e.outcome == "refused"
        ]
        assert [e.resource for e in refused] == ["participant/seventeenth"]
        assert [e.name for e in Enrollments(made.db).list()] == ["sixteenth"]
    finally:
        made.db.close()


def test_an_access_kit_name_cannot_be_enrolled_as_a_participant() -> None:
    config = _config(access={"kits": [{"name": "auditor-1", "role": "auditor"}]})
    with pytest.raises(StateConflict, match="auditor-1"):
        check_roster(config, ["site-1", "site-2", "site-3", "auditor-1"])


def test_participant_dp_sampling_rate_may_not_grow() -> None:
    dp = {
        "noise": "central",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "accountant": "rdp",
        "target_delta": 1e-5,
    }
    # fraction 0.3 of 10: 3 per round (rate 0.3); of 11: 4 (rate 0.36) - more than planned.
    names = [f"s-{i}" for i in range(10)]
    config = _config(
        participants={"names": names},
        rounds={"fraction": 0.3, "min_participants": 2},
        participant_dp=dp,
    )
    with pytest.raises(StateConflict, match="rate 0.3636, above the 0.3"):
        check_roster(config, [*names, "s-10"])
    # A fixed number per round only lowers each one's rate: fine.
    fixed = _config(
        participants={"names": names},
        rounds={"per_round": 3, "min_participants": 2},
        participant_dp=dp,
    )
    check_roster(fixed, [*names, "s-10"])
