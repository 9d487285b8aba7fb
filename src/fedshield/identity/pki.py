"""Federation PKI: a CA, leaf certificates that carry an identity, and PEM files.

Every federation has one certificate authority (ECDSA P-256, SHA-256 signatures) that
signs one leaf certificate per entity. Identity lives in the leaf's subject: ``CN`` is
the entity name, ``O`` its organization and ``OU`` its role (one of :data:`ROLES`).
The certificates work for TLS 1.3 with mutual authentication in Python's :mod:`ssl`
and in httpx: the coordinator's leaf is a server certificate (``serverAuth``, with the
DNS names and IP addresses clients connect to), every other leaf a client certificate.

A leaf may also carry the entity's *signing key*: an Ed25519 public key, bound by the CA
in the private, non-critical extension :data:`SIGNING_KEY_OID`. Secure aggregation uses
it to check a peer's signed key advertisements without trusting the coordinator, which
relays the certificates but cannot forge the CA's signature on them
(:func:`verify_roster`).

Nothing here reads a clock: time is the ``now`` argument (timezone-aware). Keys are
written unencrypted (PKCS#8 PEM) with mode 0600 from the moment they exist.

What misuse breaks:

* :func:`verify_issued_by` checks one link (leaf -> CA) and the validity windows; it does
  not check revocation. Callers that accept a certificate must also consult the
  revocation list.
* :func:`identity_of` and :func:`signing_key_of` read *any* certificate they are given.
  Only call them on a certificate that TLS or :func:`verify_issued_by` has already
  verified against the federation CA; on an unverified certificate the identity and the
  signing key are whatever its author wrote. :func:`verify_roster` does all three.
* Anyone holding ``ca.key`` can mint any identity, including ``admin``. Keep it off the
  coordinator host once the federation is provisioned.
* Unencrypted private keys are only as safe as the directory that holds them;
  :func:`load_private_key` and :func:`load_signing_key` refuse a key file that group or
  others can read. Whoever holds an entity's signing key can sign as that entity until
  its certificate is revoked.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.errors import IdentityError

__all__ = [
    "ROLES",
    "SIGNING_KEY_OID",
    "Identity",
    "Role",
    "create_ca",
    "identity_from_der",
    "identity_of",
    "issue_certificate",
    "issue_certificate_for",
    "load_certificate",
    "load_private_key",
    "load_signing_key",
    "signing_key_of",
    "verify_issued_by",
    "verify_roster",
    "write_certificate",
    "write_private_key",
]

Role = str
"""The role of an entity, carried in the certificate subject's ``OU``.

One of the built-in :data:`ROLES`, or a custom role that the federation's access policy
defines (``fedshield.policy``); either way 1 to 32 characters of ``a-z 0-9 _ -``
starting with a letter. What a role may do is the policy's business, not the PKI's.
"""

ROLES: tuple[Role, ...] = ("coordinator", "participant", "admin", "observer", "auditor")
"""The built-in roles, in a fixed order."""

_ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# An OID under the 2.25 arc is the decimal form of a random UUID (ITU-T X.667 | ISO/IEC
# 9834-8), so it needs no registration and collides with no one else's extension.
SIGNING_KEY_OID = x509.ObjectIdentifier("2.25.296867141958325478453657995382772270287")
"""The certificate extension that binds an entity's Ed25519 signing key.

Its value is the DER ``OCTET STRING`` of the raw 32-byte public key (RFC 8032); it is
non-critical, so TLS stacks that do not know it still accept the certificate.
"""

# DER tag (OCTET STRING) and length (32) that prefix the raw Ed25519 key.
_SIGNING_KEY_PREFIX = b"\x04\x20"
_ED25519_KEY_BYTES = 32
# A roster is at most one certificate per participant; the caps bound the work a
# relayed roster can cause before any signature has been checked.
_ROSTER_MAX_ENTRIES = 10_000
_ROSTER_MAX_DER_BYTES = 16 * 1024

# A certificate is valid from a little before `now` so that a peer whose clock runs
# slightly behind the provisioning machine does not reject a freshly issued certificate.
_CLOCK_SKEW = timedelta(minutes=5)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The CA common name is f"{federation} federation CA", and X.509 caps CN at 64 chars.
_FEDERATION_MAX_CHARS = 64 - len(" federation CA")
_ORGANIZATION_MAX_CHARS = 64
_DNS_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PROVISION_HINT = "Run `fedshield provision CONFIG --out DIR` and use the kit it writes."
_REPROVISION_HINT = (
    "Kits provisioned before signing keys existed lack them: re-provision with "
    "`fedshield provision CONFIG --out DIR --force` and hand out the new kits."
)


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is.

    Parameters
    ----------
    name : str
        The entity name (subject ``CN``), unique within the federation.
    organization : str
        The organization the entity belongs to (subject ``O``).
    role : Role
        The entity's role (subject ``OU``).
    fingerprint_sha256 : str
        Lower-case hex SHA-256 of the certificate's DER encoding; it names one
        certificate, so it changes when the certificate is re-issued.
    not_after : datetime
        End of the certificate's validity, timezone-aware UTC.
    serial : str
        The certificate's serial number in lower-case hex (what a CRL lists).
    """

    name: str
    organization: str
    role: Role
    fingerprint_sha256: str
    not_after: datetime
    serial: str = ""


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got naive {now.isoformat()}")
    return now.astimezone(UTC)


def _check_valid_days(valid_days: int) -> None:
    if valid_days < 1:
        raise IdentityError(f"valid_days must be >= 1, got {valid_days}")


def _check_name(name: str, *, what: str = "name") -> None:
    if not _NAME_RE.fullmatch(name):
        raise IdentityError(
            f"{what} must be 1 to 64 characters of A-Z a-z 0-9 . _ - starting with a "
            f"letter or digit, got {name!r}",
            hint="Entity names become certificate names and directory names; "
            "use something like `hospital-a`.",
        )


def _check_federation(federation: str) -> None:
    if len(federation) > _FEDERATION_MAX_CHARS or not _NAME_RE.fullmatch(federation):
        raise IdentityError(
            f"federation must be 1 to {_FEDERATION_MAX_CHARS} characters of "
            f"A-Z a-z 0-9 . _ - starting with a letter or digit, got {federation!r}"
        )


def _check_organization(organization: str) -> None:
    # Category C holds control and format characters (bidi overrides among them), which
    # would let a subject display as something it is not.
    if (
        not 1 <= len(organization) <= _ORGANIZATION_MAX_CHARS
        or organization != organization.strip()
        or any(unicodedata.category(ch).startswith("C") for ch in organization)
    ):
        raise IdentityError(
            f"organization must be 1 to {_ORGANIZATION_MAX_CHARS} printable characters "
            f"without leading or trailing spaces, got {organization!r}"
        )


def _check_role(role: str, roles: Collection[str] | None = ROLES) -> Role:
    """Return ``role`` if it is in ``roles`` (``None``: any well-formed role name)."""
    if roles is None:
        if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
            raise IdentityError(
                f"role must be 1 to 32 characters of a-z 0-9 _ - starting with a letter, "
                f"got {role!r}"
            )
        return role
    if role not in roles:
        raise IdentityError(f"role must be one of {', '.join(roles)}, got {role!r}")
    return role


def _ski(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    federation: str, *, now: datetime, valid_days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create the self-signed certificate authority of a federation.

    Parameters
    ----------
    federation : str
        Federation id, 1 to 50 characters of ``A-Z a-z 0-9 . _ -``; the CA's common
        name is ``f"{federation} federation CA"``.
    now : datetime
        Current time, timezone-aware. The CA is valid from five minutes before it.
    valid_days : int
        Lifetime of the CA certificate in days, >= 1.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        The CA's P-256 private key and its certificate (``CA:TRUE, pathlen:0``: it signs
        leaf certificates only).

    Raises
    ------
    IdentityError
        If ``federation`` or ``valid_days`` is invalid.
    ValueError
        If ``now`` is naive.
    """
    _check_federation(federation)
    _check_valid_days(valid_days)
    start = _utc(now)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} federation CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _CLOCK_SKEW)
        .not_valid_after(start + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san_entries(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for dns in dns_names:
        if not _DNS_RE.fullmatch(dns):
            raise IdentityError(f"DNS name must be an ASCII host name, got {dns!r}")
        if x509.DNSName(dns) not in entries:
            entries.append(x509.DNSName(dns))
    for ip in ip_addresses:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise IdentityError(f"IP address is not valid, got {ip!r}") from exc
        if x509.IPAddress(address) not in entries:
            entries.append(x509.IPAddress(address))
    return entries


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    name: str,
    organization: str,
    role: Role,
    now: datetime,
    valid_days: int = 825,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    signing_key: ed25519.Ed25519PublicKey | None = None,
    roles: Collection[str] = ROLES,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a leaf certificate, with a fresh P-256 key, that carries an identity.

    Parameters
    ----------
    ca_key : ec.EllipticCurvePrivateKey
        The CA's private key; it must belong to ``ca_cert``.
    ca_cert : x509.Certificate
        The CA certificate, as made by :func:`create_ca`.
    name : str
        Entity name (``CN``), 1 to 64 characters of ``A-Z a-z 0-9 . _ -`` starting with
        a letter or digit.
    organization : str
        Organization (``O``), 1 to 64 printable characters.
    role : Role
        Role (``OU``). ``"coordinator"`` gets a server certificate (``serverAuth``),
        every other role a client certificate (``clientAuth``).
    now : datetime
        Current time, timezone-aware. The certificate is valid from five minutes
        before it.
    valid_days : int
        Lifetime in days, >= 1; the certificate must not outlive the CA.
    dns_names : Sequence[str]
        DNS names for the subjectAltName (the host names clients connect to; needed
        for a coordinator, whose clients check the host name).
    ip_addresses : Sequence[str]
        IPv4 or IPv6 addresses for the subjectAltName.
    signing_key : ed25519.Ed25519PublicKey | None
        The entity's Ed25519 signing key, bound in the non-critical extension
        :data:`SIGNING_KEY_OID` (read it back with :func:`signing_key_of`); ``None``
        issues a certificate without one.
    roles : Collection[str]
        The roles ``role`` must be one of: the built-in :data:`ROLES`, plus the custom
        roles of the federation's access policy when it has some.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        The new private key and its certificate, with a random serial number.

    Raises
    ------
    IdentityError
        If an argument is invalid, ``ca_key`` does not belong to ``ca_cert``, the CA is
        not a CA or not valid at ``now``, or the certificate would outlive the CA.
    ValueError
        If ``now`` is naive.
    """
    key = _new_key()
    cert = issue_certificate_for(
        ca_key,
        ca_cert,
        key.public_key(),
        name=name,
        organization=organization,
        role=role,
        now=now,
        valid_days=valid_days,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        signing_key=signing_key,
        roles=roles,
    )
    return key, cert


def issue_certificate_for(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    name: str,
    organization: str,
    role: Role,
    now: datetime,
    valid_days: int = 825,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    signing_key: ed25519.Ed25519PublicKey | None = None,
    roles: Collection[str] = ROLES,
) -> x509.Certificate:
    """Issue a leaf certificate for a given P-256 public key (a site's CSR).

    The same as :func:`issue_certificate`, except that the key pair is the caller's:
    the private key never reaches the CA (distributed provisioning, see
    :mod:`fedshield.identity.csr`).

    Parameters
    ----------
    ca_key : ec.EllipticCurvePrivateKey
        The CA's private key; it must belong to ``ca_cert``.
    ca_cert : x509.Certificate
        The CA certificate, as made by :func:`create_ca`.
    name : str
        Entity name (``CN``), 1 to 64 characters of ``A-Z a-z 0-9 . _ -`` starting with
        a letter or digit.
    organization : str
        Organization (``O``), 1 to 64 printable characters.
    role : Role
        Role (``OU``). ``"coordinator"`` gets a server certificate (``serverAuth``),
        every other role a client certificate (``clientAuth``).
    now : datetime
        Current time, timezone-aware. The certificate is valid from five minutes
        before it.
    valid_days : int
        Lifetime in days, >= 1; the certificate must not outlive the CA.
    dns_names : Sequence[str]
        DNS names for the subjectAltName (the host names clients connect to; needed
        for a coordinator, whose clients check the host name).
    ip_addresses : Sequence[str]
        IPv4 or IPv6 addresses for the subjectAltName.
    signing_key : ed25519.Ed25519PublicKey | None
        The entity's Ed25519 signing key, bound in the non-critical extension
        :data:`SIGNING_KEY_OID` (read it back with :func:`signing_key_of`); ``None``
        issues a certificate without one.
    roles : Collection[str]
        The roles ``role`` must be one of: the built-in :data:`ROLES`, plus the custom
        roles of the federation's access policy when it has some.

    Returns
    -------
    x509.Certificate
        The certificate, with a random serial number.

    Raises
    ------
    IdentityError
        If an argument is invalid, ``ca_key`` does not belong to ``ca_cert``, the CA is
        not a CA or not valid at ``now``, or the certificate would outlive the CA.
    ValueError
        If ``now`` is naive.
    """
    _check_name(name)
    _check_organization(organization)
    checked_role = _check_role(_check_role(role, None), roles)
    _check_valid_days(valid_days)
    start = _utc(now)
    sans = _san_entries(dns_names, ip_addresses)
    if signing_key is not None and not isinstance(signing_key, ed25519.Ed25519PublicKey):
        raise IdentityError(
            f"signing_key must be an Ed25519 public key, got {type(signing_key).__name__}"
        )

    ca_public = ca_cert.public_key()
    if not isinstance(ca_public, ec.EllipticCurvePublicKey) or _spki(ca_public) != _spki(
        ca_key.public_key()
    ):
        raise IdentityError("the CA private key does not belong to the CA certificate")
    if not _is_ca(ca_cert):
        raise IdentityError("the issuing certificate is not a CA (BasicConstraints CA:FALSE)")
    if not ca_cert.not_valid_before_utc <= start <= ca_cert.not_valid_after_utc:
        raise IdentityError(
            f"the CA certificate is not valid at {start.isoformat()} (valid "
            f"{ca_cert.not_valid_before_utc.isoformat()} to "
            f"{ca_cert.not_valid_after_utc.isoformat()})"
        )
    not_after = start + timedelta(days=valid_days)
    if not_after > ca_cert.not_valid_after_utc:
        raise IdentityError(
            f"a certificate valid for {valid_days} days would outlive the CA, which "
            f"expires at {ca_cert.not_valid_after_utc.isoformat()}",
            hint="Lower valid_days or create a new CA.",
        )

    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public)

    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if checked_role == "coordinator"
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise IdentityError("the certificate's key must be a P-256 (secp256r1) public key")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, checked_role),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if signing_key is not None:
        raw = signing_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SIGNING_KEY_OID, _SIGNING_KEY_PREFIX + raw),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    attributes = cert.subject.get_attributes_for_oid(oid)
    if len(attributes) != 1:
        raise IdentityError(
            f"certificate subject must have exactly one {label}, has {len(attributes)} "
            f"(subject {cert.subject.rfc4514_string()!r})"
        )
    value = attributes[0].value
    if not isinstance(value, str):
        raise IdentityError(f"certificate subject {label} is not a string")
    return value


def identity_of(cert: x509.Certificate, *, roles: Collection[str] | None = ROLES) -> Identity:
    """Read the identity a certificate's subject carries.

    This does not verify the certificate: call it only on a certificate already verified
    against the federation CA (by TLS or :func:`verify_issued_by`).

    Parameters
    ----------
    cert : x509.Certificate
        A leaf certificate made by :func:`issue_certificate`.
    roles : Collection[str] | None
        The roles accepted in the ``OU`` (the built-in ones unless the access policy
        defines more); ``None`` accepts any well-formed role name.

    Returns
    -------
    Identity
        Name, organization and role from the subject, the certificate's SHA-256
        fingerprint and its expiry.

    Raises
    ------
    IdentityError
        If the subject lacks a common name (CN), organization (O) or organizational unit
        (OU), has more than one of them, the name is malformed, or the OU is not a role
        in :data:`ROLES`.
    """
    name = _single_attribute(cert, NameOID.COMMON_NAME, "common name (CN)")
    organization = _single_attribute(cert, NameOID.ORGANIZATION_NAME, "organization (O)")
    role_text = _single_attribute(
        cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (OU, the role)"
    )
    _check_name(name, what="certificate common name (CN)")
    role = _check_role(role_text, roles)
    return Identity(
        name=name,
        organization=organization,
        role=role,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
        serial=format(cert.serial_number, "x"),
    )


def identity_from_der(der: bytes, *, roles: Collection[str] | None = ROLES) -> Identity:
    """Read the identity of a DER-encoded certificate (as TLS hands over a peer's).

    The same caveat as :func:`identity_of` holds: the certificate must already be
    verified, e.g. by a TLS handshake with ``CERT_REQUIRED``.

    Parameters
    ----------
    der : bytes
        The certificate in DER encoding, e.g. ``ssl_socket.getpeercert(binary_form=True)``.
    roles : Collection[str]
        The roles accepted (see :func:`identity_of`).

    Returns
    -------
    Identity
        The identity the certificate carries.

    Raises
    ------
    IdentityError
        If ``der`` is not a certificate or carries no valid identity.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"peer certificate is not valid DER ({len(der)} bytes)") from exc
    return identity_of(cert, roles=roles)


def signing_key_of(cert: x509.Certificate) -> ed25519.Ed25519PublicKey:
    """Read the Ed25519 signing key a certificate binds (extension :data:`SIGNING_KEY_OID`).

    This does not verify the certificate: call it only on a certificate already verified
    against the federation CA, or use :func:`verify_roster`, which does both.

    Parameters
    ----------
    cert : x509.Certificate
        A leaf certificate made by :func:`issue_certificate` with a ``signing_key``.

    Returns
    -------
    ed25519.Ed25519PublicKey
        The entity's signing key.

    Raises
    ------
    IdentityError
        If the certificate has no signing key extension, or it is not the DER
        ``OCTET STRING`` of a 32-byte key.
    """
    subject = cert.subject.rfc4514_string()
    try:
        extension = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID)
    except x509.ExtensionNotFound as exc:
        raise IdentityError(
            f"certificate {subject!r} carries no signing key "
            f"(extension {SIGNING_KEY_OID.dotted_string})",
            hint=_REPROVISION_HINT,
        ) from exc
    except (x509.DuplicateExtension, ValueError) as exc:
        raise IdentityError(f"certificate {subject!r} has malformed extensions") from exc
    value = extension.value
    data = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    expected_length = len(_SIGNING_KEY_PREFIX) + _ED25519_KEY_BYTES
    if len(data) != expected_length or not data.startswith(_SIGNING_KEY_PREFIX):
        raise IdentityError(
            f"certificate {subject!r} has a malformed signing key extension (expected "
            f"a DER OCTET STRING of {_ED25519_KEY_BYTES} bytes, {expected_length} bytes "
            f"in all, got {len(data)} bytes)",
            hint=_REPROVISION_HINT,
        )
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(data[len(_SIGNING_KEY_PREFIX) :])
    except ValueError as exc:
        raise IdentityError(
            f"certificate {subject!r} has a malformed signing key extension "
            "(not an Ed25519 public key)",
            hint=_REPROVISION_HINT,
        ) from exc


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, now: datetime) -> None:
    """Check that the CA signed a certificate and that both are valid at ``now``.

    Parameters
    ----------
    cert : x509.Certificate
        The certificate to check.
    ca_cert : x509.Certificate
        The federation CA certificate it must be directly issued by.
    now : datetime
        Current time, timezone-aware.

    Raises
    ------
    IdentityError
        If ``ca_cert`` is not a CA, the signature or issuer name does not match (the
        message does not say which), or either certificate is outside its validity
        window at ``now``. Revocation is not checked here.
    ValueError
        If ``now`` is naive.
    """
    at = _utc(now)
    subject = cert.subject.rfc4514_string()
    ca_subject = ca_cert.subject.rfc4514_string()
    if not _is_ca(ca_cert):
        raise IdentityError(f"{ca_subject!r} is not a CA certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError(
            f"certificate {subject!r} was not issued by {ca_subject!r}",
            hint="Use the ca.crt of the federation that issued this certificate.",
        ) from exc
    for which, checked in (("CA certificate", ca_cert), ("certificate", cert)):
        label = checked.subject.rfc4514_string()
        if at < checked.not_valid_before_utc:
            raise IdentityError(
                f"{which} {label!r} is not valid before "
                f"{checked.not_valid_before_utc.isoformat()} (now {at.isoformat()})",
                hint="Check this machine's clock.",
            )
        if at > checked.not_valid_after_utc:
            raise IdentityError(
                f"{which} {label!r} expired at {checked.not_valid_after_utc.isoformat()} "
                f"(now {at.isoformat()})",
                hint="Issue a new certificate with `fedshield provision`.",
            )


def verify_roster(
    certificates: Mapping[str, bytes],
    ca_cert: x509.Certificate,
    *,
    now: datetime,
    role: Role = "participant",
) -> dict[str, ed25519.Ed25519PublicKey]:
    """Verify a roster of peer certificates and return each peer's signing key.

    This is how a participant learns its peers' Ed25519 identity keys from certificates
    the coordinator relays, without trusting the coordinator: every certificate must be
    signed by the federation CA, which the coordinator cannot forge, and must name the
    peer it is listed under. A coordinator can still leave peers out or relay a
    certificate that has since been revoked; revocation is not checked here.

    Parameters
    ----------
    certificates : Mapping[str, bytes]
        Peer name to its DER-encoded certificate; at most 10,000 entries of at most
        16 KiB each.
    ca_cert : x509.Certificate
        The federation CA certificate, from the caller's own kit (never from the relay).
    now : datetime
        Current time, timezone-aware; every certificate must be valid at it.
    role : Role
        The role every certificate must carry.

    Returns
    -------
    dict[str, ed25519.Ed25519PublicKey]
        Peer name to its signing key, in the order of ``certificates``.

    Raises
    ------
    IdentityError
        If the roster is too large, or any entry is not a DER certificate, is not issued
        by ``ca_cert`` or not valid at ``now``, names another entity than its key,
        carries another role than ``role``, or binds no well-formed signing key. The
        message names the first failing entry.
    ValueError
        If ``now`` is naive.
    """
    _utc(now)
    expected_role = _check_role(role)
    if len(certificates) > _ROSTER_MAX_ENTRIES:
        raise IdentityError(
            f"roster must hold at most {_ROSTER_MAX_ENTRIES} certificates, got {len(certificates)}"
        )
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for name, der in certificates.items():
        label = f"certificate for {name!r}"
        if not isinstance(name, str):
            raise IdentityError(f"roster names must be strings, got {type(name).__name__}")
        if not isinstance(der, bytes):
            raise IdentityError(f"{label} must be DER bytes, got {type(der).__name__}")
        if len(der) > _ROSTER_MAX_DER_BYTES:
            raise IdentityError(
                f"{label} must be at most {_ROSTER_MAX_DER_BYTES} bytes of DER, got {len(der)}"
            )
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise IdentityError(f"{label} is not valid DER ({len(der)} bytes)") from exc
        try:
            verify_issued_by(cert, ca_cert, now=now)
            found = identity_of(cert)
            if found.name != name:
                raise IdentityError(f"it names {found.name!r} instead")
            if found.role != expected_role:
                raise IdentityError(f"its role is {found.role!r}, expected {expected_role!r}")
            keys[name] = signing_key_of(cert)
        except IdentityError as exc:
            raise IdentityError(f"{label} is refused: {exc.message}", hint=exc.hint) from exc
    return keys


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path``, created with ``mode`` (never wider, even briefly)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    # Overwriting goes through a fresh temporary file renamed over the target, so the
    # target is never truncated in place and never has a wider mode than `mode`.
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp") if overwrite else path
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as exc:
        raise IdentityError(
            f"{path} already exists",
            hint="Remove it or pass overwrite=True (`--overwrite`) to replace it.",
        ) from exc
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # undo the umask: the mode is exact
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(target, path)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise IdentityError(f"cannot write {path}: {exc.strerror}") from exc


def write_private_key(
    path: Path,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    *,
    overwrite: bool = False,
) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, created with mode 0600.

    Parameters
    ----------
    path : Path
        Where to write; the parent directory must exist.
    key : ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        The key to write: a TLS key (P-256) or a signing key (Ed25519).
    overwrite : bool
        Replace an existing file (atomically) instead of refusing.

    Raises
    ------
    IdentityError
        If ``path`` exists and ``overwrite`` is false, or the file cannot be written.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(path, pem, mode=0o600, overwrite=overwrite)


def write_certificate(path: Path, cert: x509.Certificate, *, overwrite: bool = False) -> None:
    """Write a certificate as PEM, created with mode 0644.

    Parameters
    ----------
    path : Path
        Where to write; the parent directory must exist.
    cert : x509.Certificate
        The certificate to write.
    overwrite : bool
        Replace an existing file (atomically) instead of refusing.

    Raises
    ------
    IdentityError
        If ``path`` exists and ``overwrite`` is false, or the file cannot be written.
    """
    _write_file(
        path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=overwrite
    )


def _read_private_key(path: Path, what: str) -> PrivateKeyTypes:
    """Read an unencrypted PEM private key file that only its owner can read."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError(f"{what} {path} is not a regular file")
            if os.name == "posix" and info.st_mode & 0o077:
                raise IdentityError(
                    f"{what} {path} is readable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o})",
                    hint=f"Run `chmod 600 {path}`.",
                )
            data = handle.read()
    except FileNotFoundError as exc:
        raise IdentityError(f"{what} {path} does not exist", hint=_PROVISION_HINT) from exc
    except OSError as exc:
        raise IdentityError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"{path} is not an unencrypted PEM private key", hint=_PROVISION_HINT
        ) from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM private key, refusing one that others can read.

    Parameters
    ----------
    path : Path
        A PEM file written by :func:`write_private_key`.

    Returns
    -------
    ec.EllipticCurvePrivateKey
        The P-256 private key.

    Raises
    ------
    IdentityError
        If the file is missing or unreadable, is readable by group or others (on POSIX),
        is not an unencrypted PEM private key, or is not a P-256 key.
    """
    key = _read_private_key(path, "private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"private key {path} is not an ECDSA P-256 key", hint=_PROVISION_HINT)
    return key


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 signing key, refusing one that others can read.

    Parameters
    ----------
    path : Path
        A PEM file written by :func:`write_private_key` with an Ed25519 key (a kit's
        ``signing.key``).

    Returns
    -------
    ed25519.Ed25519PrivateKey
        The signing key. Nothing here checks that a certificate binds it; :meth:`Kit.load
        <fedshield.identity.Kit.load>` does.

    Raises
    ------
    IdentityError
        If the file is missing or unreadable, is readable by group or others (on POSIX),
        is not an unencrypted PEM private key, or is not an Ed25519 key (e.g. a TLS
        ``key.pem`` given by mistake).
    """
    key = _read_private_key(path, "signing key")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(
            f"signing key {path} is not an Ed25519 key (found {type(key).__name__})",
            hint="The signing key is the kit's signing.key, not its TLS key.pem. "
            + _REPROVISION_HINT,
        )
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate (the first one, if the file holds several).

    Parameters
    ----------
    path : Path
        A PEM file written by :func:`write_certificate`.

    Returns
    -------
    x509.Certificate
        The certificate, not yet verified.

    Raises
    ------
    IdentityError
        If the file is missing or unreadable or holds no PEM certificate.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise IdentityError(f"certificate {path} does not exist", hint=_PROVISION_HINT) from exc
    except OSError as exc:
        raise IdentityError(f"cannot read certificate {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM certificate", hint=_PROVISION_HINT) from exc
