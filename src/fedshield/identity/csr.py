"""Distributed provisioning: a site makes its own keys and a CSR; the admin signs it.

The private keys never leave the site::

    site:   fedshield identity csr --name hospital-b --org "Hospital B"
                --federation F --out kit-b          # key.pem, signing.key, request.csr
    admin:  fedshield identity sign kit-b/request.csr --ca kits/ca --out cert.pem
    site:   copy cert.pem and ca.crt into kit-b     # Kit.load(kit-b) now succeeds

The CSR (PKCS#10, signed with the site's P-256 TLS key, which proves possession of it)
carries the identity (``CN``, ``O``, ``OU`` = role) and two extension requests: the
site's Ed25519 signing key (:data:`~fedshield.identity.pki.SIGNING_KEY_OID`) and an
Ed25519 signature of the TLS public key by that signing key (:data:`POP_OID`), which
proves possession of the signing key too: nobody can have another site's signing key
bound into their own certificate.

What misuse breaks: :func:`sign_request` vouches for the name and role *in the
request*. The admin must check out of band (a call, a ticket) that the request really
comes from that organization, exactly as when handing out a kit; the command prints the
identity it signed and the certificate's fingerprint, for the admin to confirm with the
site.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedshield.errors import IdentityError
from fedshield.identity.kit import (
    KEY_FILE,
    KIT_FILE,
    SIGNING_KEY_FILE,
    KitSpec,
    _kit_toml,
    _make_dir,
    _write_text,
)
from fedshield.identity.pki import (
    _ED25519_KEY_BYTES,
    _SIGNING_KEY_PREFIX,
    ROLES,
    SIGNING_KEY_OID,
    Identity,
    _check_federation,
    _check_role,
    _write_file,
    identity_of,
    issue_certificate_for,
    signing_key_of,
    write_private_key,
)

__all__ = ["POP_OID", "REQUEST_FILE", "CsrResult", "make_request", "sign_request"]

POP_OID = x509.ObjectIdentifier("2.25.296867141958325478453657995382772270288")
"""CSR extension: Ed25519 signature of the TLS SubjectPublicKeyInfo by the signing key."""

REQUEST_FILE = "request.csr"
_POP_LABEL = b"fedshield/identity/v1/csr-pop"
_MAX_CSR_BYTES = 64 * 1024
_ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class CsrResult:
    """What :func:`make_request` wrote at the site."""

    kit_dir: Path
    request_path: Path


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_request(
    out_dir: Path,
    *,
    federation: str,
    name: str,
    organization: str,
    role: str = "participant",
    extra_files: dict[str, str] | None = None,
) -> CsrResult:
    """Make a site's TLS key, signing key and CSR in ``out_dir`` (a kit without its cert).

    Raises
    ------
    IdentityError
        If an argument is invalid or ``out_dir`` already holds keys.
    """
    _check_federation(federation)
    spec = KitSpec(name, organization, role)
    if spec.role == "coordinator":
        raise IdentityError("the coordinator's kit comes from `fedshield provision`, not a CSR")
    for existing in (KEY_FILE, SIGNING_KEY_FILE, REQUEST_FILE):
        if (out_dir / existing).exists():
            raise IdentityError(
                f"{out_dir / existing} already exists",
                hint="Use an empty directory: a new request needs new keys.",
            )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    raw = signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    proof = signing_key.sign(_POP_LABEL + _spki(tls_key.public_key()))
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, spec.name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.organization),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, spec.role),
                ]
            )
        )
        .add_extension(
            x509.UnrecognizedExtension(SIGNING_KEY_OID, _SIGNING_KEY_PREFIX + raw),
            critical=False,
        )
        .add_extension(x509.UnrecognizedExtension(POP_OID, b"\x04\x40" + proof), critical=False)
        .sign(tls_key, hashes.SHA256())
    )
    _make_dir(out_dir)
    write_private_key(out_dir / KEY_FILE, tls_key)
    write_private_key(out_dir / SIGNING_KEY_FILE, signing_key)
    _write_file(
        out_dir / REQUEST_FILE,
        request.public_bytes(serialization.Encoding.PEM),
        mode=0o644,
        overwrite=False,
    )
    _write_text(out_dir / KIT_FILE, _kit_toml(federation, spec), overwrite=False)
    for filename, text in (extra_files or {}).items():
        _write_text(out_dir / filename, text, overwrite=False)
    return CsrResult(kit_dir=out_dir, request_path=out_dir / REQUEST_FILE)


def _extension(request: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier) -> bytes:
    try:
        value = request.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError(
            f"the request lacks extension {oid.dotted_string}",
            hint="Make requests with `fedshield identity csr`.",
        ) from exc
    except (x509.DuplicateExtension, ValueError) as exc:
        raise IdentityError("the request has malformed extensions") from exc
    return value.value if isinstance(value, x509.UnrecognizedExtension) else b""


def sign_request(
    request_pem: bytes,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: datetime,
    valid_days: int = 825,
    roles: tuple[str, ...] = ROLES,
) -> tuple[x509.Certificate, Identity]:
    """Check a site's CSR and issue its certificate; the site's keys stay at the site.

    Raises
    ------
    IdentityError
        If the request is not a PEM CSR, its signature or either proof of possession
        does not verify (the message does not say which), its identity is malformed, its
        role unknown or ``coordinator``, or the CA cannot issue.
    """
    if len(request_pem) > _MAX_CSR_BYTES:
        raise IdentityError(f"the request is over {_MAX_CSR_BYTES} bytes")
    try:
        request = x509.load_pem_x509_csr(request_pem)
    except ValueError as exc:
        raise IdentityError("the file is not a PEM certificate signing request") from exc
    public = request.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("the request's key must be a P-256 key")
    raw_key = _extension(request, SIGNING_KEY_OID)
    raw_proof = _extension(request, POP_OID)
    try:
        if not request.is_signature_valid:
            raise InvalidSignature
        if len(raw_key) != len(_SIGNING_KEY_PREFIX) + _ED25519_KEY_BYTES or not raw_key.startswith(
            _SIGNING_KEY_PREFIX
        ):
            raise InvalidSignature
        if len(raw_proof) != 2 + _ED25519_SIGNATURE_BYTES or raw_proof[:2] != b"\x04\x40":
            raise InvalidSignature
        signing = ed25519.Ed25519PublicKey.from_public_bytes(raw_key[len(_SIGNING_KEY_PREFIX) :])
        signing.verify(raw_proof[2:], _POP_LABEL + _spki(public))
    except (InvalidSignature, ValueError) as exc:
        raise IdentityError(
            "the request does not prove possession of its keys",
            hint="Make a new request with `fedshield identity csr`.",
        ) from exc

    def attribute(oid: x509.ObjectIdentifier, label: str) -> str:
        found = request.subject.get_attributes_for_oid(oid)
        if len(found) != 1 or not isinstance(found[0].value, str):
            raise IdentityError(f"the request's subject must have exactly one {label}")
        return found[0].value

    name = attribute(NameOID.COMMON_NAME, "common name (CN)")
    organization = attribute(NameOID.ORGANIZATION_NAME, "organization (O)")
    role = _check_role(attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "role (OU)"), None)
    if role == "coordinator":
        raise IdentityError("a CSR cannot ask for the coordinator role")
    cert = issue_certificate_for(
        ca_key,
        ca_cert,
        public,
        name=name,
        organization=organization,
        role=role,
        now=now,
        valid_days=valid_days,
        signing_key=signing,
        roles=roles,
    )
    signing_key_of(cert)  # the binding reads back
    return cert, identity_of(cert, roles=None)
