"""Specification of signed, replay-proof messages over real TLS on 127.0.0.1.

The first tests talk to a real coordinator process (the module's ``coordinator``
fixture) with hand-made envelopes: a replay, a wrong signature, the wrong round, the
wrong federation, a stale timestamp, a missing envelope and a body that is not the one
signed are each refused with a 4xx JSON error and leave a ``message.rejected`` audit
entry. The last tests run a coordinator in this process, because they need it to
misbehave: one that serves a tampered model, one that names a model it did not sign,
and one that signs its replies with a key its certificate does not bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.errors import RoundFailedError, TransportError
from fedshield.federation.agent import load_participant_file, run_agent
from fedshield.federation.coordinator import Coordinator, utcnow
from fedshield.federation.service import CoordinatorService
from fedshield.identity import Kit, client_ssl_context, server_ssl_context
from fedshield.storage import Database, EventLog
from fedshield.tensors import decode, encode
from fedshield.transport.client import CoordinatorClient, RejectedError
from fedshield.transport.envelope import (
    ENVELOPE_HEADER,
    ModelStatement,
    RequestEnvelope,
    payload_sha3,
    seal,
    sign_model,
)
from fedshield.transport.server import _PeerCertH11Protocol, create_app

if TYPE_CHECKING:
    from conftest import Federation, FederationFactory

HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(300)


def envelope_header(
    kit: Kit,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    round_number: int = 0,
    federation: str | None = None,
    ts_ms: int | None = None,
    key: Ed25519PrivateKey | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """A hand-made envelope header for one request, with any field set on purpose."""
    envelope = RequestEnvelope(
        federation=federation or kit.federation,
        sender=kit.name,
        round=round_number,
        type=f"{method} {path}",
        query=query,
        nonce=nonce or np.random.default_rng().bytes(16).hex(),
        ts_ms=ts_ms if ts_ms is not None else round(time.time() * 1000),
        payload_sha3=payload_sha3(body),
    )
    return {ENVELOPE_HEADER: seal(envelope, key or kit.signing_key())}


def raw_client(federation: Federation, name: str) -> httpx.Client:
    """mTLS as ``name`` but no envelope of its own: the test writes the header."""
    return httpx.Client(
        base_url=federation.url,
        verify=client_ssl_context(federation.kit(name)),
        timeout=30.0,
        trust_env=False,
    )


def rejections(federation: Federation) -> list[tuple[str, str, dict[str, Any]]]:
    """``(actor, resource, details)`` of every ``message.rejected`` audit entry."""
    db = Database.for_workdir(federation.workdir)
    try:
        events = EventLog(db).list()
    finally:
        db.close()
    return [
        (e.actor, e.resource, dict(e.details)) for e in events if e.action == "message.rejected"
    ]


def assert_audited(federation: Federation, before: int, reason: str, actor: str) -> None:
    new = rejections(federation)[before:]
    assert [(a, d["reason"]) for a, _, d in new] == [(actor, reason)], new


def test_a_signed_request_is_accepted_once_and_its_replay_is_refused(
    coordinator: Federation,
) -> None:
    name = coordinator.names[0]
    kit = coordinator.kit(name)
    headers = envelope_header(kit, "GET", "/v1/health")
    before = len(rejections(coordinator))
    with raw_client(coordinator, name) as http:
        first = http.get("/v1/health", headers=headers)
        assert first.status_code == 200, first.text
        assert ENVELOPE_HEADER in first.headers  # the reply is signed too
        replay = http.get("/v1/health", headers=headers)
    assert replay.status_code == 409
    assert "replayed" in replay.json()["error"]
    assert ENVELOPE_HEADER in replay.headers
    assert_audited(coordinator, before, "replay", name)


def test_a_wrong_signature_is_refused_without_saying_what_was_wrong(
    coordinator: Federation,
) -> None:
    name = coordinator.names[0]
    kit = coordinator.kit(name)
    before = len(rejections(coordinator))
    forged = envelope_header(
        kit, "GET", "/v1/task", query="wait_s=0", key=Ed25519PrivateKey.generate()
    )
    with raw_client(coordinator, name) as http:
        reply = http.get("/v1/task", params={"wait_s": 0}, headers=forged)
    assert reply.status_code == 401
    body = reply.json()
    assert set(body) == {"v", "error", "hint"}
    assert body["error"] == "the message envelope is malformed or its signature does not verify"
    assert_audited(coordinator, before, "bad_signature", name)

    # Another participant's key, even a genuine one, is not this certificate's key.
    other = coordinator.kit(coordinator.names[1])
    stolen = envelope_header(kit, "GET", "/v1/health", key=other.signing_key())
    with raw_client(coordinator, name) as http:
        reply = http.get("/v1/health", headers=stolen)
    assert reply.status_code == 401


def test_a_message_for_the_wrong_round_is_refused(coordinator: Federation) -> None:
    name = coordinator.names[0]
    kit = coordinator.kit(name)
    body = b'{"reason":"x"}'
    path = "/v1/rounds/5/decline"
    before = len(rejections(coordinator))
    with raw_client(coordinator, name) as http:
        # Round 5 in the path and the envelope, but the coordinator has no round 5 open.
        headers = envelope_header(kit, "POST", path, query="attempt=1", body=body, round_number=5)
        reply = http.post(path, params={"attempt": 1}, content=body, headers=headers)
        assert reply.status_code == 409
        assert "for round 5" in reply.json()["error"]
        assert_audited(coordinator, before, "wrong_round", name)
        # An envelope for round 4 does not cover a request for round 5.
        headers = envelope_header(kit, "POST", path, query="attempt=1", body=body, round_number=4)
        reply = http.post(path, params={"attempt": 1}, content=body, headers=headers)
    assert reply.status_code == 400
    assert_audited(coordinator, before + 1, "wrong_round", name)


def test_a_message_for_another_federation_is_refused(coordinator: Federation) -> None:
    name = coordinator.names[0]
    kit = coordinator.kit(name)
    before = len(rejections(coordinator))
    headers = envelope_header(kit, "GET", "/v1/health", federation="another-federation")
    with raw_client(coordinator, name) as http:
        reply = http.get("/v1/health", headers=headers)
    assert reply.status_code == 403
    assert "another-federation" in reply.json()["error"]
    assert_audited(coordinator, before, "wrong_federation", name)


def test_a_stale_or_future_timestamp_is_refused(coordinator: Federation) -> None:
    name = coordinator.names[0]
    before = len(rejections(coordinator))
    # The real client, with a clock ten minutes slow: its reply is still verified.
    with (
        CoordinatorClient.from_kit(
            coordinator.url, coordinator.kit(name), max_retries=0, clock=lambda: time.time() - 600
        ) as client,
        pytest.raises(RejectedError) as info,
    ):
        client.next_task(wait_s=0)
    assert info.value.status == 401
    assert "old" in info.value.message and "window of 120 s" in info.value.message
    assert "clock" in info.value.hint
    assert_audited(coordinator, before, "stale", name)

    kit = coordinator.kit(name)
    future = envelope_header(kit, "GET", "/v1/health", ts_ms=round((time.time() + 600) * 1000))
    with raw_client(coordinator, name) as http:
        reply = http.get("/v1/health", headers=future)
    assert reply.status_code == 401
    assert_audited(coordinator, before + 1, "future", name)


def test_no_envelope_no_service(coordinator: Federation) -> None:
    before = len(rejections(coordinator))
    with raw_client(coordinator, "admin") as http:
        reply = http.get("/v1/status")
    assert reply.status_code == 401
    assert "no signed envelope" in reply.json()["error"]
    assert_audited(coordinator, before, "missing", "admin")


def test_a_request_without_a_body_must_sign_the_empty_body(coordinator: Federation) -> None:
    name = coordinator.names[0]
    kit = coordinator.kit(name)
    before = len(rejections(coordinator))
    headers = envelope_header(kit, "GET", "/v1/health", body=b"a body that was never sent")
    with raw_client(coordinator, name) as http:
        reply = http.get("/v1/health", headers=headers)
    assert reply.status_code == 400
    assert "does not match the hash" in reply.json()["error"]
    assert_audited(coordinator, before, "payload_mismatch", name)


def test_the_real_client_signs_and_verifies(coordinator: Federation) -> None:
    with coordinator.client(coordinator.names[0]) as client:
        assert client.next_task(wait_s=0) is None
        assert client.coordinator_key is not None
        coordinator_kit = coordinator.kit("coordinator")
        assert (
            client.coordinator_key.public_bytes_raw()
            == coordinator_kit.signing_key().public_key().public_bytes_raw()
        )


# -- a coordinator in this process, made to misbehave ----------------------------------


@contextlib.contextmanager
def serving(service: CoordinatorService, kit: Kit) -> Iterator[str]:
    """Serve ``service`` over mutual TLS on 127.0.0.1 from a thread; yield its URL."""
    config = uvicorn.Config(
        create_app(service),
        http=_PeerCertH11Protocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    config.load()
    config.ssl = server_ssl_context(kit)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen()

    async def main() -> None:
        driver = asyncio.create_task(service.drive(lambda: None))
        try:
            await server.serve(sockets=[sock])
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"https://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class TamperedModel(CoordinatorService):
    """A compromised coordinator: serves other weights than the model it signed."""

    def model_bytes(self, sha3: str) -> bytes | None:
        data = super().model_bytes(sha3)
        if data is None:
            return None
        weights = decode(data, max_bytes=len(data))
        first = sorted(weights)[0]
        weights[first] = weights[first] + np.float32(0.5)
        return encode(weights)


class UnsignedModel(CoordinatorService):
    """A coordinator that names a model it did not sign (another key signed it)."""

    def model_signature(self, statement: ModelStatement) -> str:
        return sign_model(statement, Ed25519PrivateKey.generate())


ONE_SITE = {
    "participants": {"count": 2},
    "rounds": {
        "count": 1,
        "min_participants": 1,
        "min_available": 1,
        "max_retries": 0,
        "final_evaluation": False,
        "fit_timeout_s": 60.0,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("service_class", "says"),
    [
        (TamperedModel, "does not match its announced SHA3"),
        (UnsignedModel, "is not signed by this federation's coordinator"),
    ],
)
def test_a_participant_refuses_a_model_the_coordinator_did_not_sign(
    federation_factory: FederationFactory, service_class: type[CoordinatorService], says: str
) -> None:
    fed = federation_factory(ONE_SITE)
    coordinator_kit = fed.kit("coordinator")
    core = Coordinator(fed.config, workdir=fed.workdir, base_dir=fed.root, now=utcnow())
    service = service_class(core, config=fed.config, signing_key=coordinator_kit.signing_key())
    name = fed.names[0]
    kit_dir = fed.kits.participant_dirs[name]
    said: list[str] = []
    try:
        with serving(service, coordinator_kit) as url:
            with pytest.raises(RoundFailedError):
                run_agent(
                    Kit.load(kit_dir),
                    load_participant_file(kit_dir),
                    coordinator_url=url,
                    on_message=said.append,
                    max_polls=200,
                )
        events = EventLog(core.db).list()
    finally:
        core.close()
    assert not any("trained" in line for line in said), said
    assert any("declining" in line and says in line for line in said), said
    refusals = [e for e in events if e.action == "round.refusal" and e.actor == name]
    assert refusals and says in str(refusals[0].details["reason"])


@pytest.mark.slow
def test_a_reply_signed_with_the_wrong_key_is_a_clear_transport_error(
    federation_factory: FederationFactory,
) -> None:
    fed = federation_factory()
    core = Coordinator(fed.config, workdir=fed.workdir, base_dir=fed.root, now=utcnow())
    # The TLS identity is the coordinator's, but the replies are signed by another key.
    service = CoordinatorService(core, config=fed.config, signing_key=Ed25519PrivateKey.generate())
    try:
        with (
            serving(service, fed.kit("coordinator")) as url,
            CoordinatorClient.from_kit(url, fed.kit(fed.names[0]), max_retries=0) as client,
            pytest.raises(TransportError) as info,
        ):
            client.next_task(wait_s=0)
    finally:
        core.close()
    assert not isinstance(info.value, RejectedError)
    assert "failed verification" in info.value.message


@pytest.mark.slow
def test_a_body_an_endpoint_reads_must_be_the_signed_one(
    federation_factory: FederationFactory,
) -> None:
    fed = federation_factory(ONE_SITE)
    core = Coordinator(fed.config, workdir=fed.workdir, base_dir=fed.root, now=utcnow())
    service = CoordinatorService(
        core, config=fed.config, signing_key=fed.kit("coordinator").signing_key()
    )
    name = fed.names[0]
    kit = fed.kit(name)
    try:
        with serving(service, fed.kit("coordinator")) as url:
            with CoordinatorClient.from_kit(url, kit, max_retries=0) as client:
                deadline = time.monotonic() + 60
                task = None
                while task is None or task.kind != "fit":
                    assert time.monotonic() < deadline, "no fit task"
                    task = client.next_task(wait_s=2)
            assert task.round is not None and task.attempt is not None
            path = f"/v1/rounds/{task.round}/decline"
            query = f"attempt={task.attempt}"
            signed, sent = b'{"reason":"signed"}', b'{"reason":"swaps"}'
            headers = envelope_header(
                kit, "POST", path, query=query, body=signed, round_number=task.round
            )
            with httpx.Client(
                base_url=url, verify=client_ssl_context(kit), timeout=30.0, trust_env=False
            ) as http:
                reply = http.post(
                    path, params={"attempt": task.attempt}, content=sent, headers=headers
                )
            assert reply.status_code == 400
            assert "does not match the hash" in reply.json()["error"]
            # The endpoint never got the whole body: the decline was not taken.
            core.expects(name, kind="fit", round=task.round, attempt=task.attempt, now=utcnow())
        events = EventLog(core.db).list()
    finally:
        core.close()
    rejected = [e for e in events if e.action == "message.rejected"]
    assert [(e.actor, e.details["reason"]) for e in rejected] == [(name, "payload_mismatch")]
    assert not [e for e in events if e.action == "round.refusal"]
