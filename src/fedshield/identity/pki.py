"""Federation PKI: a CA, leaf certificates that carry an identity, and PEM files.

Every federation has one certificate authority (ECDSA P-256, SHA-256 signatures) that
signs one leaf certificate per entity. Identity lives in the leaf's subject: ``CN`` is
the entity name, ``O`` its organization and ``OU`` its role (one of :data:`ROLES`).
The certificates work for TLS 1.3 with mutual authentication in Python's :mod:`ssl`
and in httpx: the coordinator's leaf is a server certificate (``serverAuth``, with the
DNS names and IP addresses clients connect to), every other leaf a client certificate.

Nothing here reads a clock: time is the ``now`` argument (timezone-aware). Keys are
written unencrypted (PKCS#8 PEM) with mode 0600 from the moment they exist.

What misuse breaks:

* :func:`verify_issued_by` checks one link (leaf -> CA) and the validity windows; it does
  not check revocation. Callers that accept a certificate must also consult the
  revocation list.
* :func:`identity_of` reads the subject of *any* certificate it is given. Only call it on
  a certificate that TLS or :func:`verify_issued_by` has already verified against the
  federation CA; on an unverified certificate the identity is whatever its author wrote.
* Anyone holding ``ca.key`` can mint any identity, including ``admin``. Keep it off the
  coordinator host once the federation is provisioned.
* Unencrypted private keys are only as safe as the directory that holds them;
  :func:`load_private_key` refuses a key file that group or others can read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.errors import IdentityError

__all__ = [
    "ROLES",
    "Identity",
    "Role",
    "create_ca",
    "identity_from_der",
    "identity_of",
    "issue_certificate",
    "load_certificate",
    "load_private_key",
    "verify_issued_by",
    "write_certificate",
    "write_private_key",
]

Role = Literal["coordinator", "participant", "admin", "observer"]
"""The role of an entity, carried in the certificate subject's ``OU``."""

ROLES: tuple[Role, ...] = ("coordinator", "participant", "admin", "observer")
"""Every known :data:`Role`, in a fixed order."""

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
    """

    name: str
    organization: str
    role: Role
    fingerprint_sha256: str
    not_after: datetime


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


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise IdentityError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
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
    _check_name(name)
    _check_organization(organization)
    checked_role = _check_role(role)
    _check_valid_days(valid_days)
    start = _utc(now)
    sans = _san_entries(dns_names, ip_addresses)

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
    key = _new_key()
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
        .public_key(key.public_key())
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
        .add_extension(_ski(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


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


def identity_of(cert: x509.Certificate) -> Identity:
    """Read the identity a certificate's subject carries.

    This does not verify the certificate: call it only on a certificate already verified
    against the federation CA (by TLS or :func:`verify_issued_by`).

    Parameters
    ----------
    cert : x509.Certificate
        A leaf certificate made by :func:`issue_certificate`.

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
    role = _check_role(role_text)
    return Identity(
        name=name,
        organization=organization,
        role=role,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
    )


def identity_from_der(der: bytes) -> Identity:
    """Read the identity of a DER-encoded certificate (as TLS hands over a peer's).

    The same caveat as :func:`identity_of` holds: the certificate must already be
    verified, e.g. by a TLS handshake with ``CERT_REQUIRED``.

    Parameters
    ----------
    der : bytes
        The certificate in DER encoding, e.g. ``ssl_socket.getpeercert(binary_form=True)``.

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
    return identity_of(cert)


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
    path: Path, key: ec.EllipticCurvePrivateKey, *, overwrite: bool = False
) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, created with mode 0600.

    Parameters
    ----------
    path : Path
        Where to write; the parent directory must exist.
    key : ec.EllipticCurvePrivateKey
        The key to write.
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
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError(f"private key {path} is not a regular file")
            if os.name == "posix" and info.st_mode & 0o077:
                raise IdentityError(
                    f"private key {path} is readable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o})",
                    hint=f"Run `chmod 600 {path}`.",
                )
            data = handle.read()
    except FileNotFoundError as exc:
        raise IdentityError(f"private key {path} does not exist", hint=_PROVISION_HINT) from exc
    except OSError as exc:
        raise IdentityError(f"cannot read private key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"{path} is not an unencrypted PEM private key", hint=_PROVISION_HINT
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"private key {path} is not an ECDSA P-256 key", hint=_PROVISION_HINT)
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
