"""Revocation, expiry and role-based access over real mutual TLS (a coordinator process).

* A participant revoked mid-round (admin API) is refused at its next request with a
  403 JSON error; the round commits without it; it is never selected again; the audit
  log holds the revocation and the denial.
* A revocation the CLI writes from another process is enforced by the running
  coordinator within its refresh bound.
* An expired certificate is refused at the TLS handshake, and the participant agent
  says so before it connects.
* The RBAC matrix: every endpoint x every built-in role (and a custom one).
* Enrollment at run time: a site made with ``identity csr`` is enrolled by the admin
  (over the API, and locally from another process) while the coordinator runs, then
  takes part in a round; a non-admin's enroll gets 403 and an audit entry; a revoked
  name is not enrolled again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from conftest import HOST, wait_until
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.errors import IdentityError
from fedshield.federation.kits import provision_federation
from fedshield.identity import (
    Kit,
    client_ssl_context,
    issue_certificate,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from fedshield.policy import BUILTIN_ROLES, Permission, load_policy
from fedshield.storage import Database, EventLog, EventRecord
from fedshield.transport.admin_client import AdminClient
from fedshield.transport.client import (
    CoordinatorClient,
    Credentials,
    EnvelopeAuth,
    RejectedError,
)
from fedshield.transport.messages import FitMeta

if TYPE_CHECKING:
    from conftest import Federation, FederationFactory

pytestmark = pytest.mark.slow

THREE_DAYS_AGO = datetime.now(UTC) - timedelta(days=3)


def _events(federation: Federation) -> list[EventRecord]:
    db = Database.for_workdir(federation.workdir)
    try:
        return EventLog(db).list()
    finally:
        db.close()


def _admin(federation: Federation) -> AdminClient:
    return AdminClient.for_kit(federation.kit("admin"), federation.url, timeout_s=10.0)


def _fit_task(client: CoordinatorClient, name: str) -> Any:
    def probe() -> Any:
        task = client.next_task(wait_s=0.5)
        return task if task is not None and task.kind == "fit" else None

    return wait_until(probe, timeout_s=60.0, what=f"a fit task for {name}")


def _upload_zero(client: CoordinatorClient, task: Any) -> None:
    weights = client.fetch_model(task.model_sha3)
    zero = {n: np.zeros_like(a) for n, a in weights.items()}
    meta = FitMeta(
        round=task.round, attempt=task.attempt, model_sha3=task.model_sha3, num_examples=10
    )
    client.push_update(meta, zero)


@pytest.mark.timeout(240)
def test_a_participant_revoked_mid_round_is_refused_and_the_round_goes_on_without_it(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory({"rounds": {"join_timeout_s": 3.0, "count": 2}})
    federation.start_coordinator()
    a, b, c = federation.names
    clients = {n: federation.client(n) for n in (a, b, c)}
    try:
        tasks = {}
        for name in (a, b, c):
            clients[name].next_task(wait_s=0)  # available: the round opens with all three
        for name in (a, b, c):
            tasks[name] = _fit_task(clients[name], name)
        assert {t.round for t in tasks.values()} == {1}
        _upload_zero(clients[a], tasks[a])

        with _admin(federation) as admin:
            result = admin.revoke(c, reason="its key was stolen")
        assert result["revoked"] == c

        # Its very next request, whatever it is, is refused with a clear JSON error.
        with pytest.raises(RejectedError) as info:
            clients[c].fetch_model(tasks[c].model_sha3)
        assert info.value.status == 403
        assert f"the certificate of {c!r} was revoked" in info.value.message
        reply = clients[c]._client.get("/v1/task", params={"wait_s": 0})
        assert reply.status_code == 403
        assert reply.headers["content-type"].startswith("application/json")
        assert {"error", "hint"} <= set(reply.json())

        # The round does not wait for it: it commits as soon as the others answered.
        _upload_zero(clients[b], tasks[b])
        status = federation.wait_status(
            lambda s: any(h["round"] == 1 and h["status"] == "committed" for h in s["history"]),
            timeout_s=60.0,
            what="round 1 to commit without the revoked participant",
        )
        committed = next(
            h for h in status["history"] if h["round"] == 1 and h["status"] == "committed"
        )
        assert committed["answered"] == sorted([a, b])
        assert committed["dropped"] == [c]
        assert c not in status["available"]

        # The next round is drawn without it.
        status = federation.wait_status(
            lambda s: s["round"] == 2, timeout_s=60.0, what="round 2 to open"
        )
        assert c not in status["selected"]
        assert sorted(status["selected"]) == sorted([a, b])
    finally:
        for client in clients.values():
            client.close()

    events = _events(federation)
    revoked = [e for e in events if e.action == "participant.revoke"]
    assert [(e.actor, e.resource, e.details["reason"]) for e in revoked] == [
        ("admin", f"participant/{c}", "its key was stolen")
    ]
    denied = [e for e in events if e.action == "access.deny" and e.actor == c]
    assert len(denied) >= 2
    assert all("revoked" in str(e.details["reason"]) for e in denied)
    assert denied[0].id > revoked[0].id


# Six CLI processes: on a loaded machine each may take half a minute to start.
@pytest.mark.timeout(600)
def test_a_revocation_written_by_the_cli_in_another_process_is_enforced(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    federation.start_coordinator()
    name = federation.names[0]
    with federation.client(name) as client:
        assert client.next_task(wait_s=0) is None  # a legitimate participant, for now
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedshield",
                "participants",
                "revoke",
                name,
                "--workdir",
                str(federation.workdir),
                "--reason",
                "left the consortium",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"revoked {name}" in done.stdout

        # Within the refresh bound (1 s by default; bounded wait, no timing assert).
        def refused() -> bool:
            reply = client._client.get("/v1/task", params={"wait_s": 0})
            return reply.status_code == 403

        wait_until(refused, timeout_s=20.0, what="the CLI's revocation to be enforced")

    # The admin sees it in the list, remotely and locally.
    with _admin(federation) as admin:
        rows = {r["name"]: r for r in admin.participants()}
    assert rows[name]["status"] == "revoked"
    assert rows[name]["revoked_reason"] == "left the consortium"
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedshield",
            "participants",
            "list",
            "--workdir",
            str(federation.workdir),
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert f'"name": "{name}"' in listed.stdout and '"status": "revoked"' in listed.stdout
    revoke_events = [e for e in _events(federation) if e.action == "participant.revoke"]
    assert [e.actor.startswith("cli:") for e in revoke_events] == [True]

    # The same commands act on a remote coordinator with an admin kit.
    other = federation.names[1]
    remote = ["--kit", str(federation.kits.admin_dir), "--coordinator", federation.url]
    for command in (
        ["quarantine", other, "--reason", "odd updates"],
        ["release", other],
        ["revoke", other, "--reason", "second thoughts"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "fedshield", "participants", *command, *remote],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [sys.executable, "-m", "fedshield", "participants", "revoke", other, "--reason", "x"]
        + remote,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode != 0 and "already revoked" in again.stderr
    assert "Traceback" not in again.stderr
    actions = [
        (e.action, e.actor) for e in _events(federation) if e.resource == f"participant/{other}"
    ]
    assert actions == [
        ("participant.quarantine", "admin"),
        ("participant.release", "admin"),
        ("participant.revoke", "admin"),
    ]


def _reissued_kit(
    federation: Federation, source: Path, name: str, out: Path, *, now: datetime, valid_days: int
) -> Path:
    """Copy the kit ``source`` to ``out`` with new keys and a certificate for ``name``
    from the federation CA, issued at ``now`` for ``valid_days``."""
    shutil.copytree(source, out)
    ca_key = load_private_key(federation.kits.ca_cert_path.parent / "ca.key")
    ca_cert = load_certificate(federation.kits.ca_cert_path)
    signing = ed25519.Ed25519PrivateKey.generate()
    key, cert = issue_certificate(
        ca_key,  # type: ignore[arg-type]
        ca_cert,
        name=name,
        organization=name,
        role="participant",
        now=now,
        valid_days=valid_days,
        signing_key=signing.public_key(),
    )
    write_certificate(out / "cert.pem", cert, overwrite=True)
    write_private_key(out / "key.pem", key, overwrite=True)
    write_private_key(out / "signing.key", signing, overwrite=True)
    source_name = Kit.load(source).name
    if source_name != name:
        kit_toml = out / "kit.toml"
        kit_toml.write_text(  # its name and organization
            kit_toml.read_text().replace(f'"{source_name}"', f'"{name}"')
        )
    return out


def _expired_kit(federation: Federation, name: str, out: Path) -> Path:
    """Copy ``name``'s kit with a certificate from the federation CA that expired."""
    # Issued three days ago for one day: it expired two days ago (five minutes' skew).
    source = federation.kits.participant_dirs[name]
    return _reissued_kit(federation, source, name, out, now=THREE_DAYS_AGO, valid_days=1)


def _stranger_kit(federation: Federation, name: str, out: Path) -> Path:
    """A participant kit with a valid certificate from the federation CA for ``name``,
    a name the federation never enrolled (copied from a real kit, key and all new)."""
    source = next(iter(federation.kits.participant_dirs.values()))
    return _reissued_kit(federation, source, name, out, now=datetime.now(UTC), valid_days=30)


@pytest.mark.timeout(400)
def test_an_expired_certificate_is_refused_with_a_clear_error(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    # A fake clock for provisioning: the federation (its CA) is three days old, so the
    # CA can issue a certificate that already expired.
    federation.kits = provision_federation(
        federation.config,
        out_dir=federation.root / "kits",
        base_dir=federation.root,
        now=THREE_DAYS_AGO,
        overwrite=True,
    )
    federation.start_coordinator()
    name = federation.names[0]
    expired = _expired_kit(federation, name, tmp_path / "expired-kit")

    # The agent checks its own kit first and says what is wrong before connecting.
    with pytest.raises(IdentityError, match="expired at") as info:
        Kit.load(expired)
    assert "new certificate" in info.value.hint
    agent = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedshield",
            "participant",
            "--kit",
            str(expired),
            "--coordinator",
            federation.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert agent.returncode == 3, agent.stderr  # IdentityError's exit code
    assert "expired at" in agent.stderr and "Traceback" not in agent.stderr

    # Presented anyway, the TLS handshake refuses it: the API is never reached.
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(expired / "ca.crt"))
    context.load_cert_chain(certfile=str(expired / "cert.pem"), keyfile=str(expired / "key.pem"))
    with (
        CoordinatorClient(
            federation.url,
            ssl_context=context,
            credentials=Credentials.from_kit(Kit.load(expired, now=THREE_DAYS_AGO)),
            max_retries=1,
        ) as client,
        pytest.raises(IdentityError) as refused,
    ):
        client.next_task(wait_s=0)
    assert not isinstance(refused.value, RejectedError)
    # TLS 1.3: the server checks the client certificate after the client's side of the
    # handshake, so the client sees the connection closed; the message says so and the
    # hint names expiry (the agent's own kit check above is the precise message).
    assert "does not accept this kit's certificate" in refused.value.message
    assert "expired" in refused.value.hint
    assert name not in federation.status()["available"]


# -- the RBAC matrix --------------------------------------------------------------------

POLICY = """version = 1
[roles.data-steward]
description = "reads the privacy ledger and the audit log for the DPO"
permissions = ["health:read", "status:read", "audit:read", "privacy_ledger:read"]
"""
STAFF = {"auditor-1": "auditor", "watcher": "observer", "steward": "data-steward"}
PARTICIPANT_ONLY = {"rounds", "updates", "receipts"}  # endpoints that also need an enrolled name


def _endpoints(head_sha3: str, role: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, permission, request options) for every endpoint of the API."""
    ghost = f"ghost-{role}"
    return [
        ("GET", "/v1/health", "health:read", {}),
        ("GET", "/v1/task", "rounds:read", {"params": {"wait_s": 0}}),
        ("GET", f"/v1/models/{head_sha3}", "models:read", {}),
        ("POST", "/v1/rounds/1/update", "updates:write", {"content": b""}),
        ("POST", "/v1/rounds/1/evaluation", "rounds:write", {"content": b"{}"}),
        ("POST", "/v1/rounds/1/decline", "rounds:write", {"params": {"attempt": 1}}),
        ("POST", "/v1/rounds/1/secagg/report", "updates:write", {"content": b"{}"}),
        ("POST", "/v1/rounds/1/secagg/refuse", "updates:write", {"params": {"attempt": 1}}),
        ("POST", "/v1/rounds/1/secagg/advertise", "updates:write", {"params": {"attempt": 1}}),
        ("GET", "/v1/rounds/1/receipt", "receipts:read", {}),
        ("GET", "/v1/status", "status:read", {}),
        ("GET", "/v1/participants", "participants:read", {}),
        (
            "POST",
            f"/v1/participants/{ghost}/revoke",
            "participants:revoke",
            {"json": {"reason": "matrix test"}},
        ),
        (
            "POST",
            f"/v1/participants/{ghost}/quarantine",
            "participants:quarantine",
            {"json": {"reason": "matrix test"}},
        ),
        ("POST", f"/v1/participants/{ghost}/release", "participants:release", {"json": {}}),
        (
            "POST",
            f"/v1/participants/{ghost}/enroll",
            "participants:enroll",
            {"json": {"certificate": "not a certificate"}},
        ),
        (
            "POST",
            "/v1/models/rollback",
            "models:rollback",
            {"json": {"version": 0, "reason": "matrix test"}},
        ),
        ("GET", "/v1/audit/export", "audit:read", {}),
        ("GET", "/v1/privacy", "privacy_ledger:read", {}),
    ]


@pytest.mark.timeout(300)
def test_rbac_matrix_every_endpoint_and_every_role(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    root = tmp_path / "rbac"
    root.mkdir()
    (root / "policy.toml").write_text(POLICY)
    federation = federation_factory(
        {
            "rounds": {"join_timeout_s": 600.0},
            "access": {
                "policy": "policy.toml",
                "kits": [{"name": n, "role": r} for n, r in STAFF.items()],
            },
        },
        name="rbac",
    )
    federation.start_coordinator()
    policy = load_policy(root / "policy.toml")
    head = federation.status()["head"]["sha3"]
    participant = next(n for n in federation.names if n not in STAFF)
    callers = {"admin": "admin", "participant": participant, **{r: n for n, r in STAFF.items()}}
    assert set(callers) == set(BUILTIN_ROLES) - {"coordinator"} | {"data-steward"}

    outcomes: dict[tuple[str, str], int] = {}
    for role, name in callers.items():
        with httpx.Client(
            base_url=federation.url,
            verify=client_ssl_context(federation.kit(name)),
            auth=EnvelopeAuth(Credentials.from_kit(federation.kit(name))),
            trust_env=False,
            timeout=15.0,
        ) as http:
            for method, path, permission, options in _endpoints(head, role):
                reply = http.request(method, path, **options)
                allowed = policy.decide(role, Permission.parse(permission)).allowed and (
                    role == "participant"
                    or Permission.parse(permission).resource not in PARTICIPANT_ONLY
                )
                where = f"{role} {method} {path}: {reply.status_code} {reply.text[:200]}"
                if allowed:
                    assert reply.status_code not in (401, 403), where
                    assert reply.status_code < 500, where
                else:
                    assert reply.status_code == 403, where
                    assert {"error", "hint"} <= set(reply.json()), where
                outcomes[(role, f"{method} {path}")] = reply.status_code

    # Allowed calls did their normal work.
    assert outcomes[("admin", "POST /v1/participants/ghost-admin/revoke")] == 200
    assert outcomes[("admin", "POST /v1/participants/ghost-admin/quarantine")] == 200
    assert outcomes[("admin", "POST /v1/participants/ghost-admin/release")] == 200
    assert outcomes[("admin", "POST /v1/models/rollback")] == 409  # version 0 is the head
    assert outcomes[("admin", "POST /v1/participants/ghost-admin/enroll")] == 400  # not a PEM
    assert outcomes[("auditor", "GET /v1/audit/export")] == 200
    assert outcomes[("participant", f"GET /v1/models/{head}")] == 200
    assert outcomes[("participant", "GET /v1/task")] == 204
    assert outcomes[("participant", "GET /v1/rounds/1/receipt")] == 404  # nothing committed
    assert outcomes[("auditor", f"GET /v1/models/{head}")] == 403  # never model weights

    # A participant certificate the federation CA issued for a name that was never
    # enrolled gets no model (nor anything else a participant may do), and is audited.
    stranger = _stranger_kit(federation, "stranger-1", root / "stranger")
    with httpx.Client(
        base_url=federation.url,
        verify=client_ssl_context(Kit.load(stranger)),
        auth=EnvelopeAuth(Credentials.from_kit(Kit.load(stranger))),
        trust_env=False,
        timeout=15.0,
    ) as http:
        for path in (f"/v1/models/{head}", "/v1/task", "/v1/rounds/1/receipt"):
            reply = http.get(path, params={"wait_s": 0} if path == "/v1/task" else None)
            assert reply.status_code == 403, (path, reply.text)
            assert "not a participant enrolled" in reply.json()["error"], reply.text

    # Every 403 is an access.deny entry naming the caller and the permission.
    denials = {
        (e.actor, str(e.resource), str(e.details["path"]))
        for e in _events(federation)
        if e.action == "access.deny"
    }
    for role, name in callers.items():
        for method, path, permission, _ in _endpoints(head, role):
            if outcomes[(role, f"{method} {path}")] == 403:
                assert (name, permission, path) in denials, (role, method, path)
    assert ("stranger-1", "models:read", f"/v1/models/{head}") in denials
    # The admin operations that succeeded are audited as allowed, with the caller.
    allows = [e for e in _events(federation) if e.action == "access.allow"]
    assert {("admin", "participants:revoke"), ("auditor-1", "audit:read")} <= {
        (e.actor, e.resource) for e in allows
    }


@pytest.mark.timeout(120)
def test_the_coordinator_certificate_cannot_be_used_as_a_client(
    federation_factory: FederationFactory,
) -> None:
    # The coordinator role's certificate is a server certificate (serverAuth only): the
    # TLS handshake refuses it as a client certificate, before any role check.
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    federation.start_coordinator()
    kit = federation.kit("coordinator")
    with (
        httpx.Client(
            base_url=f"https://{HOST}:{federation.port}",
            verify=client_ssl_context(kit),
            trust_env=False,
            timeout=10.0,
        ) as http,
        pytest.raises(httpx.TransportError),
    ):
        http.get("/v1/health")


@pytest.mark.timeout(240)
def test_a_participant_revoked_during_secure_aggregation_leaves_it_at_the_next_stage(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory(
        {
            "secure_aggregation": {"enabled": True, "stage_timeout_s": 30.0},
            "participants": {"count": 5},
            "rounds": {"count": 1, "min_available": 5, "final_evaluation": False},
        }
    )
    federation.start_coordinator()
    honest, victim = federation.names[:4], federation.names[4]
    federation.start_participants(honest)
    with federation.client(victim, max_retries=3) as client:
        task = _fit_task(client, victim)
        assert task.secure_aggregation
        meta = FitMeta(
            round=task.round, attempt=task.attempt, model_sha3=task.model_sha3, num_examples=50
        )
        client.push_fit_report(meta)

        def advertise() -> Any:
            got = client.next_task(wait_s=1.0)
            return got if got is not None and got.kind == "secagg" else None

        setup = wait_until(advertise, timeout_s=90.0, what="the advertise stage")
        assert setup.stage == "advertise" and victim in setup.secagg["certificates"]
        with _admin(federation) as admin:
            admin.revoke(victim, reason="compromised during the round")
        # Its answer to the stage is refused; the stage does not wait 30 s for it.
        reply = client.post_raw(
            f"/v1/rounds/{meta.round}/secagg/advertise", b"{}", params={"attempt": meta.attempt}
        )
        assert reply.status_code == 403 and "revoked" in reply.json()["error"]
    codes = federation.wait_exit({n: federation.participants[n] for n in honest}, timeout_s=150)
    assert codes == dict.fromkeys(honest, 0), federation.describe()
    # (An attempt may have failed first if the agents were slow to start.)
    (record,) = [r for r in federation.round_log() if r.kind == "fit" and r.status == "committed"]
    assert sorted(record.answered) == sorted(honest)
    assert victim in record.dropped
    (finished,) = [e for e in _events(federation) if e.action == "secagg.finish"]
    assert sorted(finished.details["survivors"]) == sorted(honest)  # type: ignore[arg-type]
    refused = finished.details["refused"][victim]  # type: ignore[index]
    assert refused == "advertise: certificate revoked: compromised during the round"


@pytest.mark.timeout(400)
def test_a_site_provisioned_from_its_own_csr_takes_part_over_tls(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    federation.start_coordinator()
    name = federation.names[-1]
    site = tmp_path / "site-kit"

    def fedshield(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "fedshield", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done

    fedshield(
        "identity", "csr", "--name", name, "--org", name, "--federation",
        federation.config.federation.name, "--out", str(site),
    )  # fmt: skip
    signed = fedshield(
        "identity", "sign", str(site / "request.csr"), "--ca",
        str(federation.kits.ca_cert_path.parent), "--out", str(tmp_path / "cert.pem"),
    )  # fmt: skip
    assert f"signed {name}" in signed.stdout
    shutil.copy(tmp_path / "cert.pem", site / "cert.pem")
    shutil.copy(federation.kits.ca_cert_path, site / "ca.crt")
    kit = Kit.load(site)
    with CoordinatorClient.from_kit(federation.url, kit) as client:
        assert client.next_task(wait_s=0) is None  # accepted as the enrolled participant
    assert name in federation.status()["available"]


@pytest.mark.timeout(400)
def test_a_rotated_certificate_replaces_the_old_one_over_tls(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    federation = federation_factory({"rounds": {"join_timeout_s": 600.0}})
    federation.start_coordinator()
    name = federation.names[0]
    kit_dir = federation.kits.participant_dirs[name]
    old_kit = tmp_path / "old-kit"
    shutil.copytree(kit_dir, old_kit)  # the site's agent still runs with the old kit
    done = subprocess.run(
        [
            sys.executable, "-m", "fedshield", "identity", "rotate", "--kit", str(kit_dir),
            "--ca", str(federation.kits.ca_cert_path.parent), "--workdir",
            str(federation.workdir), "--grace-s", "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with (
        CoordinatorClient.from_kit(federation.url, Kit.load(old_kit)) as old,
        CoordinatorClient.from_kit(federation.url, Kit.load(kit_dir)) as new,
    ):
        wait_until(
            lambda: old._client.get("/v1/task", params={"wait_s": 0}).status_code == 403,
            timeout_s=20.0,
            what="the old certificate to be refused",
        )
        assert new.next_task(wait_s=0) is None  # the new certificate works
    # A rotation is not a revocation of the participant.
    with _admin(federation) as admin:
        rows = {r["name"]: r for r in admin.participants()}
    assert rows[name]["status"] == "enrolled"


# -- enrollment at run time ---------------------------------------------------------------


def _fedshield(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fedshield", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def _site_csr(federation: Federation, name: str, out: Path) -> Path:
    _fedshield(
        "identity", "csr", "--name", name, "--org", f"Org {name}", "--federation",
        federation.config.federation.name, "--out", str(out),
    )  # fmt: skip
    return out / "request.csr"


@pytest.mark.timeout(900)
def test_sites_enrolled_while_the_coordinator_runs_join_a_round(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    # Long deadlines: after round 1 the next round stays open (nobody answers it), so the
    # coordinator keeps serving the admin calls below however slow the machine is.
    federation = federation_factory(
        {"rounds": {"join_timeout_s": 600.0, "fit_timeout_s": 600.0, "count": 3}}
    )
    federation.start_coordinator()
    ca = str(federation.kits.ca_cert_path.parent)
    a = federation.names[0]
    site_b, site_c = tmp_path / "hospital-b", tmp_path / "hospital-c"
    csr_b = _site_csr(federation, "hospital-b", site_b)
    csr_c = _site_csr(federation, "hospital-c", site_c)
    assert b"PRIVATE" not in csr_b.read_bytes()

    # A participant may not enroll anyone: 403, and the refusal is audited.
    with (
        AdminClient.for_kit(federation.kit(a), federation.url, timeout_s=10.0) as intruder,
        pytest.raises(RejectedError) as refused,
    ):
        intruder.enroll("hospital-b", b"-----BEGIN CERTIFICATE-----\n")
    assert refused.value.status == 403
    denied = [
        e
        for e in _events(federation)
        if e.action == "access.deny" and e.resource == "participants:enroll"
    ]
    assert [(e.actor, e.details["path"]) for e in denied] == [
        (a, "/v1/participants/hospital-b/enroll")
    ]

    # The admin enrolls hospital-b over the admin API: the certificate lands beside the
    # CSR, which is the site's kit directory; the site adds ca.crt and has a kit.
    remote = ["--kit", str(federation.kits.admin_dir), "--coordinator", federation.url]
    done = _fedshield(
        "participants", "enroll", "hospital-b", "--csr", str(csr_b), "--ca", ca,
        "--organization", "Org hospital-b", *remote,
    )  # fmt: skip
    assert "enrolled hospital-b (Org hospital-b)" in done.stdout
    shutil.copy(federation.kits.ca_cert_path, site_b / "ca.crt")
    kit_b = Kit.load(site_b)

    # hospital-c is enrolled from another process on the coordinator host (--workdir):
    # the running coordinator accepts it within its refresh bound.
    _fedshield(
        "participants", "enroll", "hospital-c", "--csr", str(csr_c), "--ca", ca,
        "--workdir", str(federation.workdir), "--config", str(federation.config_path),
    )  # fmt: skip
    shutil.copy(federation.kits.ca_cert_path, site_c / "ca.crt")
    kit_c = Kit.load(site_c)

    options: dict[str, Any] = {"max_retries": 0, "timeout_s": 10.0, "reconnect_timeout_s": 10.0}
    with (
        federation.client(a) as client_a,
        CoordinatorClient.from_kit(federation.url, kit_b, **options) as client_b,
        CoordinatorClient.from_kit(federation.url, kit_c, **options) as client_c,
    ):
        assert client_b.next_task(wait_s=0) is None  # accepted at once (the API enrolled it)
        wait_until(
            lambda: client_c._client.get("/v1/task", params={"wait_s": 0}).status_code == 204,
            timeout_s=20.0,
            what="the locally enrolled site to be accepted",
        )
        client_a.next_task(wait_s=0)
        # Three reachable (min_available = 3): the round opens with the two new sites.
        tasks = {
            name: _fit_task(client, name)
            for name, client in ((a, client_a), ("hospital-b", client_b), ("hospital-c", client_c))
        }
        for name, client in ((a, client_a), ("hospital-b", client_b), ("hospital-c", client_c)):
            _upload_zero(client, tasks[name])
        status = federation.wait_status(
            lambda s: any(h["status"] == "committed" for h in s["history"]),
            timeout_s=120.0,
            what="the round with the enrolled sites to commit",
        )
    (committed,) = [h for h in status["history"] if h["status"] == "committed"]
    assert committed["answered"] == sorted([a, "hospital-b", "hospital-c"])

    # Both enrollments are audit entries: actor, participant, certificate; never a key.
    enrolled = {
        e.resource: e
        for e in _events(federation)
        if e.action == "participant.enroll" and e.outcome == "ok"
    }
    assert set(enrolled) == {"participant/hospital-b", "participant/hospital-c"}
    assert enrolled["participant/hospital-b"].actor == "admin"
    assert enrolled["participant/hospital-c"].actor.startswith("cli:")
    for event, kit in zip(enrolled.values(), (kit_b, kit_c), strict=True):
        cert = load_certificate(kit.cert_path)
        assert event.details["serial"] == format(cert.serial_number, "x")
        assert "PRIVATE" not in str(event.details)

    with _admin(federation) as admin:
        rows = {r["name"]: r for r in admin.participants()}
        assert rows["hospital-b"]["status"] == "enrolled"
        assert rows["hospital-b"]["organization"] == "Org hospital-b"
        admin.revoke("hospital-c", reason="left the consortium")
        # Bodies are bounded: a certificate over 16 KiB is refused, a body over 64 KiB
        # is refused before it is read.
        for size, status in ((20_000, 400), (100_000, 413)):
            with pytest.raises(RejectedError) as too_big:
                admin.enroll("hospital-f", b"A" * size)
            assert too_big.value.status == status

    # The roster is durable: after a restart the enrolled site is still a participant.
    federation.kill_coordinator()
    federation.start_coordinator()
    with CoordinatorClient.from_kit(federation.url, kit_b, **options) as client_b:
        task = client_b.next_task(wait_s=0)  # 204 or a task: accepted, not refused
        assert task is None or task.kind in ("fit", "evaluate")
    remote = ["--kit", str(federation.kits.admin_dir), "--coordinator", federation.url]

    # A revoked name is not enrolled again, whatever the new CSR: the CLI says how.
    again = _fedshield(
        "participants", "enroll", "hospital-c", "--csr",
        str(_site_csr(federation, "hospital-c", tmp_path / "hospital-c-again")), "--ca", ca,
        *remote, ok=False,
    )  # fmt: skip
    assert again.returncode != 0, again.stderr
    assert "never enrolled again" in again.stderr and "NEW-NAME" in again.stderr
    assert not (tmp_path / "hospital-c-again" / "cert.pem").exists()  # nothing handed out
    # A CSR for another name is refused before anything reaches the coordinator.
    wrong = _fedshield(
        "participants", "enroll", "hospital-d", "--csr",
        str(_site_csr(federation, "hospital-e", tmp_path / "hospital-e")), "--ca", ca,
        *remote, ok=False,
    )  # fmt: skip
    assert wrong.returncode == 3 and "not 'hospital-d'" in wrong.stderr
