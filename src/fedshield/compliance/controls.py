"""Controls and evidence: what a compliance report checks and how a control is decided.

Pure: no files, no clock. :mod:`fedshield.compliance.evidence` turns a
:class:`~fedshield.compliance.snapshot.Snapshot` into :class:`Evidence` items; this
module maps them to the controls of HIPAA's technical safeguards (45 CFR 164.312) and of
the GDPR articles on minimisation, integrity, privacy by design, records and security,
and decides each control from its evidence:

* ``fail`` if any piece of evidence behind it fails;
* ``warn`` if none fails but one warns (or is missing: no evidence is not a pass);
* ``pass`` otherwise.

A control's status is evidence about the *system*. It is not a legal opinion: HIPAA and
GDPR compliance also depend on contracts, policies and people that no log shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CONTROLS",
    "STATUSES",
    "Control",
    "ControlResult",
    "Evidence",
    "Status",
    "evaluate",
    "worst",
]

Status = Literal["pass", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail")
_RANK = {status: rank for rank, status in enumerate(STATUSES)}


def worst(statuses: Sequence[Status]) -> Status:
    """Return the worst of ``statuses`` (``fail`` > ``warn`` > ``pass``); ``warn`` if empty."""
    if not statuses:
        return "warn"
    return max(statuses, key=_RANK.__getitem__)


@dataclass(frozen=True)
class Evidence:
    """One checked fact about the federation, with what it is based on.

    Attributes
    ----------
    id
        Stable key (``audit_chain``); controls name evidence by it.
    title
        What was checked, for people.
    status
        ``pass``, ``warn`` or ``fail``.
    summary
        One or two sentences: the finding, and what to do when it is not ``pass``.
    facts
        The data behind the finding (JSON-ready; metadata only, never payloads).
    sources
        Where the facts were read (``audit log``, ``privacy ledger``, ``kits/``...).
    """

    id: str
    title: str
    status: Status
    summary: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return the evidence as a JSON-ready mapping."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "facts": dict(self.facts),
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class Control:
    """A regulatory control and the evidence that decides it."""

    framework: Literal["HIPAA", "GDPR"]
    id: str
    title: str
    evidence: tuple[str, ...]
    note: str = ""

    @property
    def key(self) -> str:
        """``HIPAA 164.312(b)``, ``GDPR Art. 25``: how the CLI and the JSON name it."""
        return f"{self.framework} {self.id}"


@dataclass(frozen=True)
class ControlResult:
    """A control decided: its status and the evidence behind it."""

    control: Control
    status: Status
    evidence: tuple[Evidence, ...]
    missing: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return the result as a JSON-ready mapping (evidence by id; see the report's list)."""
        return {
            "control": self.control.key,
            "framework": self.control.framework,
            "id": self.control.id,
            "title": self.control.title,
            "status": self.status,
            "evidence": [
                {"id": item.id, "status": item.status, "summary": item.summary}
                for item in self.evidence
            ],
            "missing_evidence": list(self.missing),
            "note": self.control.note,
        }


CONTROLS: tuple[Control, ...] = (
    Control(
        "HIPAA",
        "164.312(a)(1)",
        "Access control: only authorized persons and software get access",
        ("access_control", "revocations", "key_ages"),
    ),
    Control(
        "HIPAA",
        "164.312(b)",
        "Audit controls: record and examine activity",
        ("audit_chain", "access_control"),
    ),
    Control(
        "HIPAA",
        "164.312(c)(1)",
        "Integrity: protect data from improper alteration",
        ("model_lineage", "audit_chain"),
    ),
    Control(
        "HIPAA",
        "164.312(d)",
        "Person or entity authentication",
        ("transport", "key_ages", "revocations"),
    ),
    Control(
        "HIPAA",
        "164.312(e)(1)",
        "Transmission security",
        ("transport", "secure_aggregation"),
    ),
    Control(
        "GDPR",
        "Art. 5(1)(c)",
        "Data minimisation",
        ("masking", "secure_aggregation", "differential_privacy"),
    ),
    Control(
        "GDPR",
        "Art. 5(1)(f)",
        "Integrity and confidentiality",
        ("transport", "secure_aggregation", "audit_chain", "model_lineage"),
    ),
    Control(
        "GDPR",
        "Art. 25",
        "Data protection by design and by default",
        ("differential_privacy", "clipping", "secure_aggregation", "masking"),
    ),
    Control(
        "GDPR",
        "Art. 30",
        "Records of processing activities",
        ("audit_chain", "model_lineage", "participation"),
    ),
    Control(
        "GDPR",
        "Art. 32",
        "Security of processing",
        ("transport", "key_ages", "access_control", "revocations", "differential_privacy"),
    ),
    Control(
        "GDPR",
        "Art. 35",
        "Data protection impact assessment",
        ("differential_privacy", "masking", "participation"),
        note="This report is input to a DPIA (the risks to records and how they are "
        "bounded), not a DPIA: the assessment itself is the controller's.",
    ),
)
"""Every control the report decides, in report order."""


def evaluate(
    evidence: Sequence[Evidence], controls: Sequence[Control] = CONTROLS
) -> list[ControlResult]:
    """Decide every control from ``evidence`` (see the module docstring for the rule).

    Evidence a control names but that is absent counts as ``warn``: a report that could
    not check something must not pass it.
    """
    by_id = {item.id: item for item in evidence}
    results = []
    for control in controls:
        found = tuple(by_id[key] for key in control.evidence if key in by_id)
        missing = tuple(key for key in control.evidence if key not in by_id)
        statuses: list[Status] = [item.status for item in found]
        if missing:
            statuses.append("warn")
        results.append(ControlResult(control, worst(statuses), found, missing))
    return results
