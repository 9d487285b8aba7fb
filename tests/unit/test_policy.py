"""Specification of the access policy: built-in roles, the policy file, what is audited."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedshield.errors import ConfigError
from fedshield.policy import (
    ADMIN_OPERATIONS,
    BUILTIN_ROLES,
    RESOURCES,
    DecisionLog,
    Permission,
    Policy,
    load_policy,
    parse_policy,
)

P = Permission.parse


def test_builtin_roles_are_the_five_of_the_issue() -> None:
    assert set(BUILTIN_ROLES) == {"admin", "coordinator", "participant", "auditor", "observer"}


def test_admin_alone_holds_admin_operations() -> None:
    for role, granted in BUILTIN_ROLES.items():
        held = granted & ADMIN_OPERATIONS
        assert held == (ADMIN_OPERATIONS if role == "admin" else frozenset()), role
    for op in ("participants:enroll", "participants:revoke", "participants:release"):
        assert P(op) in ADMIN_OPERATIONS
    assert P("models:rollback") in ADMIN_OPERATIONS


def test_auditor_reads_evidence_never_models_or_updates() -> None:
    policy = Policy()
    for allowed in ("audit:read", "compliance:read", "privacy_ledger:read"):
        assert policy.decide("auditor", P(allowed)).allowed
    for denied in ("models:read", "updates:read", "updates:write", "rounds:read"):
        assert not policy.decide("auditor", P(denied)).allowed


def test_participant_fetches_the_model_and_submits_but_reads_nothing_else() -> None:
    policy = Policy()
    for allowed in ("models:read", "updates:write", "rounds:read", "rounds:write"):
        assert policy.decide("participant", P(allowed)).allowed
    for denied in ("updates:read", "status:read", "audit:read", "participants:read"):
        decision = policy.decide("participant", P(denied))
        assert not decision.allowed and "participant" in decision.reason


def test_nobody_reads_another_participants_update() -> None:
    policy = Policy()
    assert not any(policy.decide(r, P("updates:read")).allowed for r in BUILTIN_ROLES)


def test_deny_by_default_for_an_unknown_role() -> None:
    decision = Policy().decide("root", P("health:read"))
    assert not decision.allowed and "not in the access policy" in decision.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models", "resource:action"),
        ("models:", "resource:action"),
        ("weights:read", "unknown resource"),
        ("models:delete", "unknown action"),
    ],
)
def test_malformed_permissions_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        P(text)


def test_a_policy_file_adds_custom_roles(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "version = 1\n"
        "[roles.data-steward]\n"
        'description = "the DPO\'s reader"\n'
        'permissions = ["health:read", "privacy_ledger:read", "audit:read"]\n'
    )
    policy = load_policy(path)
    assert policy.custom_roles == ("data-steward",)
    assert policy.decide("data-steward", P("privacy_ledger:read")).allowed
    assert not policy.decide("data-steward", P("models:read")).allowed
    # Built-ins stay.
    assert policy.decide("admin", P("participants:revoke")).allowed
    assert load_policy(None).custom_roles == ()
    # What the coordinator audits as the policy in force: the bytes it parsed.
    assert policy.source_sha3 == hashlib.sha3_256(path.read_bytes()).hexdigest()
    assert load_policy(None).source_sha3 is None
    assert policy.decide("admin", P("participants:enroll")).allowed


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": 2}, "version must be 1"),
        ({"version": 1, "extra": 1}, "unknown key"),
        ({"version": 1, "roles": {"Bad Name": {"permissions": []}}}, "role name must be"),
        ({"version": 1, "roles": {"admin": {"permissions": []}}}, "built in"),
        (
            {"version": 1, "roles": {"ops": {"permissions": ["participants:revoke"]}}},
            "admin operations belong to the admin role",
        ),
        ({"version": 1, "roles": {"ops": {"permissions": ["updates:read"]}}}, "may not hold"),
        ({"version": 1, "roles": {"ops": {"permissions": "status:read"}}}, "must be a list"),
        ({"version": 1, "roles": {"ops": {"permissions": [], "x": 1}}}, "unknown key"),
        ({"version": 1, "roles": {"ops": {"permissions": ["status:see"]}}}, "unknown action"),
    ],
)
def test_malformed_policy_files_are_refused(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(document, source="test")  # type: ignore[arg-type]


def test_unreadable_and_non_toml_policy_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read access policy"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(bad)


def test_every_resource_has_a_reader_among_the_builtins_except_updates() -> None:
    readable = {p.resource for g in BUILTIN_ROLES.values() for p in g if p.action == "read"}
    assert set(RESOURCES) - readable == {"updates"}


def test_decision_log_records_denies_and_admin_work_always_routine_once_per_round() -> None:
    policy = Policy()
    log = DecisionLog()

    def record(role: str, permission: str, caller: str, round: int | None) -> bool:
        decision = policy.decide(role, P(permission))
        return log.should_record(decision, caller=caller, endpoint="GET /x", round=round)

    # Routine allows: the first per caller, endpoint and round.
    assert record("participant", "rounds:read", "site-1", 1)
    assert not record("participant", "rounds:read", "site-1", 1)
    assert record("participant", "rounds:read", "site-2", 1)
    assert record("participant", "rounds:read", "site-1", 2)
    assert not record("participant", "rounds:read", "site-1", 2)
    # Every deny.
    assert record("participant", "status:read", "site-1", 2)
    assert record("participant", "status:read", "site-1", 2)
    # Every admin operation and every read of evidence.
    assert record("admin", "participants:revoke", "admin", 2)
    assert record("admin", "participants:revoke", "admin", 2)
    assert record("auditor", "audit:read", "aud", 2)
    assert record("auditor", "audit:read", "aud", 2)
    # A model read by someone other than a participant.
    assert record("admin", "models:read", "admin", 2)
    assert record("admin", "models:read", "admin", 2)
