"""Specification of the coordinator's transport security, over real TLS on 127.0.0.1.

Who may talk to the coordinator is decided by the TLS handshake: TLS 1.3 only, and a
client certificate from the federation CA is required. Plain HTTP, no certificate and a
certificate from another CA never reach the API; among callers that do, the role in the
certificate decides what they may read (deny by default).
"""

from __future__ import annotations

import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from fedshield.errors import ConfigError, IdentityError, TransportError
from fedshield.identity import (
    create_ca,
    identity_from_der,
    issue_certificate,
    write_certificate,
    write_private_key,
)
from fedshield.storage import Database, EventLog
from fedshield.transport.client import CoordinatorClient, Credentials, RejectedError

if TYPE_CHECKING:
    from conftest import Federation

HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(120)


def tls13_client_context(ca_path: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts the federation CA and presents nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(ca_path))
    return context


@pytest.fixture(scope="module")
def impostor_context(
    coordinator: Federation, tmp_path_factory: pytest.TempPathFactory
) -> ssl.SSLContext:
    """A client that trusts the real CA but presents a look-alike certificate.

    The certificate names an enrolled participant, with the right role and federation,
    but it was issued by another CA with the same name.
    """
    folder = tmp_path_factory.mktemp("impostor")
    now = datetime.now(UTC)
    ca_key, ca_cert = create_ca(coordinator.config.federation.name, now=now)
    name = coordinator.names[0]
    key, cert = issue_certificate(
        ca_key, ca_cert, name=name, organization=name, role="participant", now=now
    )
    write_certificate(folder / "cert.pem", cert)
    write_private_key(folder / "key.pem", key)
    context = tls13_client_context(coordinator.kits.ca_cert_path)
    context.load_cert_chain(certfile=str(folder / "cert.pem"), keyfile=str(folder / "key.pem"))
    return context


def test_certificate_from_another_ca_is_refused_at_the_handshake(
    coordinator: Federation, impostor_context: ssl.SSLContext
) -> None:
    with httpx.Client(verify=impostor_context, trust_env=False, timeout=10.0) as http:
        with pytest.raises(httpx.TransportError):
            http.get(f"{coordinator.url}/v1/task", params={"wait_s": 0})

    # Through the participant client: refused below HTTP, so never a 4xx from the API.
    with (
        CoordinatorClient(
            coordinator.url,
            ssl_context=impostor_context,
            credentials=Credentials.from_kit(coordinator.kit(coordinator.names[0])),
            max_retries=0,
        ) as client,
        pytest.raises((IdentityError, TransportError)) as info,
    ):
        client.status()
    assert not isinstance(info.value, RejectedError), "the API itself must never be reached"

    # The coordinator never saw a participant: nobody is available, nothing was logged.
    status = coordinator.status()
    assert status["available"] == []
    assert status["phase"] == "waiting"
    db = Database.for_workdir(coordinator.workdir)
    try:
        events = EventLog(db).list()
    finally:
        db.close()
    assert {e.action for e in events} <= {
        "coordinator.start",
        "transport.listen",  # how the coordinator is reached (TLS 1.3, client certs)
        "policy.load",  # the access policy in force
        "model.commit",
        "security.plain_aggregation",  # this federation runs without SecAgg+
        "security.no_dp",  # ... and its sites' default is training without DP
        "access.allow",  # the admin's status call above (audited once per round)
    }
    assert {e.actor for e in events if e.action.startswith("access.")} <= {"admin"}
    assert not [e for e in events if coordinator.names[0] in f"{e.actor} {e.resource} {e.details}"]


@pytest.mark.timeout(60)
def test_participant_client_with_foreign_certificate_fails_fast_with_identity_error(
    coordinator: Federation, impostor_context: ssl.SSLContext
) -> None:
    # The agent's long-poll keeps retrying while the coordinator is unreachable; a
    # refused certificate "will not heal" (client docstring) and must end it at once.
    started = time.monotonic()
    with (
        CoordinatorClient(
            coordinator.url,
            ssl_context=impostor_context,
            credentials=Credentials.from_kit(coordinator.kit(coordinator.names[0])),
            max_retries=0,
            backoff_base_s=0.1,
            backoff_max_s=0.5,
            reconnect_timeout_s=3.0,
        ) as client,
        pytest.raises(IdentityError),
    ):
        client.next_task(wait_s=0)
    assert time.monotonic() - started < 3.0


def test_plain_http_is_refused(coordinator: Federation) -> None:
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        with pytest.raises(httpx.TransportError):
            http.get(f"http://{HOST}:{coordinator.port}/v1/health")

    # Raw bytes of a plain request get no HTTP reply: the server speaks only TLS.
    with socket.create_connection((HOST, coordinator.port), timeout=10.0) as raw:
        raw.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            reply = raw.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")

    # ... and the refusal did not hurt the service.
    assert coordinator.status()["federation"] == coordinator.config.federation.name


def test_client_without_certificate_is_refused(coordinator: Federation) -> None:
    context = tls13_client_context(coordinator.kits.ca_cert_path)
    with httpx.Client(verify=context, trust_env=False, timeout=10.0) as http:
        with pytest.raises(httpx.TransportError):
            http.get(f"{coordinator.url}/v1/health")

    with (
        CoordinatorClient(
            coordinator.url,
            ssl_context=context,
            credentials=Credentials.from_kit(coordinator.kit("admin")),
            max_retries=0,
        ) as client,
        pytest.raises((IdentityError, TransportError)) as info,
    ):
        client.status()
    assert not isinstance(info.value, RejectedError), "the API itself must never be reached"


def test_status_is_for_the_admin_not_for_participants(coordinator: Federation) -> None:
    with coordinator.client("admin") as admin:
        status = admin.status()
    assert status["federation"] == coordinator.config.federation.name
    assert status["total_rounds"] == coordinator.config.rounds.count
    assert len(status["head"]["sha3"]) == 64

    name = coordinator.names[0]
    with coordinator.client(name) as participant:
        # The participant is a legitimate caller (health works) ...
        health = participant._client.get("/v1/health")
        assert health.status_code == 200
        # ... but the status endpoint is not for its role.
        reply = participant._client.get("/v1/status")
        assert reply.status_code == 403
        assert reply.headers["content-type"].startswith("application/json")
        assert "participant" in reply.json()["error"]
        with pytest.raises(RejectedError) as info:
            participant.status()
    assert info.value.status == 403

    # The admin is not a participant either: it cannot ask for work.
    with coordinator.client("admin") as admin:
        reply = admin._client.get("/v1/task", params={"wait_s": 0})
    assert reply.status_code == 403


def test_client_refuses_plain_http_urls(coordinator: Federation) -> None:
    context = tls13_client_context(coordinator.kits.ca_cert_path)
    with pytest.raises(ConfigError, match="https://"):
        CoordinatorClient(
            f"http://{HOST}:{coordinator.port}",
            ssl_context=context,
            credentials=Credentials.from_kit(coordinator.kit("admin")),
        )


def test_coordinator_negotiates_tls_1_3_and_nothing_older(coordinator: Federation) -> None:
    kit = coordinator.kit("admin")
    context = tls13_client_context(kit.ca_path)
    context.load_cert_chain(certfile=str(kit.cert_path), keyfile=str(kit.key_path))
    with (
        socket.create_connection((HOST, coordinator.port), timeout=10.0) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert identity_from_der(der).role == "coordinator"

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cafile=str(kit.ca_path))
    old.load_cert_chain(certfile=str(kit.cert_path), keyfile=str(kit.key_path))
    with socket.create_connection((HOST, coordinator.port), timeout=10.0) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname=HOST)
