"""The compliance core: how evidence decides controls, and what each piece of evidence sees.

Snapshots here are built by hand (the pure evidence functions take plain data); the
integration tests read real workdirs.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fedshield.audit.verify import VerifyReport
from fedshield.compliance import CONTROLS, Evidence, build_report, evaluate, render_html
from fedshield.compliance.controls import STATUSES, worst
from fedshield.compliance.evidence import (
    audit_chain,
    key_ages,
    model_lineage,
    revocations,
    secure_aggregation,
    transport,
)
from fedshield.compliance.snapshot import BlobCheck, CertificateInfo, Snapshot
from fedshield.storage.records import EventRecord, RoundRecord
from fedshield.storage.registry import ModelVersion

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def event(i: int, action: str, resource: str, outcome: str = "ok", **details: Any) -> EventRecord:
    return EventRecord(i, NOW - timedelta(hours=1) + timedelta(seconds=i), "coordinator",
                       action, resource, outcome, details)  # fmt: skip


def fit_round(number: int, answered: tuple[str, ...] = ("a", "b")) -> RoundRecord:
    return RoundRecord(number, number, 1, "fit", "committed", number - 1, NOW, NOW, answered,
                       answered, (), None, number, {})  # fmt: skip


def model(version: int, parent: int | None, sha3: str) -> ModelVersion:
    return ModelVersion(version, parent, version or None, sha3, 10, {}, NOW, "")


def snapshot(**changes: Any) -> Snapshot:
    base = Snapshot(
        workdir="/w",
        now=NOW,
        federation="fed",
        events=(),
        rounds=(),
        models=(),
        blobs=(),
        participants=(),
        privacy=None,
        privacy_error="no ledger",
        audit=VerifyReport(
            entries=3, signatures_checked=0, tree_heads=1, external_heads=0, root="ab" * 32
        ),
        audit_error=None,
        certificates=(),
        certificates_source=None,
        certificates_error="none",
        config=None,
        config_source=None,
        config_error="none",
        rotation_days=365,
        expiry_warning_days=30,
    )
    return dataclasses.replace(base, **changes)


# -- controls ------------------------------------------------------------------------------------


@given(st.lists(st.sampled_from(STATUSES), min_size=1))
def test_worst_is_fail_over_warn_over_pass(statuses: list[Any]) -> None:
    expected = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    assert worst(statuses) == expected


@given(st.dictionaries(st.sampled_from(sorted({k for c in CONTROLS for k in c.evidence})),
                       st.sampled_from(STATUSES)))  # fmt: skip
def test_a_control_is_its_worst_evidence_and_missing_evidence_warns(found: dict[str, Any]) -> None:
    evidence = [Evidence(key, key, status, "s") for key, status in found.items()]
    for result in evaluate(evidence):
        statuses = [found[k] for k in result.control.evidence if k in found]
        missing = [k for k in result.control.evidence if k not in found]
        assert list(result.missing) == missing
        assert result.status == worst(statuses + (["warn"] if missing else []))


def test_every_required_control_is_decided() -> None:
    keys = [c.key for c in CONTROLS]
    for required in (
        "HIPAA 164.312(a)(1)",
        "HIPAA 164.312(b)",
        "HIPAA 164.312(c)(1)",
        "HIPAA 164.312(d)",
        "HIPAA 164.312(e)(1)",
        "GDPR Art. 5(1)(c)",
        "GDPR Art. 5(1)(f)",
        "GDPR Art. 25",
        "GDPR Art. 30",
        "GDPR Art. 32",
        "GDPR Art. 35",
    ):
        assert required in keys
    assert len(set(keys)) == len(keys)


# -- evidence ------------------------------------------------------------------------------------


def test_a_round_without_secure_aggregation_fails() -> None:
    events = (
        event(1, "secagg.finish", "round/1"),
        event(2, "secagg.start", "round/1", groups=[["a"]]),
    )
    secure = snapshot(rounds=(fit_round(1),), events=events)
    assert secure_aggregation(secure).status == "pass"
    mixed = snapshot(rounds=(fit_round(1), fit_round(2), fit_round(3)), events=events)
    found = secure_aggregation(mixed)
    assert found.status == "fail"
    assert found.facts["plain_rounds"] == [2, 3]
    assert "2-3" in found.summary


def test_transport_passes_only_with_tls13_and_client_certificates() -> None:
    assert transport(snapshot()).status == "warn"  # a simulation: no listener recorded
    good = event(
        1, "transport.listen", "https://h:1", tls="TLSv1.3", client_certificates="required"
    )
    assert transport(snapshot(events=(good,))).status == "pass"
    weak = event(
        2, "transport.listen", "https://h:1", tls="TLSv1.2", client_certificates="required"
    )
    assert transport(snapshot(events=(good, weak))).status == "fail"


def cert(kit: str, not_before: datetime, not_after: datetime) -> CertificateInfo:
    return CertificateInfo(kit, kit, "org", "participant", "00" * 32, not_before, not_after, "EC")


def test_key_ages_fail_expired_and_warn_old_or_expiring() -> None:
    def snapshot(**changes: Any) -> Snapshot:
        return globals()["snapshot"](**{"certificates_error": None, **changes})

    fresh = cert("fresh", NOW - timedelta(days=10), NOW + timedelta(days=300))
    assert key_ages(snapshot(certificates=(fresh,))).status == "pass"
    old = cert("old", NOW - timedelta(days=400), NOW + timedelta(days=300))
    expiring = cert("soon", NOW - timedelta(days=10), NOW + timedelta(days=5))
    found = key_ages(snapshot(certificates=(fresh, old, expiring)))
    assert found.status == "warn"
    assert "old" in found.summary and "soon" in found.summary
    expired = cert("gone", NOW - timedelta(days=100), NOW - timedelta(seconds=1))
    found = key_ages(snapshot(certificates=(fresh, expired)))
    assert found.status == "fail" and "gone" in found.summary
    assert key_ages(snapshot()).status == "warn"  # no certificate store: not a pass
    partial = snapshot(certificates=(fresh,), certificates_error="cert.pem: not PEM")
    assert key_ages(partial).status == "warn"


def test_a_contribution_after_revocation_fails() -> None:
    events = (
        event(1, "round.contribution", "participant/a", "included"),
        event(2, "participant.revoke", "participant/a", reason="key leaked"),
    )
    assert revocations(snapshot(events=events)).status == "pass"
    late = events + (event(3, "round.contribution", "participant/a", "included"),)
    found = revocations(snapshot(events=late))
    assert found.status == "fail"
    assert found.facts["contributed_after_revocation"] == ["a"]


def test_lineage_fails_on_a_bad_blob_or_a_rewritten_hash() -> None:
    models = (model(0, None, "aa" * 32), model(1, 0, "bb" * 32))
    commits = tuple(
        event(i, "model.commit", f"model/{m.version}", version=m.version, sha3=m.sha3)
        for i, m in enumerate(models)
    )
    blobs = tuple(BlobCheck(m.version, m.sha3, True) for m in models)
    good = snapshot(models=models, blobs=blobs, events=commits)
    assert model_lineage(good).status == "pass"
    flipped = dataclasses.replace(good, blobs=(blobs[0], BlobCheck(1, "bb" * 32, False, "hash")))
    assert model_lineage(flipped).status == "fail"
    rewritten = dataclasses.replace(good, models=(models[0], model(1, 0, "cc" * 32)))
    assert model_lineage(rewritten).status == "fail"


def test_an_unverifiable_audit_log_fails() -> None:
    assert audit_chain(snapshot()).status == "pass"
    broken = snapshot(audit=None, audit_error="failed at entry 7: signature")
    found = audit_chain(broken)
    assert found.status == "fail" and "entry 7" in found.summary


def test_the_html_escapes_what_it_shows() -> None:
    hostile = snapshot(
        federation="<script>alert(1)</script>",
        events=(event(1, "transport.listen", "<b>x</b>", tls="<i>", client_certificates="no"),),
    )
    page = render_html(build_report(hostile), {})
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_json_lists_every_control_with_its_status_and_evidence() -> None:
    report = build_report(snapshot()).to_json()
    assert [c["control"] for c in report["controls"]] == [c.key for c in CONTROLS]
    for control in report["controls"]:
        assert control["status"] in STATUSES
        assert control["evidence"] or control["missing_evidence"]
    assert {e["id"] for e in report["evidence"]} >= {k for c in CONTROLS for k in c.evidence}
