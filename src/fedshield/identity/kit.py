"""Provisioning kits: one directory per entity with its CA, certificate, key and settings.

:func:`provision` creates a federation on disk: a CA and one kit for the coordinator, one
for the administrator and one per participant::

    out_dir/ca/ca.crt, ca.key                    the federation CA (keep ca.key offline)
    out_dir/coordinator/{ca.crt,cert.pem,key.pem,signing.key,kit.toml}
    out_dir/admin/{ca.crt,cert.pem,key.pem,signing.key,kit.toml}
    out_dir/participants/<name>/{ca.crt,cert.pem,key.pem,signing.key,kit.toml}

In every kit, ``key.pem`` is the TLS key (P-256) of ``cert.pem`` and ``signing.key`` the
entity's Ed25519 signing key, whose public half the CA binds into ``cert.pem`` (see
:data:`~fedshield.identity.pki.SIGNING_KEY_OID`): peers trust signatures made with it
because the CA, not the coordinator, vouches for it.

A kit is what an organization receives; :meth:`Kit.load` reads one back and checks that
it is whole and consistent, and :func:`server_ssl_context` / :func:`client_ssl_context`
turn it into TLS 1.3 contexts with mutual authentication against the federation CA only.

What misuse breaks:

* The CA key signs any identity. :func:`provision` writes it to ``out_dir/ca/ca.key``;
  whoever copies that directory along with a kit hands out the power to impersonate
  anyone, the admin included.
* A kit's ``key.pem`` and ``signing.key`` are unencrypted; directories are created with
  mode 0700 and keys with 0600. Copying a kit with a tool that widens modes makes
  :meth:`Kit.load` refuse it until the keys are ``chmod 600`` again. Whoever copies
  ``signing.key`` can sign as the entity until its certificate is revoked.
* ``overwrite=True`` re-keys the whole federation: every previously issued kit stops
  working, and kits of participants no longer listed are left on disk, unusable.
* The SSL contexts trust the kit's CA and nothing else (no system CAs); they do not
  check revocation, so the caller must check the peer identity against the revocation
  list after the handshake.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedshield.errors import IdentityError
from fedshield.identity.pki import (
    ROLES,
    Role,
    _check_federation,
    _check_name,
    _check_organization,
    _check_role,
    _check_valid_days,
    _utc,
    _write_file,
    create_ca,
    identity_of,
    issue_certificate,
    load_certificate,
    load_private_key,
    load_signing_key,
    signing_key_of,
    verify_issued_by,
    write_certificate,
    write_private_key,
)

__all__ = [
    "Kit",
    "KitSpec",
    "ProvisionResult",
    "client_ssl_context",
    "provision",
    "server_ssl_context",
]

KIT_FILE = "kit.toml"
CA_FILE = "ca.crt"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
SIGNING_KEY_FILE = "signing.key"
_KIT_FILES = frozenset({KIT_FILE, CA_FILE, CERT_FILE, KEY_FILE, SIGNING_KEY_FILE})
COORDINATOR = "coordinator"
ADMIN = "admin"
_RESERVED_NAMES = frozenset({COORDINATOR, ADMIN})
_CA_MIN_DAYS = 3650
_DEFAULT_DNS = ("localhost",)
_DEFAULT_IPS = ("127.0.0.1", "::1")
_PROVISION_HINT = "Run `fedshield provision CONFIG --out DIR` and use the kit it writes."
_REPROVISION_HINT = (
    "The kit's signing key must be the one its certificate binds; kits provisioned "
    "before signing keys existed lack one. Re-provision with `fedshield provision CONFIG "
    "--out DIR --force` and hand out the new kits."
)


@dataclass(frozen=True)
class KitSpec:
    """What to provision for one participant: its name, organization and role.

    Parameters
    ----------
    name : str
        Entity name, 1 to 64 characters of ``A-Z a-z 0-9 . _ -`` starting with a letter
        or digit; it becomes the certificate CN and the kit's directory name.
    organization : str
        The organization (certificate ``O``), 1 to 64 printable characters.
    role : Role
        The role (certificate ``OU``); ``"coordinator"`` is refused by
        :func:`provision`, which makes the one coordinator kit itself.

    Raises
    ------
    IdentityError
        If a field is invalid.
    """

    name: str
    organization: str
    role: Role

    def __post_init__(self) -> None:
        """Check the fields; see the class docstring for the constraints."""
        _check_name(self.name)
        _check_organization(self.organization)
        _check_role(self.role, None)


@dataclass(frozen=True)
class ProvisionResult:
    """Where :func:`provision` wrote a federation.

    Parameters
    ----------
    out_dir : Path
        The federation directory.
    ca_cert_path : Path
        The CA certificate (``out_dir/ca/ca.crt``); its key lies next to it.
    coordinator_dir : Path
        The coordinator's kit directory.
    admin_dir : Path
        The administrator's kit directory.
    participant_dirs : Mapping[str, Path]
        Each participant's kit directory, by name, in the order given.
    """

    out_dir: Path
    ca_cert_path: Path
    coordinator_dir: Path
    admin_dir: Path
    participant_dirs: Mapping[str, Path]


@dataclass(frozen=True)
class _Planned:
    dir: Path
    spec: KitSpec
    key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    extras: Mapping[str, str]


def _toml_string(value: str) -> str:
    """Quote ``value`` as a TOML basic string."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _kit_toml(federation: str, spec: KitSpec) -> str:
    lines = [
        "# fedshield provisioning kit, written by `fedshield provision`.",
        f"federation = {_toml_string(federation)}",
        f"name = {_toml_string(spec.name)}",
        f"organization = {_toml_string(spec.organization)}",
        f"role = {_toml_string(spec.role)}",
        "",
        "[files]",
        f"cert = {_toml_string(CERT_FILE)}",
        f"key = {_toml_string(KEY_FILE)}",
        f"signing = {_toml_string(SIGNING_KEY_FILE)}",
        f"ca = {_toml_string(CA_FILE)}",
        "",
    ]
    return "\n".join(lines)


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns_names = list(_DEFAULT_DNS)
    ips = list(_DEFAULT_IPS)
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns_names.append(host)
        else:
            ips.append(host)
    return dns_names, ips


def _check_participants(participants: Sequence[KitSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in participants:
        folded = spec.name.casefold()
        if folded in _RESERVED_NAMES:
            raise IdentityError(
                f"participant name {spec.name!r} is reserved for the {folded} kit",
                hint="Choose another participant name.",
            )
        if spec.role == "coordinator":
            raise IdentityError(
                f"participant {spec.name!r} has role 'coordinator'; a federation has one "
                "coordinator and provision makes its kit",
                hint="Give participants the role 'participant', 'observer' or 'admin'.",
            )
        if folded in seen:
            # Compared without case: kit directories must not collide on case-insensitive
            # file systems.
            raise IdentityError(
                f"participant name {spec.name!r} is given twice (also as {seen[folded]!r})"
            )
        seen[folded] = spec.name


def _check_extra_files(
    extra_files: Mapping[str, Mapping[str, str]], kit_names: Sequence[str]
) -> None:
    for kit_name, files in extra_files.items():
        if kit_name not in kit_names:
            raise IdentityError(
                f"extra_files names kit {kit_name!r}, which is not being provisioned "
                f"(kits: {', '.join(kit_names)})"
            )
        for filename in files:
            pure = PurePosixPath(filename)
            if (
                len(pure.parts) != 1
                or filename in (".", "..")
                or "\\" in filename
                or filename != pure.name
            ):
                raise IdentityError(
                    f"extra file name must be a plain file name, got {filename!r} "
                    f"for kit {kit_name!r}"
                )
            if filename in _KIT_FILES:
                raise IdentityError(
                    f"extra file {filename!r} for kit {kit_name!r} would replace a file "
                    "provision writes itself"
                )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is narrowed by the umask, and kept if it existed
    except OSError as exc:
        raise IdentityError(f"cannot create directory {path}: {exc.strerror}") from exc


def _write_text(path: Path, text: str, *, overwrite: bool) -> None:
    _write_file(path, text.encode("utf-8"), mode=0o644, overwrite=overwrite)


def provision(
    out_dir: Path,
    *,
    federation: str,
    participants: Sequence[KitSpec],
    coordinator_hosts: Sequence[str] = (),
    now: datetime,
    valid_days: int = 825,
    extra_files: Mapping[str, Mapping[str, str]] | None = None,
    overwrite: bool = False,
    roles: Collection[str] = ROLES,
) -> ProvisionResult:
    """Create a federation CA and a kit for every entity under ``out_dir``.

    Each kit gets a TLS key and certificate, and a fresh Ed25519 signing key
    (``signing.key``) that the certificate binds. Every key and certificate is made and
    every argument checked before anything is written, so a refused call leaves the disk
    untouched.

    Parameters
    ----------
    out_dir : Path
        The federation directory; created (mode 0700) if missing.
    federation : str
        Federation id, 1 to 50 characters of ``A-Z a-z 0-9 . _ -``.
    participants : Sequence[KitSpec]
        One spec per participant kit; names unique (ignoring case) and neither
        ``coordinator`` nor ``admin``; role not ``coordinator``.
    coordinator_hosts : Sequence[str]
        Host names and IP addresses participants use to reach the coordinator, added to
        its certificate next to ``localhost``, ``127.0.0.1`` and ``::1``.
    now : datetime
        Current time, timezone-aware.
    valid_days : int
        Lifetime of every kit certificate in days, >= 1. The CA lives
        ``max(3650, valid_days)`` days.
    extra_files : Mapping[str, Mapping[str, str]] | None
        Extra text files per kit: kit name (a participant name, ``coordinator`` or
        ``admin``) to ``{file name: text}``, e.g. a ``participant.toml``.
    overwrite : bool
        Re-key an existing federation in ``out_dir`` instead of refusing.
    roles : Collection[str]
        The roles a kit may carry: the built-in :data:`~fedshield.identity.pki.ROLES`
        plus the custom roles of the federation's access policy, if any.

    Returns
    -------
    ProvisionResult
        The paths written.

    Raises
    ------
    IdentityError
        If an argument is invalid, ``out_dir`` already holds a federation (or any file
        provision would write) and ``overwrite`` is false, or a file cannot be written.
    ValueError
        If ``now`` is naive.
    """
    _check_federation(federation)
    _check_valid_days(valid_days)
    _utc(now)
    _check_participants(participants)
    for spec in participants:
        try:
            _check_role(spec.role, roles)
        except IdentityError as exc:
            raise IdentityError(
                f"kit {spec.name!r}: {exc.message}",
                hint="A custom role must be defined in the federation's access policy "
                "(access.policy) before kits are provisioned for it.",
            ) from exc
    extras = extra_files or {}
    kit_names = [COORDINATOR, ADMIN, *(spec.name for spec in participants)]
    _check_extra_files(extras, kit_names)

    ca_dir = out_dir / "ca"
    ca_key_path = ca_dir / "ca.key"
    ca_cert_path = ca_dir / "ca.crt"
    if out_dir.exists() and not out_dir.is_dir():
        raise IdentityError(f"{out_dir} exists and is not a directory")
    if ca_key_path.exists() and not overwrite:
        raise IdentityError(
            f"{out_dir} already holds a federation ({ca_key_path} exists)",
            hint="Choose another directory, or pass --overwrite to re-key the federation "
            "(every existing kit stops working).",
        )

    ca_key, ca_cert = create_ca(federation, now=now, valid_days=max(_CA_MIN_DAYS, valid_days))
    dns_names, ips = _split_hosts(coordinator_hosts)
    specs = [
        (out_dir / COORDINATOR, KitSpec(COORDINATOR, federation, "coordinator")),
        (out_dir / ADMIN, KitSpec(ADMIN, federation, "admin")),
        *((out_dir / "participants" / spec.name, spec) for spec in participants),
    ]
    planned: list[_Planned] = []
    for kit_dir, spec in specs:
        is_coordinator = spec.role == "coordinator"
        signing_key = ed25519.Ed25519PrivateKey.generate()
        key, cert = issue_certificate(
            ca_key,
            ca_cert,
            name=spec.name,
            organization=spec.organization,
            role=spec.role,
            now=now,
            valid_days=valid_days,
            roles=roles,
            dns_names=dns_names if is_coordinator else (),
            ip_addresses=ips if is_coordinator else (),
            signing_key=signing_key.public_key(),
        )
        planned.append(_Planned(kit_dir, spec, key, signing_key, cert, extras.get(spec.name, {})))

    if not overwrite:
        targets = [ca_key_path, ca_cert_path]
        for kit in planned:
            targets += [kit.dir / name for name in (*_KIT_FILES, *kit.extras)]
        for target in targets:
            if target.exists() or target.is_symlink():
                raise IdentityError(
                    f"{target} already exists",
                    hint="Choose an empty directory, or pass --overwrite to replace it.",
                )

    if not out_dir.exists():
        _make_dir(out_dir)
    _make_dir(ca_dir)
    _make_dir(out_dir / "participants")
    write_certificate(ca_cert_path, ca_cert, overwrite=overwrite)
    write_private_key(ca_key_path, ca_key, overwrite=overwrite)
    for kit in planned:
        _make_dir(kit.dir)
        write_certificate(kit.dir / CA_FILE, ca_cert, overwrite=overwrite)
        write_certificate(kit.dir / CERT_FILE, kit.cert, overwrite=overwrite)
        write_private_key(kit.dir / KEY_FILE, kit.key, overwrite=overwrite)
        write_private_key(kit.dir / SIGNING_KEY_FILE, kit.signing_key, overwrite=overwrite)
        _write_text(kit.dir / KIT_FILE, _kit_toml(federation, kit.spec), overwrite=overwrite)
        for filename, text in kit.extras.items():
            _write_text(kit.dir / filename, text, overwrite=overwrite)

    return ProvisionResult(
        out_dir=out_dir,
        ca_cert_path=ca_cert_path,
        coordinator_dir=planned[0].dir,
        admin_dir=planned[1].dir,
        participant_dirs=MappingProxyType({kit.spec.name: kit.dir for kit in planned[2:]}),
    )


def _string_field(table: Mapping[str, Any], key: str, where: Path) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise IdentityError(
            f"{where} must set {key} to a string, got {value!r}", hint=_PROVISION_HINT
        )
    return value


def _kit_path(kit_dir: Path, files: Mapping[str, Any], key: str, default: str) -> Path:
    relative = files.get(key, default)
    if not isinstance(relative, str) or not relative:
        raise IdentityError(
            f"{kit_dir / KIT_FILE} must set files.{key} to a file name, got {relative!r}"
        )
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise IdentityError(
            f"{kit_dir / KIT_FILE} files.{key} must be a path inside the kit, got {relative!r}"
        )
    path = kit_dir / pure
    if not path.is_file():
        raise IdentityError(
            f"kit {kit_dir} is missing {relative} (files.{key} in {KIT_FILE})",
            hint="The kit is incomplete: run `fedshield provision` again and copy the "
            "whole kit directory.",
        )
    return path


def _same_public_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _raw_ed25519(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Kit:
    """A provisioning kit on disk, checked to be whole and consistent.

    Build one with :meth:`Kit.load`.

    Parameters
    ----------
    dir : Path
        The kit directory.
    federation : str
        The federation id.
    name : str
        The entity name, as in the certificate.
    organization : str
        The organization, as in the certificate.
    role : Role
        The role, as in the certificate.
    ca_path : Path
        The federation CA certificate (PEM).
    cert_path : Path
        The entity's certificate (PEM).
    key_path : Path
        The entity's TLS private key (PEM, mode 0600).
    signing_key_path : Path
        The entity's Ed25519 signing key (PEM, mode 0600), the one its certificate binds.
    """

    dir: Path
    federation: str
    name: str
    organization: str
    role: Role
    ca_path: Path
    cert_path: Path
    key_path: Path
    signing_key_path: Path

    @classmethod
    def load(cls, dir: Path, *, now: datetime | None = None) -> Kit:
        """Read a kit directory and check it.

        Checks that ``kit.toml`` and the files it names exist, that the certificate was
        issued by the kit's CA (of the named federation) and is valid at ``now``, that it
        carries the name, organization and role of ``kit.toml``, that the private key
        belongs to it, and that the signing key is the one it binds.

        Parameters
        ----------
        dir : Path
            The kit directory, as written by :func:`provision`.
        now : datetime | None
            Time to check validity at, timezone-aware; ``None`` reads the system clock
            (this is an I/O edge).

        Returns
        -------
        Kit
            The checked kit.

        Raises
        ------
        IdentityError
            If a file is missing, unreadable or invalid, a key file is readable by
            others, or the files do not agree with each other (the hint says to
            re-provision when the signing key is missing or not the certificate's).
        """
        at = datetime.now(UTC) if now is None else _utc(now)
        kit_file = dir / KIT_FILE
        try:
            data = tomllib.loads(kit_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise IdentityError(
                f"{dir} is not a kit: {KIT_FILE} is missing",
                hint="Run `fedshield provision CONFIG --out DIR` and point to one of the "
                "kit directories it writes.",
            ) from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise IdentityError(f"cannot read {kit_file}: {exc}", hint=_PROVISION_HINT) from exc

        federation = _string_field(data, "federation", kit_file)
        name = _string_field(data, "name", kit_file)
        organization = _string_field(data, "organization", kit_file)
        role = _check_role(_string_field(data, "role", kit_file), None)
        files = data.get("files", {})
        if not isinstance(files, dict):
            raise IdentityError(f"{kit_file}: [files] must be a table", hint=_PROVISION_HINT)
        ca_path = _kit_path(dir, files, "ca", CA_FILE)
        cert_path = _kit_path(dir, files, "cert", CERT_FILE)
        key_path = _kit_path(dir, files, "key", KEY_FILE)
        try:
            signing_key_path = _kit_path(dir, files, "signing", SIGNING_KEY_FILE)
        except IdentityError as exc:
            raise IdentityError(exc.message, hint=_REPROVISION_HINT) from exc

        ca_cert = load_certificate(ca_path)
        cert = load_certificate(cert_path)
        key = load_private_key(key_path)
        ca_names = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [attr.value for attr in ca_names] != [f"{federation} federation CA"]:
            raise IdentityError(
                f"{ca_path} is not the CA of federation {federation!r} "
                f"(subject {ca_cert.subject.rfc4514_string()!r})",
                hint=_PROVISION_HINT,
            )
        verify_issued_by(cert, ca_cert, now=at)
        identity = identity_of(cert, roles=None)
        expected = (name, organization, role)
        found = (identity.name, identity.organization, identity.role)
        if found != expected:
            raise IdentityError(
                f"{cert_path} is for {found!r} (name, organization, role) but {kit_file} "
                f"says {expected!r}",
                hint=_PROVISION_HINT,
            )
        if not _same_public_key(key, cert):
            raise IdentityError(
                f"{key_path} is not the private key of {cert_path}", hint=_PROVISION_HINT
            )
        bound = signing_key_of(cert)
        signing_key = load_signing_key(signing_key_path)
        if _raw_ed25519(signing_key.public_key()) != _raw_ed25519(bound):
            raise IdentityError(
                f"{signing_key_path} is not the signing key that {cert_path} binds",
                hint=_REPROVISION_HINT,
            )
        return cls(
            dir=dir,
            federation=federation,
            name=name,
            organization=organization,
            role=role,
            ca_path=ca_path,
            cert_path=cert_path,
            key_path=key_path,
            signing_key_path=signing_key_path,
        )

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """Load the entity's Ed25519 signing key from :attr:`signing_key_path`.

        :meth:`Kit.load` checked that the certificate binds this key; peers check
        signatures made with it against :func:`~fedshield.identity.pki.signing_key_of`
        of the certificate.

        Returns
        -------
        ed25519.Ed25519PrivateKey
            The signing key.

        Raises
        ------
        IdentityError
            If the file has gone missing, become readable by others or no longer holds
            an Ed25519 key since the kit was loaded.
        """
        return load_signing_key(self.signing_key_path)


def _load_into(context: ssl.SSLContext, kit: Kit) -> ssl.SSLContext:
    try:
        context.load_verify_locations(cafile=str(kit.ca_path))
        context.load_cert_chain(certfile=str(kit.cert_path), keyfile=str(kit.key_path))
    except (ssl.SSLError, OSError) as exc:
        raise IdentityError(
            f"cannot load kit {kit.dir} into TLS: {exc}", hint=_PROVISION_HINT
        ) from exc
    return context


def server_ssl_context(kit: Kit) -> ssl.SSLContext:
    """Make a TLS 1.3 server context that requires a client certificate from the kit's CA.

    Parameters
    ----------
    kit : Kit
        The coordinator's kit (its certificate is the server certificate).

    Returns
    -------
    ssl.SSLContext
        A server context: TLS 1.3 only, ``CERT_REQUIRED``, trusting the kit's CA only.

    Raises
    ------
    IdentityError
        If the kit's files cannot be loaded by :mod:`ssl`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    return _load_into(context, kit)


def client_ssl_context(kit: Kit) -> ssl.SSLContext:
    """Make a TLS 1.3 client context that presents the kit and trusts only its CA.

    Parameters
    ----------
    kit : Kit
        The participant's (or admin's, observer's) kit.

    Returns
    -------
    ssl.SSLContext
        A client context: TLS 1.3 only, host name checked, the kit's CA the only trust
        anchor (system CAs are not loaded), the kit's certificate as client certificate.

    Raises
    ------
    IdentityError
        If the kit's files cannot be loaded by :mod:`ssl`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return _load_into(context, kit)
