"""Read everything a compliance report is built from, once, into plain data.

This is the I/O edge of :mod:`fedshield.compliance`: it opens the coordinator's
database, verifies the audit log with the trusted public key, recomputes the privacy
report, re-hashes every stored model, reads the certificates of the provisioning kits
and the federation config. :mod:`fedshield.compliance.evidence` then decides, without
touching a file, what that shows.

It reads logs, ledgers, hashes and certificates, never model weights' values beyond
hashing them, and never updates (the coordinator does not keep any).

Where things are looked for, for ``--workdir DIR``:

* the database ``DIR/fedshield.db`` (required; the coordinator's workdir);
* the audit public key ``DIR/audit.pub`` unless one is given;
* the config: ``--config``, else ``DIR/../federation.toml`` (the demo's layout);
* the certificate store: ``--kits`` (the ``fedshield provision --out`` folder), else
  ``DIR/../kits``.

A demo folder (``fedshield-demo``) may be given instead of its ``coordinator``
subfolder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit.verify import VerifyReport
from fedshield.config import FederationConfig, load_config
from fedshield.errors import ConfigError, FedshieldError
from fedshield.federation.privacy_report import PrivacyReport, load_report
from fedshield.storage import BlobStore, Database, ModelRegistry
from fedshield.storage.audit import AUDIT_PUB_FILE, AuditLog, read_public_key
from fedshield.storage.records import (
    EventLog,
    EventRecord,
    ParticipantRecord,
    Participants,
    RoundLog,
    RoundRecord,
)
from fedshield.storage.registry import ModelVersion

__all__ = [
    "BlobCheck",
    "CertificateInfo",
    "Snapshot",
    "read_snapshot",
    "resolve_workdir",
]

DB_FILE = "fedshield.db"


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate of the federation's certificate store (a provisioning kit)."""

    kit: str
    name: str
    organization: str
    role: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    key_algorithm: str


@dataclass(frozen=True)
class BlobCheck:
    """Whether a model version's stored weights still hash to its recorded SHA3."""

    version: int
    sha3: str
    ok: bool
    problem: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Everything a report is built from (see the module docstring for the sources)."""

    workdir: str
    now: datetime
    federation: str | None
    events: tuple[EventRecord, ...]
    rounds: tuple[RoundRecord, ...]
    models: tuple[ModelVersion, ...]
    blobs: tuple[BlobCheck, ...]
    participants: tuple[ParticipantRecord, ...]
    privacy: PrivacyReport | None
    privacy_error: str | None
    audit: VerifyReport | None
    audit_error: str | None
    certificates: tuple[CertificateInfo, ...]
    certificates_source: str | None
    certificates_error: str | None
    config: FederationConfig | None
    config_source: str | None
    config_error: str | None
    rotation_days: int
    expiry_warning_days: int


def resolve_workdir(workdir: Path) -> Path:
    """Return the coordinator workdir: ``workdir`` itself, or its ``coordinator`` child.

    Raises
    ------
    ConfigError
        If neither holds a fedshield database.
    """
    for candidate in (workdir, workdir / "coordinator"):
        if (candidate / DB_FILE).is_file():
            return candidate
    raise ConfigError(
        f"{workdir} holds no fedshield database",
        hint="Pass the coordinator's --workdir (for the demo: fedshield-demo or "
        "fedshield-demo/coordinator).",
    )


def _certificates(kits: Path) -> tuple[list[CertificateInfo], str | None]:
    """Read every ``cert.pem`` (and the CA) under ``kits``; problems as a note."""
    found: list[CertificateInfo] = []
    problems: list[str] = []
    paths = sorted(kits.glob("ca/ca.crt")) + sorted(kits.glob("**/cert.pem"))
    for path in paths:
        kit = str(path.parent.relative_to(kits))
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: not a readable PEM certificate ({exc})")
            continue
        subject = cert.subject

        def first(oid: x509.ObjectIdentifier, subject: x509.Name = subject) -> str:
            values = subject.get_attributes_for_oid(oid)
            return str(values[0].value) if values else ""

        key = cert.public_key()
        found.append(
            CertificateInfo(
                kit=kit,
                name=first(x509.NameOID.COMMON_NAME),
                organization=first(x509.NameOID.ORGANIZATION_NAME),
                role="ca"
                if path.name == "ca.crt"
                else first(x509.NameOID.ORGANIZATIONAL_UNIT_NAME),
                fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                key_algorithm=type(key).__name__.lstrip("_"),
            )
        )
    if not paths:
        problems.append(f"no certificates under {kits}")
    return found, "; ".join(problems) or None


def read_snapshot(
    workdir: Path,
    *,
    now: datetime,
    config: Path | None = None,
    kits: Path | None = None,
    public_key: ed25519.Ed25519PublicKey | None = None,
    rotation_days: int = 365,
    expiry_warning_days: int = 30,
) -> Snapshot:
    """Read ``workdir`` (and the config and kits beside it) into a :class:`Snapshot`.

    Parameters
    ----------
    workdir
        The coordinator workdir, or a demo folder holding ``coordinator/``.
    now
        The report's time (timezone-aware): certificate ages and expiry are judged at it.
    config, kits
        The federation config and the ``fedshield provision`` output folder; looked for
        beside the workdir when not given (see the module docstring).
    public_key
        The audit public key to trust (an Ed25519 public key); default
        ``WORKDIR/audit.pub``.
    rotation_days, expiry_warning_days
        The key rotation policy: a certificate older than ``rotation_days`` or expiring
        within ``expiry_warning_days`` is a warning; an expired one a failure.

    Raises
    ------
    ConfigError
        If ``workdir`` holds no database, or an explicitly given config or kits folder
        cannot be read.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if rotation_days < 1 or expiry_warning_days < 0:
        raise ConfigError(
            f"rotation_days must be >= 1 and expiry_warning_days >= 0, got "
            f"{rotation_days} and {expiry_warning_days}",
            hint="Give the key rotation policy in whole days, e.g. --rotation-days 365.",
        )
    root = resolve_workdir(workdir)
    db = Database.for_workdir(root)
    try:
        events = tuple(EventLog(db).list())
        rounds = tuple(RoundLog(db).list())
        participants = tuple(Participants(db).list())
        registry = ModelRegistry(db, BlobStore(root / "models"))
        models = tuple(registry.list())
        blobs = []
        for model in models:
            try:
                registry.load(model.version)
            except FedshieldError as exc:
                blobs.append(BlobCheck(model.version, model.sha3, False, exc.message))
            else:
                blobs.append(BlobCheck(model.version, model.sha3, True))
        audit: VerifyReport | None = None
        audit_error: str | None = None
        log = AuditLog(db)
        header = log.header()
        try:
            key = public_key if public_key is not None else read_public_key(root / AUDIT_PUB_FILE)
            audit = log.verify(key)
        except FedshieldError as exc:
            audit_error = exc.message
    finally:
        db.close()
    privacy: PrivacyReport | None = None
    privacy_error: str | None = None
    try:
        privacy = load_report(root)
    except FedshieldError as exc:
        privacy_error = exc.message

    config_path = config if config is not None else root.parent / "federation.toml"
    loaded: FederationConfig | None = None
    config_error: str | None = None
    config_source: str | None = None
    if config is not None or config_path.is_file():
        config_source = str(config_path)
        try:
            loaded = load_config(config_path)
        except ConfigError as exc:
            if config is not None:
                raise
            config_error = exc.message
    else:
        config_error = "no config given (--config) and none beside the workdir"

    kits_path = kits if kits is not None else root.parent / "kits"
    certificates: list[CertificateInfo] = []
    certificates_error: str | None = None
    certificates_source: str | None = None
    if kits is not None and not kits.is_dir():
        raise ConfigError(
            f"--kits {kits} is not a folder",
            hint="Pass the folder `fedshield provision --out` wrote (it holds ca/).",
        )
    if kits_path.is_dir():
        certificates_source = str(kits_path)
        certificates, certificates_error = _certificates(kits_path)
    else:
        certificates_error = "no certificate store given (--kits) and none beside the workdir"
    return Snapshot(
        workdir=str(root),
        now=now,
        federation=None if header is None else header[0],
        events=events,
        rounds=rounds,
        models=models,
        blobs=tuple(blobs),
        participants=participants,
        privacy=privacy,
        privacy_error=privacy_error,
        audit=audit,
        audit_error=audit_error,
        certificates=tuple(certificates),
        certificates_source=certificates_source,
        certificates_error=certificates_error,
        config=loaded,
        config_source=config_source,
        config_error=config_error,
        rotation_days=rotation_days,
        expiry_warning_days=expiry_warning_days,
    )
