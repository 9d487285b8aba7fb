"""Certificate rotation: a new key pair and certificate for an entity, same identity.

:func:`rotate_kit` re-keys a kit in place (new P-256 TLS key, new Ed25519 signing key,
a new certificate from the federation CA for the same name, organization and role) and
keeps the old certificate next to it as ``cert.pem.previous``. The old certificate
stays valid until the caller revokes it: ``fedshield identity rotate --workdir W``
records its revocation by fingerprint, effective after a grace period, so a site whose
agent still runs with the old kit keeps working until it restarts with the new one.

What misuse breaks: rotation runs where the CA key and the kit are (the admin's machine,
for centrally provisioned kits). For a site that made its own keys, rotate with a new
CSR (`fedshield identity csr` / `sign`) and revoke the old certificate instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedshield.identity.kit import Kit
from fedshield.identity.pki import (
    Identity,
    identity_of,
    issue_certificate,
    load_certificate,
    write_certificate,
    write_private_key,
)

__all__ = ["PREVIOUS_CERT_FILE", "Rotation", "rotate_kit"]

PREVIOUS_CERT_FILE = "cert.pem.previous"


@dataclass(frozen=True)
class Rotation:
    """The identity before and after a rotation."""

    old: Identity
    new: Identity


def rotate_kit(
    kit: Kit,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: datetime,
    valid_days: int = 825,
) -> Rotation:
    """Re-key ``kit`` in place with a new certificate for the same identity.

    Raises
    ------
    IdentityError
        If the CA cannot issue (wrong CA, expired CA, lifetime past the CA's).
    """
    old_cert = load_certificate(kit.cert_path)
    old = identity_of(old_cert, roles=None)
    signing = ed25519.Ed25519PrivateKey.generate()
    key, cert = issue_certificate(
        ca_key,
        ca_cert,
        name=kit.name,
        organization=kit.organization,
        role=kit.role,
        now=now,
        valid_days=valid_days,
        signing_key=signing.public_key(),
        roles=(kit.role,),
    )
    write_certificate(kit.cert_path.with_name(PREVIOUS_CERT_FILE), old_cert, overwrite=True)
    # The certificate last: a crash before it leaves keys that do not match the old
    # certificate, which Kit.load reports; rerun the rotation.
    write_private_key(kit.key_path, key, overwrite=True)
    write_private_key(kit.signing_key_path, signing, overwrite=True)
    write_certificate(kit.cert_path, cert, overwrite=True)
    return Rotation(old=old, new=identity_of(cert, roles=None))
