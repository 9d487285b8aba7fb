"""Participant administration: list, enroll, revoke, quarantine, release, roll back.

One implementation behind both the local CLI (``fedshield participants ... --workdir``
on the coordinator host, a separate process) and the admin API of a running coordinator
(``/v1/participants``, ``/v1/models/rollback``). Every change is durable and an audit
entry before the call returns:

* **enroll** admits a participant the federation config does not list, by the
  certificate the federation CA issued from the site's CSR (:func:`sign_enrollment`,
  run where the CA key is: the admin's machine; the site's keys never leave the site,
  the coordinator never holds the CA key). :meth:`Administration.enroll` checks the
  certificate (issued by this federation's CA, valid now, a ``participant`` with a
  bound signing key, its ``CN`` the name enrolled), that the name is new (not listed,
  not enrolled, never revoked, also up to case) and that the config still holds with
  one more participant (:func:`check_roster`: the participant cap, the secure
  aggregation ring, the participant-DP sampling rate). Then a ``participant.enroll``
  event (actor, name, certificate fingerprint and serial), then the ``enrollments``
  row. A running coordinator accepts the name at once when its admin API enrolled it,
  within ``access.revocation_refresh_s`` when another process did (see
  :mod:`fedshield.storage.enrollment`). A refused enrollment of a well-formed
  certificate is a ``participant.enroll`` event with outcome ``refused``.
* **revoke** writes the revocation list (``revocations`` table), then a
  ``participant.revoke`` event. A running coordinator refuses the name's next request:
  at once when the admin API revoked it, within ``access.revocation_refresh_s``
  (default 1 s) when another process did (see :mod:`fedshield.storage.identity`).
  Revocation is permanent for the name; there is no un-revoke.
* **quarantine** / **release** are ``participant.quarantine`` / ``participant.release``
  events; the coordinator follows them between rounds (a quarantined site is not
  selected; the round it is in finishes normally).
* **rollback** moves the registry head (the registry records the event); the next round
  starts from it.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedshield.config import (
    FederationConfig,
    ParticipantsConfig,
    parse_config,
    participant_sampling_rate,
)
from fedshield.errors import ConfigError, IdentityError
from fedshield.identity.csr import sign_request
from fedshield.identity.pki import (
    _check_name,
    identity_of,
    load_certificate,
    load_private_key,
    signing_key_of,
    verify_issued_by,
)
from fedshield.storage import BlobStore, Database, EventLog, ModelRegistry, ModelVersion, RoundLog
from fedshield.storage import Participants as SeenParticipants
from fedshield.storage.enrollment import EnrollmentRecord, Enrollments
from fedshield.storage.identity import RevocationRecord, Revocations

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_PARTICIPANTS",
    "QUARANTINE_ACTIONS",
    "Administration",
    "ParticipantStatus",
    "StateConflict",
    "check_roster",
    "sign_enrollment",
]

QUARANTINE_ACTIONS = ("participant.quarantine", "participant.release")
_REASON_MAX_CHARS = 1000
MAX_CERTIFICATE_BYTES = 16 * 1024
"""The largest certificate PEM an enrollment takes (fedshield's are about 1 KiB)."""
MAX_PARTICIPANTS: int = next(
    m.le for m in ParticipantsConfig.model_fields["count"].metadata if hasattr(m, "le")
)
"""The most participants a federation may have: the cap ``participants.count`` has."""
_NEW_NAME_HINT = (
    "Have the site make a new key and CSR under another name (`fedshield identity csr "
    "--name NEW-NAME ...`) and enroll that name."
)


class StateConflict(ConfigError):
    """The participant is not in the state the operation needs (HTTP 409 over the API)."""


@dataclass(frozen=True)
class ParticipantStatus:
    """What the admin sees of one participant."""

    name: str
    enrolled: bool
    revoked: bool
    quarantined: bool
    organization: str | None
    trust: float | None
    last_seen: str | None
    revoked_reason: str | None

    @property
    def status(self) -> str:
        """One word: ``revoked``, ``quarantined`` or ``enrolled`` (or ``unknown``)."""
        if self.revoked:
            return "revoked"
        if self.quarantined:
            return "quarantined"
        return "enrolled" if self.enrolled else "unknown"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON the API and ``--json`` print."""
        return {
            "name": self.name,
            "status": self.status,
            "enrolled": self.enrolled,
            "revoked": self.revoked,
            "quarantined": self.quarantined,
            "organization": self.organization,
            "trust": self.trust,
            "last_seen": self.last_seen,
            "revoked_reason": self.revoked_reason,
        }


def _reason(reason: str) -> str:
    text = reason.strip()
    if not 1 <= len(text) <= _REASON_MAX_CHARS or any(ord(c) < 32 for c in text):
        raise ConfigError(
            f"the reason must be 1 to {_REASON_MAX_CHARS} printable characters, got {reason!r}",
            hint='Say why, e.g. --reason "key leaked".',
        )
    return text


def _participant_name(name: str) -> str:
    try:
        _check_name(name, what="participant name")
    except IdentityError as exc:  # a malformed argument: the config exit code
        raise ConfigError(exc.message, hint=exc.hint) from exc
    if name.casefold() in ("coordinator", "admin"):
        raise ConfigError(f"{name!r} is not a participant name")
    return name


def check_roster(config: FederationConfig, names: Sequence[str]) -> None:
    """Check that ``config`` still holds with ``names`` as its participants.

    Everything the config checks that depends on the number of participants is checked
    again with ``len(names)`` of them: the cap (:data:`MAX_PARTICIPANTS`), the secure
    aggregation ring (the sum of every participant's update must not wrap), the
    participant-DP rules; and the names themselves (unique, not an ``[access]`` kit's).
    With participant-level DP accounted by sampling rate, the rate a round would then
    select at must not exceed the rate the noise was calibrated for (the ledger would
    under-count what each round spends).

    Raises
    ------
    StateConflict
        If the config would not hold; the message says which limit.
    """
    if len(names) > MAX_PARTICIPANTS:
        raise StateConflict(
            f"the federation has {len(names) - 1} participants, the most it may have is "
            f"{MAX_PARTICIPANTS}",
            hint="Revoked names count too: a cap is never exceeded by revoking and enrolling.",
        )
    document = config.model_dump()
    document["participants"]["names"] = tuple(names)
    try:
        grown = parse_config(document, source=f"with {len(names)} participants")
    except ConfigError as exc:
        raise StateConflict(
            f"the federation config does not allow one more participant: {exc.message}",
            hint="Change the config (and restart the coordinator) before enrolling more.",
        ) from exc
    dp = config.participant_dp
    if dp.enabled and dp.noise != "local":
        planned, would_be = participant_sampling_rate(config), participant_sampling_rate(grown)
        if would_be > planned * (1 + 1e-12):
            raise StateConflict(
                f"with {len(names)} participants a round would sample each at rate "
                f"{would_be:.4g}, above the {planned:.4g} the participant-DP noise was "
                "calibrated for",
                hint="Set rounds.per_round (or rounds.fraction) so the rate does not grow, "
                "and restart the coordinator before enrolling.",
            )


def _load_enrolled_certificate(pem: bytes) -> x509.Certificate:
    hint = "Send the certificate `fedshield participants enroll` signed."
    if len(pem) > MAX_CERTIFICATE_BYTES:
        raise IdentityError(
            f"the certificate is {len(pem)} bytes, over the limit of {MAX_CERTIFICATE_BYTES}",
            hint=hint,
        )
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise IdentityError("the certificate is not a PEM X.509 certificate", hint=hint) from exc
    if len(found) != 1:
        raise IdentityError(f"expected exactly one certificate, got {len(found)}", hint=hint)
    return found[0]


def _check_federation_ca(ca_cert: x509.Certificate, federation: str) -> None:
    names = [a.value for a in ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [f"{federation} federation CA"]:
        raise IdentityError(
            f"the CA {ca_cert.subject.rfc4514_string()!r} is not the CA of federation "
            f"{federation!r}",
            hint="Use the ca directory `fedshield provision` wrote for this federation.",
        )


def sign_enrollment(
    request_pem: bytes,
    *,
    name: str,
    organization: str | None,
    ca_dir: Path,
    now: datetime,
    valid_days: int = 825,
) -> x509.Certificate:
    """Sign a site's CSR for enrollment under ``name``, where the CA key is (the admin).

    The CSR's checks are :func:`fedshield.identity.csr.sign_request`'s (PEM, size,
    P-256 key, both proofs of possession); on top, its ``CN`` must be ``name``, its
    ``O`` ``organization`` when given, and its role ``participant``. Nothing is written:
    the caller records the enrollment first and writes the certificate after.

    Raises
    ------
    ConfigError
        If ``name`` is malformed or reserved.
    IdentityError
        If the CA cannot be read, the request is malformed, its keys are of the wrong
        type or unproven, or its identity is not the one enrolled.
    """
    _participant_name(name)
    ca_key = load_private_key(ca_dir / "ca.key")
    ca_cert = load_certificate(ca_dir / "ca.crt")
    cert, identity = sign_request(request_pem, ca_key, ca_cert, now=now, valid_days=valid_days)
    if identity.name != name:
        raise IdentityError(
            f"the request is for {identity.name!r}, not {name!r}",
            hint="Enroll the name the site put in its CSR, or ask it for a new CSR.",
        )
    if identity.role != "participant":
        raise IdentityError(
            f"the request asks for role {identity.role!r}; only participants are enrolled",
            hint="An auditor or observer needs no enrollment: sign its CSR with "
            "`fedshield identity sign`; its role is in its certificate.",
        )
    if organization is not None and identity.organization != organization:
        raise IdentityError(
            f"the request names organization {identity.organization!r}, not {organization!r}",
            hint="Check with the site who it is, then pass its organization.",
        )
    return cert


class Administration:
    """Admin operations on one coordinator database.

    Parameters
    ----------
    db
        The coordinator's database.
    config
        The federation config the coordinator runs with, when known: it names the
        participants provisioned with it and the limits an enrollment must respect.
        The local CLI without ``--config`` passes ``None`` (it cannot enroll then).
    models_dir
        The model blob directory (``<workdir>/models``), for rollback.
    """

    def __init__(self, db: Database, *, config: FederationConfig | None, models_dir: Path) -> None:
        self.db = db
        self.config = config
        #: The participants the config lists (``None``: not known here).
        self.configured = (
            tuple(config.participants.resolved_names()) if config is not None else None
        )
        self.events = EventLog(db)
        self.revocations = Revocations(db)
        self.enrollments = Enrollments(db)
        self._models_dir = models_dir

    # -- reads ---------------------------------------------------------------------

    def quarantined(self) -> set[str]:
        """Names whose last quarantine event is a quarantine (not a release)."""
        jailed: set[str] = set()
        for event in self.events.since(0, QUARANTINE_ACTIONS):
            name = event.resource.removeprefix("participant/")
            if event.action == "participant.quarantine":
                jailed.add(name)
            else:
                jailed.discard(name)
        return jailed

    def _trust(self) -> dict[str, float]:
        trust: dict[str, float] = {}
        for record in RoundLog(self.db).list():
            if record.kind != "fit" or record.status != "committed":
                continue
            for key, value in record.metrics.items():
                name, _, metric = key.rpartition(".")
                if metric == "trust" and name:
                    trust[name] = float(value)
        return trust

    def participants(self) -> list[ParticipantStatus]:
        """Every participant the federation knows: enrolled, seen, revoked or jailed."""
        seen = {p.name: p for p in SeenParticipants(self.db).list() if p.role == "participant"}
        revoked: dict[str, RevocationRecord] = {}
        for record in self.revocations.list():
            if record.fingerprint_sha256 is None:
                revoked.setdefault(record.name, record)
        jailed = self.quarantined()
        trust = self._trust()
        added = {e.name: e for e in self.enrollments.list()}
        listed = set(self.configured or ())
        names = set(seen) | set(revoked) | jailed | set(trust) | listed | set(added)
        rows = []
        for name in sorted(names):
            contact = seen.get(name)
            revocation = revoked.get(name)
            enrollment = added.get(name)
            organization = contact.organization if contact else None
            if organization is None and enrollment is not None:
                organization = enrollment.organization
            known = name in listed or enrollment is not None
            rows.append(
                ParticipantStatus(
                    name=name,
                    enrolled=known if self.configured is not None else True,
                    revoked=revocation is not None,
                    quarantined=name in jailed,
                    organization=organization,
                    trust=trust.get(name),
                    last_seen=contact.last_seen.isoformat() if contact else None,
                    revoked_reason=revocation.reason if revocation else None,
                )
            )
        return rows

    # -- writes ----------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        certificate_pem: bytes,
        *,
        ca_cert: x509.Certificate,
        actor: str,
        now: datetime,
        organization: str | None = None,
    ) -> EnrollmentRecord:
        """Admit ``name`` by the certificate the federation CA issued it; durable and audited.

        Parameters
        ----------
        name
            The participant to enroll; the certificate's ``CN``.
        certificate_pem
            Its certificate (PEM, at most :data:`MAX_CERTIFICATE_BYTES`), as
            :func:`sign_enrollment` made it.
        ca_cert
            The federation CA the coordinator trusts (its TLS trust anchor).
        actor, now
            Who enrolls, and when (aware UTC).
        organization
            If given, the certificate's ``O`` must be it.

        Raises
        ------
        ConfigError
            If the name is malformed, or no config is known here.
        IdentityError
            If the certificate is malformed, not issued by ``ca_cert`` or not this
            federation's CA, not valid at ``now``, not a participant's, binds no
            signing key, or names another participant or organization.
        StateConflict
            If the name is listed, enrolled or was revoked (also in another case), or
            the config would not hold with one more participant (audited as refused).
        """
        _participant_name(name)
        if self.config is None:
            raise ConfigError(
                "enrolling needs the federation config (its participants and limits)",
                hint="Pass --config with the federation file the coordinator runs with.",
            )
        config = self.config
        cert = _load_enrolled_certificate(certificate_pem)
        _check_federation_ca(ca_cert, config.federation.name)
        verify_issued_by(cert, ca_cert, now=now)
        identity = identity_of(cert, roles=None)
        if identity.name != name:
            raise IdentityError(f"the certificate is for {identity.name!r}, not {name!r}")
        if identity.role != "participant":
            raise IdentityError(
                f"the certificate is for role {identity.role!r}; only participants are enrolled"
            )
        if organization is not None and identity.organization != organization:
            raise IdentityError(
                f"the certificate names organization {identity.organization!r}, "
                f"not {organization!r}"
            )
        signing_key_of(cert)  # signed envelopes need it: refuse a certificate without one
        configured = self.configured or ()

        def admit(
            enrolled: builtins.list[EnrollmentRecord], revoked: builtins.list[RevocationRecord]
        ) -> None:
            folded = name.casefold()
            for record in revoked:
                if record.fingerprint_sha256 is None and record.name.casefold() == folded:
                    raise StateConflict(
                        f"participant {record.name!r} was revoked at "
                        f"{record.revoked_at.isoformat()} ({record.reason}); a revoked name "
                        "is never enrolled again",
                        hint=_NEW_NAME_HINT,
                    )
            clash = next((n for n in configured if n.casefold() == folded), None)
            if clash is not None:
                raise StateConflict(
                    f"participant {clash!r} is already enrolled: the federation config lists it",
                    hint="It needs no enrollment; to issue it a certificate from its own CSR "
                    "use `fedshield identity sign`.",
                )
            for entry in enrolled:
                if entry.name.casefold() == folded:
                    raise StateConflict(
                        f"participant {entry.name!r} is already enrolled (at "
                        f"{entry.enrolled_at.isoformat()}, certificate "
                        f"{entry.cert_sha256[:16]}...)",
                        hint="It needs no new enrollment; a new certificate for it comes "
                        "from `fedshield identity rotate` or `fedshield identity sign`.",
                    )
            check_roster(config, [*configured, *(r.name for r in enrolled), name])

        details: dict[str, Any] = {
            "organization": identity.organization,
            "role": identity.role,
            "cert_sha256": identity.fingerprint_sha256,
            "serial": identity.serial,
            "not_after": identity.not_after.isoformat(),
        }
        try:
            # Read-only first: a refusal is audited and nothing else happens.
            admit(self.enrollments.list(), self.revocations.list())
        except StateConflict as exc:
            self._record_enroll(name, "refused", {**details, "reason": exc.message}, actor, now)
            raise
        # The audit entry before the row: an admission never lacks its trace. (A crash in
        # between leaves an entry for an enrollment that did not happen; the roster, not
        # the log, decides who is in.)
        self._record_enroll(name, "ok", details, actor, now)
        try:
            return self.enrollments.enroll(
                name=name,
                organization=identity.organization,
                cert_sha256=identity.fingerprint_sha256,
                serial=identity.serial,
                not_after=identity.not_after,
                certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                actor=actor,
                now=now,
                admit=admit,  # again, in the write transaction: another process may race
            )
        except StateConflict as exc:
            self._record_enroll(name, "refused", {**details, "reason": exc.message}, actor, now)
            raise

    def _record_enroll(
        self, name: str, outcome: str, details: dict[str, Any], actor: str, now: datetime
    ) -> None:
        self.events.record(
            actor=actor,
            action="participant.enroll",
            resource=f"participant/{name}",
            outcome=outcome,
            details=details,
            now=now,
        )

    def revoke(self, name: str, *, reason: str, actor: str, now: datetime) -> RevocationRecord:
        """Revoke every certificate of ``name``; durable and audited on return.

        Raises
        ------
        ConfigError
            If the name or reason is malformed.
        StateConflict
            If ``name`` is already revoked.
        """
        _participant_name(name)
        why = _reason(reason)
        for record in self.revocations.list():
            if record.name == name and record.fingerprint_sha256 is None:
                raise StateConflict(
                    f"participant {name!r} is already revoked "
                    f"(at {record.revoked_at.isoformat()}: {record.reason})",
                    hint="Revocation is permanent; issue a kit under a new name to re-admit it.",
                )
        contact = next((p for p in SeenParticipants(self.db).list() if p.name == name), None)
        # The revocation first: if the process dies before the audit entry, the
        # certificate is refused anyway (the safe side), and the next start shows it.
        record = self.revocations.revoke(name, reason=why, actor=actor, now=now)
        self.events.record(
            actor=actor,
            action="participant.revoke",
            resource=f"participant/{name}",
            outcome="ok",
            details={
                "reason": why,
                "revocation": record.id,
                "last_cert_sha256": contact.cert_sha256 if contact else None,
            },
            now=now,
        )
        return record

    def quarantine(self, name: str, *, reason: str, actor: str, now: datetime) -> None:
        """Quarantine ``name`` from the next round on; audited.

        Raises
        ------
        StateConflict
            If it is already quarantined.
        """
        _participant_name(name)
        why = _reason(reason)
        if name in self.quarantined():
            raise StateConflict(f"participant {name!r} is already quarantined")
        self.events.record(
            actor=actor,
            action="participant.quarantine",
            resource=f"participant/{name}",
            outcome="quarantined",
            details={"reason": why, "by": "admin"},
            now=now,
        )

    def release(self, name: str, *, actor: str, now: datetime) -> None:
        """Release a quarantined participant; it may be selected again next round.

        Raises
        ------
        StateConflict
            If it is not quarantined.
        """
        _participant_name(name)
        if name not in self.quarantined():
            raise StateConflict(
                f"participant {name!r} is not quarantined",
                hint="See `fedshield participants list`.",
            )
        self.events.record(
            actor=actor,
            action="participant.release",
            resource=f"participant/{name}",
            outcome="ok",
            details={},
            now=now,
        )

    def rollback(self, version: int, *, reason: str, actor: str, now: datetime) -> ModelVersion:
        """Make an earlier model version the head (recorded by the registry)."""
        why = _reason(reason)
        registry = ModelRegistry(self.db, BlobStore(self._models_dir))
        head = registry.head()
        if head is not None and head.version == version:
            raise StateConflict(f"model version {version} is already the head")
        return registry.rollback(version, actor=actor, reason=why, now=now)
