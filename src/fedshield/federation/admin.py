"""Participant administration: list, revoke, quarantine, release, roll back.

One implementation behind both the local CLI (``fedshield participants ... --workdir``
on the coordinator host, a separate process) and the admin API of a running coordinator
(``/v1/participants``, ``/v1/models/rollback``). Every change is durable and an audit
entry before the call returns:

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

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedshield.errors import ConfigError, IdentityError
from fedshield.identity.pki import _check_name
from fedshield.storage import BlobStore, Database, EventLog, ModelRegistry, ModelVersion, RoundLog
from fedshield.storage import Participants as SeenParticipants
from fedshield.storage.identity import RevocationRecord, Revocations

__all__ = ["QUARANTINE_ACTIONS", "Administration", "ParticipantStatus", "StateConflict"]

QUARANTINE_ACTIONS = ("participant.quarantine", "participant.release")
_REASON_MAX_CHARS = 1000


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
    if name in ("coordinator",):
        raise ConfigError("the coordinator cannot be revoked or quarantined from its own API")
    return name


class Administration:
    """Admin operations on one coordinator database.

    Parameters
    ----------
    db
        The coordinator's database.
    enrolled
        The participant names of the federation (from its config), when known; the
        local CLI, which has only the workdir, passes ``None``.
    models_dir
        The model blob directory (``<workdir>/models``), for rollback.
    """

    def __init__(self, db: Database, *, enrolled: Collection[str] | None, models_dir: Path) -> None:
        self.db = db
        self.enrolled = frozenset(enrolled) if enrolled is not None else None
        self.events = EventLog(db)
        self.revocations = Revocations(db)
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
        names = set(seen) | set(revoked) | jailed | set(trust) | set(self.enrolled or ())
        rows = []
        for name in sorted(names):
            contact = seen.get(name)
            revocation = revoked.get(name)
            rows.append(
                ParticipantStatus(
                    name=name,
                    enrolled=name in self.enrolled if self.enrolled is not None else True,
                    revoked=revocation is not None,
                    quarantined=name in jailed,
                    organization=contact.organization if contact else None,
                    trust=trust.get(name),
                    last_seen=contact.last_seen.isoformat() if contact else None,
                    revoked_reason=revocation.reason if revocation else None,
                )
            )
        return rows

    # -- writes ----------------------------------------------------------------------

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
