"""Decide what a :class:`~fedshield.compliance.snapshot.Snapshot` shows, one fact at a time.

Pure: every function reads the snapshot and returns one
:class:`~fedshield.compliance.controls.Evidence`; none touches a file or a clock (the
report's time is ``snapshot.now``). :func:`collect` returns them all, in report order.

Each finding says what was checked, what was found and, when it is not ``pass``, what to
do about it. The facts are metadata (names, counts, hashes, epsilons, dates), never
weights or updates.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from fedshield.compliance.controls import Evidence, Status, worst
from fedshield.compliance.snapshot import Snapshot
from fedshield.storage.records import EventRecord

__all__ = [
    "DENIED_OUTCOMES",
    "REVOKE_ACTIONS",
    "collect",
    "committed_fit_rounds",
]

REVOKE_ACTIONS = frozenset({"participant.revoke", "identity.revoke", "certificate.revoke"})
"""Events that revoke an entity's certificate."""
DENIED_OUTCOMES = frozenset({"denied", "forbidden", "rejected"})
"""Event outcomes that record a refused access."""
_MASKING_KEY = "masking_policy_sha3"


def _events(snapshot: Snapshot, *actions: str) -> list[EventRecord]:
    return [e for e in snapshot.events if e.action in actions]


def _round_of(event: EventRecord) -> int | None:
    """Return the round an event is about: ``details['round']`` or a ``round/N`` resource."""
    value = event.details.get("round")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if event.resource.startswith("round/"):
        tail = event.resource.removeprefix("round/")
        if tail.isdigit():
            return int(tail)
    return None


def committed_fit_rounds(snapshot: Snapshot) -> list[int]:
    """Fit rounds that committed a model, increasing (one per round number)."""
    return sorted(
        {r.number for r in snapshot.rounds if r.kind == "fit" and r.status == "committed"}
    )


def _settings(snapshot: Snapshot) -> dict[str, Any]:
    """Return the settings of the latest ``coordinator.start`` that recorded them."""
    for event in reversed(_events(snapshot, "coordinator.start")):
        settings = event.details.get("settings")
        if isinstance(settings, dict):
            return settings
    return {}


# -- the evidence ------------------------------------------------------------------------------


def transport(snapshot: Snapshot) -> Evidence:
    """How participants reached the coordinator: TLS 1.3 with client certificates."""
    listens = _events(snapshot, "transport.listen")
    title = "Transport security: mutual TLS 1.3 between every party and the coordinator"
    sources = ("audit log: transport.listen",)
    if not listens:
        return Evidence(
            "transport",
            title,
            "warn",
            "No network listener was recorded: this workdir comes from an in-process "
            "simulation or an older version. Nothing crossed a network, or there is no "
            "evidence of how it did; run the federation with `fedshield coordinator` to "
            "record it.",
            {"listeners": 0},
            sources,
        )
    weak = [
        e
        for e in listens
        if e.details.get("tls") != "TLSv1.3" or e.details.get("client_certificates") != "required"
    ]
    facts = {
        "listeners": len(listens),
        "tls": sorted({str(e.details.get("tls")) for e in listens}),
        "client_certificates": sorted({str(e.details.get("client_certificates")) for e in listens}),
        "coordinator_certificates_sha256": sorted(
            {str(e.details.get("certificate_sha256")) for e in listens}
        ),
    }
    if weak:
        return Evidence(
            "transport",
            title,
            "fail",
            f"{len(weak)} of {len(listens)} coordinator starts listened without TLS 1.3 "
            "and required client certificates.",
            facts,
            sources,
        )
    return Evidence(
        "transport",
        title,
        "pass",
        f"Every coordinator start ({len(listens)}) listened with TLS 1.3 only and required "
        "a client certificate issued by the federation CA.",
        facts,
        sources,
    )


def secure_aggregation(snapshot: Snapshot) -> Evidence:
    """Whether every committed fit round ran SecAgg+ (the coordinator saw only sums)."""
    title = "Secure aggregation per round: the coordinator sees only sums"
    sources = ("round log", "audit log: secagg.start, security.plain_aggregation")
    committed = committed_fit_rounds(snapshot)
    secure_rounds = {
        r for e in _events(snapshot, "secagg.finish") if (r := _round_of(e)) is not None
    }
    plain = [r for r in committed if r not in secure_rounds]
    groups = {
        _round_of(e): len(e.details.get("groups") or [])
        for e in _events(snapshot, "secagg.start")
        if _round_of(e) in committed
    }
    facts: dict[str, Any] = {
        "committed_rounds": len(committed),
        "secure_rounds": sorted(set(committed) & secure_rounds),
        "plain_rounds": plain,
        "groups_per_round": {str(k): v for k, v in sorted(groups.items()) if k is not None},
        "plain_aggregation_warnings": len(_events(snapshot, "security.plain_aggregation")),
    }
    if not committed:
        return Evidence(
            "secure_aggregation",
            title,
            "warn",
            "No fit round has committed yet: there is nothing to show.",
            facts,
            sources,
        )
    if plain:
        return Evidence(
            "secure_aggregation",
            title,
            "fail",
            f"{len(plain)} of {len(committed)} committed rounds ran without secure "
            f"aggregation (rounds {_ranges(plain)}): the coordinator saw those updates one "
            "by one. Leave [secure_aggregation] enabled (the default).",
            facts,
            sources,
        )
    grouped = [r for r, g in groups.items() if r is not None and g > 1]
    note = (
        f" In {len(grouped)} rounds it saw group sums (min_group_size), not one total."
        if grouped
        else ""
    )
    return Evidence(
        "secure_aggregation",
        title,
        "pass",
        f"All {len(committed)} committed rounds ran SecAgg+.{note}",
        facts,
        sources,
    )


def differential_privacy(snapshot: Snapshot) -> Evidence:
    """Which DP mechanism ran, and each participant's epsilon against its budget."""
    title = "Differential privacy: mechanism and epsilon spent per participant"
    sources = ("privacy ledger (privacy report)", "round log", "audit log: security.no_dp")
    no_dp_events = _events(snapshot, "security.no_dp")
    if snapshot.privacy is None:
        sites = sorted(
            {
                e.resource.removeprefix("participant/")
                for e in no_dp_events
                if e.resource.startswith("participant/")
            }
        )
        if no_dp_events:
            return Evidence(
                "differential_privacy",
                title,
                "fail",
                "The federation trained without differential privacy"
                + (f" (participants {', '.join(sites)})" if sites else "")
                + ": updates and the model can reveal records. Keep [privacy] mode = "
                "'sample' (the default) at every site.",
                {"without_dp": sites, "no_dp_events": len(no_dp_events)},
                sources,
            )
        return Evidence(
            "differential_privacy",
            title,
            "warn",
            f"The privacy report could not be built: {snapshot.privacy_error}",
            {},
            sources,
        )
    report = snapshot.privacy.to_json()
    participants: dict[str, Any] = report["participants"]
    off = sorted(
        name
        for name, row in participants.items()
        if not row["dp"] or any(not p.dp for p in snapshot.privacy.points if p.participant == name)
    )
    off += sorted(
        {
            e.resource.removeprefix("participant/")
            for e in no_dp_events
            if e.resource.startswith("participant/")
        }
        - set(off)
    )
    over = sorted(
        name
        for name, row in participants.items()
        if row["epsilon"] is not None
        and row["budget"] is not None
        and row["epsilon"] > row["budget"] * (1 + 1e-9)
    )
    mechanisms = sorted(
        {
            "DP-SGD (sample-level, at each site)"
            if row["level"] == "sample"
            else "DP-FedAvg (participant-level)"
            for row in participants.values()
            if row["dp"]
        }
    )
    settings = _settings(snapshot)
    if settings.get("participant_dp_noise") not in (None, "off"):
        mechanisms.append(f"participant-level noise: {settings['participant_dp_noise']}")
    facts = {
        "mechanisms": sorted(set(mechanisms)),
        "participants": {
            name: {
                "level": row["level"],
                "dp": row["dp"],
                "epsilon": _finite(row["epsilon"]),
                "delta": row["delta"],
                "budget": row["budget"],
                "rounds": row["rounds"],
            }
            for name, row in participants.items()
        },
        "without_dp": off,
        "over_budget": over,
        "notes": report["notes"],
    }
    if not participants:
        status: Status = "fail" if no_dp_events else "warn"
        return Evidence(
            "differential_privacy",
            title,
            status,
            "No participant recorded any differential privacy"
            + (
                " and the run was configured without it ([privacy] mode = 'off')."
                if no_dp_events
                else ": no round has been trained yet."
            ),
            facts,
            sources,
        )
    if off or over:
        parts = []
        if off:
            parts.append(f"trained without DP: {', '.join(off)}")
        if over:
            parts.append(f"spent more than its budget: {', '.join(over)}")
        return Evidence(
            "differential_privacy",
            title,
            "fail",
            "Some participants are not protected as planned ("
            + "; ".join(parts)
            + "). Keep [privacy] mode = 'sample' at every site.",
            facts,
            sources,
        )
    worst_share = max(
        (
            row["epsilon"] / row["budget"]
            for row in participants.values()
            if row["epsilon"] is not None and row["budget"]
        ),
        default=0.0,
    )
    return Evidence(
        "differential_privacy",
        title,
        "pass",
        f"Every participant ({len(participants)}) trained with DP and stayed within its "
        f"budget (the highest used {worst_share:.0%} of it).",
        facts,
        sources,
    )


def clipping(snapshot: Snapshot) -> Evidence:
    """Whether contributions were clipped (the bound every DP guarantee rests on)."""
    title = "Clipping: each record's gradient (DP-SGD) or each update is norm-bounded"
    sources = ("coordinator.start settings", "privacy events", "federation config")
    settings = _settings(snapshot)
    config = snapshot.config
    facts: dict[str, Any] = {}
    if config is not None:
        facts["sample_max_grad_norm"] = (
            config.privacy.max_grad_norm if config.privacy.enabled else None
        )
        facts["participant_clip_norm"] = (
            config.participant_dp.clip_norm if config.participant_dp.noise != "off" else None
        )
        facts["participant_clipping"] = (
            config.participant_dp.clipping if config.participant_dp.noise != "off" else None
        )
        facts["secagg_clip_range"] = (
            config.secure_aggregation.clip_range if config.secure_aggregation.enabled else None
        )
    elif settings:
        facts["sample_max_grad_norm"] = settings.get("privacy_max_grad_norm")
        facts["participant_clipping"] = settings.get("participant_dp_clipping")
    if snapshot.privacy is not None:
        clips = sorted(
            {
                p.participant
                for p in snapshot.privacy.points
                if p.dp and p.level == "sample" and p.epsilon is not None
            }
        )
        facts["sites_with_dp_sgd_clipping"] = clips
    clipped = bool(
        facts.get("sample_max_grad_norm")
        or facts.get("participant_clip_norm")
        or facts.get("participant_clipping")
        or facts.get("sites_with_dp_sgd_clipping")
    )
    if not facts:
        return Evidence(
            "clipping",
            title,
            "warn",
            "Neither the config nor the recorded settings are available to show clipping.",
            facts,
            sources,
        )
    if not clipped:
        return Evidence(
            "clipping",
            title,
            "fail",
            "Nothing bounds a record's or a participant's influence: DP is off and no "
            "update is clipped. Turn on [privacy] mode = 'sample' or [participant_dp].",
            facts,
            sources,
        )
    return Evidence(
        "clipping",
        title,
        "pass",
        "Contributions are norm-bounded before noise: "
        + ", ".join(f"{k} = {v}" for k, v in facts.items() if v not in (None, [], ""))[:400]
        + ".",
        facts,
        sources,
    )


def masking(snapshot: Snapshot) -> Evidence:
    """Which masking policy each participant applied before training (by its hash)."""
    title = "Masking at the edge: identifying columns masked before training"
    sources = ("audit log: masking policy hashes reported with contributions",)
    policies: dict[str, set[str]] = defaultdict(set)
    for event in snapshot.events:
        digest = event.details.get(_MASKING_KEY)
        if event.action == "masking.policy":
            digest = event.details.get("policy_sha3")
        if isinstance(digest, str):
            who = event.details.get("participant")
            name = (
                str(who)
                if isinstance(who, str)
                else event.resource.removeprefix("participant/").split("/")[0]
            )
            policies[name].add(digest)
    contributors = sorted(
        {
            e.resource.removeprefix("participant/")
            for e in _events(snapshot, "round.contribution")
            if e.resource.startswith("participant/")
        }
    )
    dataset = snapshot.config.data.dataset if snapshot.config is not None else None
    facts: dict[str, Any] = {
        "policies": {name: sorted(d) for name, d in sorted(policies.items())},
        "contributors": contributors,
        "dataset": dataset,
    }
    if not policies:
        if dataset is not None and dataset != "csv":
            return Evidence(
                "masking",
                title,
                "pass",
                f"The federation trains on the built-in {dataset!r} data set, which has no "
                "identifying columns: there is nothing to mask.",
                facts,
                sources,
            )
        return Evidence(
            "masking",
            title,
            "warn",
            "No participant reported a masking policy. For tabular data with identifying "
            "columns, give each site a masking policy (docs/masking.md).",
            facts,
            sources,
        )
    unmasked = [name for name in contributors if name not in policies]
    if unmasked:
        return Evidence(
            "masking",
            title,
            "warn",
            f"{len(unmasked)} contributing participants reported no masking policy: "
            f"{', '.join(unmasked)}.",
            facts,
            sources,
        )
    changed = [name for name, d in policies.items() if len(d) > 1]
    suffix = f" ({', '.join(changed)} changed policy during the run.)" if changed else ""
    return Evidence(
        "masking",
        title,
        "pass",
        f"Every contributing participant ({len(policies)}) masked its data under a policy "
        f"whose hash is in the audit log.{suffix}",
        facts,
        sources,
    )


def access_control(snapshot: Snapshot) -> Evidence:
    """Role-based access control: the policy in force and every denied access."""
    title = "Access control: roles from certificates, deny by default, denials audited"
    sources = ("audit log: access decisions", "participant registry")
    denied = [e for e in snapshot.events if e.outcome in DENIED_OUTCOMES]
    policies = _events(snapshot, "policy.load")
    by_actor = Counter(e.actor for e in denied)
    roles = Counter(p.role for p in snapshot.participants)
    facts: dict[str, Any] = {
        "denied": len(denied),
        "denied_by_actor": dict(sorted(by_actor.items())),
        "denied_examples": [
            {
                "time": e.time.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "resource": e.resource,
            }
            for e in denied[:20]
        ],
        "policy_hashes": sorted(
            {str(e.details.get("policy_sha3")) for e in policies if e.details.get("policy_sha3")}
        ),
        "callers_by_role": dict(sorted(roles.items())),
        "custom_roles": sorted(
            {str(r) for e in policies for r in (e.details.get("custom_roles") or [])}
        ),
    }
    if policies:
        custom = facts["custom_roles"]
        summary = (
            "Every caller is identified by its CA-issued certificate and every call is "
            "decided by the access policy in force (deny by default): "
            + (f"custom roles {', '.join(custom)}" if custom else "built-in roles only")
            + (
                f", policy file SHA3 {', '.join(h[:16] + '...' for h in facts['policy_hashes'])}."
                if facts["policy_hashes"]
                else "."
            )
        )
    else:
        summary = (
            "Every caller is identified by its CA-issued certificate, and each endpoint "
            "allows only its roles (deny by default); no policy load was recorded."
        )
    if denied:
        summary += f" {len(denied)} denied accesses are in the audit log."
    else:
        summary += " No access was denied."
    return Evidence("access_control", title, "pass", summary, facts, sources)


def key_ages(snapshot: Snapshot) -> Evidence:
    """Certificate ages and expiry against the rotation policy."""
    title = (
        f"Key lifecycle: certificates younger than {snapshot.rotation_days} days and not expired"
    )
    sources = (f"certificate store: {snapshot.certificates_source or 'not found'}",)
    if not snapshot.certificates:
        return Evidence(
            "key_ages",
            title,
            "warn",
            f"No certificates were read ({snapshot.certificates_error}). Pass --kits with "
            "the `fedshield provision --out` folder.",
            {},
            sources,
        )
    now = snapshot.now
    rows = []
    statuses: list[Status] = []
    expired, old, expiring = [], [], []
    for cert in snapshot.certificates:
        age_days = (now - cert.not_before) / timedelta(days=1)
        left_days = (cert.not_after - now) / timedelta(days=1)
        status: Status = "pass"
        if now >= cert.not_after or now < cert.not_before:
            status = "fail"
            expired.append(cert.kit)
        elif age_days > snapshot.rotation_days:
            status = "warn"
            old.append(cert.kit)
        elif left_days < snapshot.expiry_warning_days:
            status = "warn"
            expiring.append(cert.kit)
        statuses.append(status)
        rows.append(
            {
                "kit": cert.kit,
                "name": cert.name,
                "role": cert.role,
                "fingerprint_sha256": cert.fingerprint_sha256,
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
                "age_days": round(age_days, 1),
                "days_left": round(left_days, 1),
                "status": status,
            }
        )
    facts: dict[str, Any] = {
        "certificates": rows,
        "rotation_days": snapshot.rotation_days,
        "expiry_warning_days": snapshot.expiry_warning_days,
    }
    if snapshot.certificates_error:
        facts["problems"] = snapshot.certificates_error
        statuses.append("warn")
    verdict = worst(statuses)
    if verdict == "pass":
        summary = (
            f"All {len(rows)} certificates are valid, younger than the rotation period and "
            f"more than {snapshot.expiry_warning_days} days from expiry."
        )
    else:
        parts = []
        if expired:
            parts.append(f"expired or not yet valid: {', '.join(expired)}")
        if old:
            parts.append(f"older than {snapshot.rotation_days} days: {', '.join(old)}")
        if expiring:
            parts.append(
                f"expiring within {snapshot.expiry_warning_days} days: {', '.join(expiring)}"
            )
        if snapshot.certificates_error:
            parts.append(snapshot.certificates_error)
        summary = "; ".join(parts) + ". Re-issue these certificates (rotate the keys)."
    return Evidence("key_ages", title, verdict, summary, facts, sources)


def revocations(snapshot: Snapshot) -> Evidence:
    """Revoked and quarantined participants, and that none contributed afterwards."""
    title = "Revocations and quarantines"
    sources = ("audit log: revocations, quarantines, releases, contributions",)
    revoked: dict[str, EventRecord] = {}
    for event in snapshot.events:
        if event.action in REVOKE_ACTIONS and event.outcome not in DENIED_OUTCOMES:
            name = event.resource.removeprefix("participant/")
            revoked.setdefault(name, event)
    quarantined: dict[str, bool] = {}
    history = []
    for event in _events(snapshot, "participant.quarantine", "participant.release"):
        name = event.resource.removeprefix("participant/")
        quarantined[name] = event.action == "participant.quarantine"
        history.append(
            {
                "time": event.time.isoformat(),
                "participant": name,
                "action": event.action.removeprefix("participant."),
                "actor": event.actor,
            }
        )
    late = sorted(
        {
            e.resource.removeprefix("participant/")
            for e in _events(snapshot, "round.contribution")
            if e.outcome == "included"
            and (r := revoked.get(e.resource.removeprefix("participant/"))) is not None
            and e.id > r.id
        }
    )
    facts: dict[str, Any] = {
        "revoked": {
            name: {"time": e.time.isoformat(), "actor": e.actor, "reason": e.details.get("reason")}
            for name, e in sorted(revoked.items())
        },
        "quarantined_now": sorted(n for n, q in quarantined.items() if q),
        "quarantine_history": history,
        "contributed_after_revocation": late,
    }
    if late:
        return Evidence(
            "revocations",
            title,
            "fail",
            f"Revoked participants contributed after their revocation: {', '.join(late)}.",
            facts,
            sources,
        )
    return Evidence(
        "revocations",
        title,
        "pass",
        f"{len(revoked)} revoked, {len(facts['quarantined_now'])} quarantined now, "
        f"{len(history)} quarantine decisions; no revoked participant contributed "
        "afterwards.",
        facts,
        sources,
    )


def model_lineage(snapshot: Snapshot) -> Evidence:
    """Every model version: its parent, its round, and that its stored hash still holds."""
    title = "Model lineage: every version's parent, round and content hash"
    sources = ("model registry", "model store (re-hashed)", "audit log: model.commit")
    versions = {m.version: m for m in snapshot.models}
    problems = []
    for model in snapshot.models:
        if model.parent is not None and model.parent not in versions:
            problems.append(f"version {model.version}: parent {model.parent} is missing")
        elif model.parent is not None and model.parent >= model.version:
            problems.append(f"version {model.version}: parent {model.parent} is not older")
    for blob in snapshot.blobs:
        if not blob.ok:
            problems.append(f"version {blob.version}: {blob.problem}")
    committed = {
        e.details.get("version"): e.details.get("sha3") for e in _events(snapshot, "model.commit")
    }
    for model in snapshot.models:
        if model.version in committed and committed[model.version] != model.sha3:
            problems.append(
                f"version {model.version}: the registry's hash differs from the audited one"
            )
    unaudited = sorted(v for v in versions if v not in committed)
    facts: dict[str, Any] = {
        "versions": [
            {
                "version": m.version,
                "parent": m.parent,
                "round": m.round,
                "sha3": m.sha3,
                "created_at": m.created_at.isoformat(),
                "note": m.note,
            }
            for m in snapshot.models
        ],
        "rollbacks": len(_events(snapshot, "model.rollback")),
        "not_in_audit_log": unaudited,
        "problems": problems,
    }
    if not snapshot.models:
        return Evidence(
            "model_lineage", title, "warn", "No model version exists yet.", facts, sources
        )
    if problems:
        return Evidence(
            "model_lineage",
            title,
            "fail",
            f"{len(problems)} lineage problems: " + "; ".join(problems[:5]),
            facts,
            sources,
        )
    if unaudited:
        return Evidence(
            "model_lineage",
            title,
            "warn",
            f"Versions {_ranges(unaudited)} have no model.commit audit entry (written by an "
            "older version of fedshield).",
            facts,
            sources,
        )
    return Evidence(
        "model_lineage",
        title,
        "pass",
        f"{len(snapshot.models)} model versions form one lineage; every stored model still "
        "hashes to the SHA3-256 recorded in the audit log.",
        facts,
        sources,
    )


def audit_chain(snapshot: Snapshot) -> Evidence:
    """Check the audit log's hash chain, signatures and signed tree heads."""
    title = "Audit log: hash chain, coordinator signatures and signed tree heads verify"
    sources = ("audit log", "audit public key")
    if snapshot.audit is None:
        return Evidence(
            "audit_chain",
            title,
            "fail",
            f"The audit log does not verify: {snapshot.audit_error}",
            {"error": snapshot.audit_error},
            sources,
        )
    audit = snapshot.audit
    return Evidence(
        "audit_chain",
        title,
        "pass",
        f"{audit.entries} entries and {audit.tree_heads} signed tree heads verify "
        f"(Merkle root {audit.root[:16]}...); {audit.signatures_checked} entry signatures "
        "checked one by one, the others through the tree heads that sign them.",
        {
            "entries": audit.entries,
            "signatures_checked_one_by_one": audit.signatures_checked,
            "tree_heads": audit.tree_heads,
            "root": audit.root,
            "federation": snapshot.federation,
        },
        sources,
    )


def participation(snapshot: Snapshot) -> Evidence:
    """Who was selected, answered and dropped in every round."""
    title = "Participation: who took part in each round"
    sources = ("round log",)
    rows = [
        {
            "round": r.number,
            "attempt": r.attempt,
            "kind": r.kind,
            "status": r.status,
            "selected": len(r.selected),
            "answered": len(r.answered),
            "dropped": list(r.dropped),
        }
        for r in snapshot.rounds
    ]
    contributions = Counter(
        e.resource.removeprefix("participant/")
        for e in _events(snapshot, "round.contribution")
        if e.outcome == "included"
    )
    facts = {"rounds": rows, "contributions": dict(sorted(contributions.items()))}
    if not rows:
        return Evidence("participation", title, "warn", "No round has run yet.", facts, sources)
    failed = sum(1 for r in snapshot.rounds if r.status not in ("committed", "done"))
    return Evidence(
        "participation",
        title,
        "pass",
        f"{len(rows)} round attempts recorded ({failed} did not complete); "
        f"{len(contributions)} participants contributed.",
        facts,
        sources,
    )


EVIDENCE: tuple[Callable[[Snapshot], Evidence], ...] = (
    transport,
    secure_aggregation,
    differential_privacy,
    clipping,
    masking,
    access_control,
    key_ages,
    revocations,
    model_lineage,
    audit_chain,
    participation,
)
"""Every piece of evidence, in report order."""


def collect(snapshot: Snapshot) -> list[Evidence]:
    """Every piece of evidence about ``snapshot``, in report order."""
    return [decide(snapshot) for decide in EVIDENCE]


# -- helpers -------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _ranges(numbers: Iterable[int]) -> str:
    """``1-3, 5``: consecutive numbers as ranges."""
    values: Sequence[int] = sorted(set(numbers))
    parts = []
    start = prev = None
    for n in values:
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)
