"""Distributed provisioning: the site's keys never leave it; the CA signs only proven CSRs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedshield.errors import IdentityError
from fedshield.identity import (
    SIGNING_KEY_OID,
    Kit,
    KitSpec,
    load_certificate,
    load_private_key,
    provision,
    write_certificate,
)
from fedshield.identity.csr import POP_OID, make_request, sign_request

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    provision(
        tmp_path / "fed",
        federation="fed",
        participants=[KitSpec("site-1", "Site One", "participant")],
        now=NOW,
    )
    return tmp_path / "fed"


def _ca(federation: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return load_private_key(federation / "ca" / "ca.key"), load_certificate(
        federation / "ca" / "ca.crt"
    )


def test_a_signed_request_makes_a_working_kit_and_the_keys_stay_at_the_site(
    federation: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    result = make_request(site, federation="fed", name="hospital-b", organization="Hospital B")
    request = result.request_path.read_bytes()
    assert b"PRIVATE" not in request
    cert, identity = sign_request(request, *_ca(federation), now=NOW)
    assert (identity.name, identity.organization, identity.role) == (
        "hospital-b",
        "Hospital B",
        "participant",
    )
    write_certificate(site / "cert.pem", cert)
    shutil.copy(federation / "ca" / "ca.crt", site / "ca.crt")
    kit = Kit.load(site, now=NOW)  # the cert binds the site's own TLS and signing keys
    assert kit.name == "hospital-b"
    assert (site / "key.pem").stat().st_mode & 0o077 == 0


def _tampered(request_pem: bytes, *, swap_signing_key: bool) -> bytes:
    """Re-sign a request with a new TLS key, keeping (or swapping) the signing-key claim."""
    original = x509.load_pem_x509_csr(request_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(original.subject)
    for extension in original.extensions:
        value = extension.value
        if swap_signing_key and extension.oid == SIGNING_KEY_OID:
            other = ed25519.Ed25519PrivateKey.generate().public_key()
            raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            value = x509.UnrecognizedExtension(SIGNING_KEY_OID, b"\x04\x20" + raw)
        builder = builder.add_extension(value, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("swap_signing_key", [False, True])
def test_a_request_without_proof_of_possession_is_refused(
    federation: Path, tmp_path: Path, swap_signing_key: bool
) -> None:
    result = make_request(tmp_path / "site", federation="fed", name="b", organization="B")
    forged = _tampered(result.request_path.read_bytes(), swap_signing_key=swap_signing_key)
    with pytest.raises(IdentityError, match="does not prove possession"):
        sign_request(forged, *_ca(federation), now=NOW)


def test_a_request_without_the_proof_extension_is_refused(
    federation: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "b"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "B"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "participant"),
        ]
    )
    bare = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(IdentityError, match="lacks extension"):
        sign_request(bare.public_bytes(serialization.Encoding.PEM), *_ca(federation), now=NOW)
    assert POP_OID.dotted_string.startswith("2.25.")


def test_roles_are_checked_when_signing(federation: Path, tmp_path: Path) -> None:
    made = make_request(
        tmp_path / "a", federation="fed", name="dpo", organization="B", role="data-steward"
    )
    with pytest.raises(IdentityError, match="role must be one of"):
        sign_request(made.request_path.read_bytes(), *_ca(federation), now=NOW)
    cert, identity = sign_request(
        made.request_path.read_bytes(),
        *_ca(federation),
        now=NOW,
        roles=("participant", "data-steward"),
    )
    assert identity.role == "data-steward"
    with pytest.raises(IdentityError, match="coordinator"):
        make_request(
            tmp_path / "c", federation="fed", name="c", organization="C", role="coordinator"
        )
    with pytest.raises(IdentityError, match="not a PEM"):
        sign_request(b"hello", *_ca(federation), now=NOW)


def test_make_request_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    make_request(tmp_path / "s", federation="fed", name="s", organization="S")
    with pytest.raises(IdentityError, match="already exists"):
        make_request(tmp_path / "s", federation="fed", name="s", organization="S")
