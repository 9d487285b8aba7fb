"""Regression tests for the review of the coordinator's HTTP surface (real TLS, loopback).

Each test names the attack: a long-poll that never ends, a body the coordinator must not
buffer, a connection that never finishes its request head, a malformed path.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import TYPE_CHECKING

import httpx

from fedshield.identity import client_ssl_context
from fedshield.transport.client import Credentials, EnvelopeAuth
from fedshield.transport.messages import META_HEADER, FitMeta
from fedshield.transport.server import FIRST_REQUEST_S

if TYPE_CHECKING:
    from conftest import Federation

HOST = "127.0.0.1"


def _http(federation: Federation, name: str = "site-1") -> httpx.Client:
    kit = federation.kit(name)
    return httpx.Client(
        base_url=federation.url,
        verify=client_ssl_context(kit),
        auth=EnvelopeAuth(Credentials.from_kit(kit)),  # signed like every fedshield client
        timeout=20.0,
        trust_env=False,
    )


def test_a_nan_long_poll_is_refused_not_held_forever(coordinator: Federation) -> None:
    with _http(coordinator) as client:
        started = time.monotonic()
        response = client.get("/v1/task", params={"wait_s": "nan"})
    assert response.status_code == 400
    assert "finite" in response.json()["error"]
    assert time.monotonic() - started < 5.0


def test_an_upload_nobody_asked_for_is_refused_before_its_body_is_read(
    coordinator: Federation,
) -> None:
    meta = FitMeta(round=1, attempt=1, model_sha3="0" * 64, num_examples=10)
    with _http(coordinator) as client:
        response = client.post(
            "/v1/rounds/1/update",
            content=b"\0" * (8 * 2**20),
            headers={META_HEADER: meta.model_dump_json()},
        )
    assert response.status_code == 409
    # The envelope check refuses it first: round 1 is not open (see docs/messages.md).
    assert "no round is open" in response.json()["error"]


def test_a_malformed_path_gets_our_error_shape(coordinator: Federation) -> None:
    with _http(coordinator) as client:
        response = client.post("/v1/rounds/not-a-number/update", content=b"")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"v", "error", "hint"}


def test_a_connection_that_never_finishes_its_request_head_is_closed(
    coordinator: Federation,
) -> None:
    context = client_ssl_context(coordinator.kit("site-1"))
    assert coordinator.port is not None
    with socket.create_connection((HOST, coordinator.port), timeout=5.0) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
            tls.settimeout(FIRST_REQUEST_S + 10.0)
            started = time.monotonic()
            try:
                data = tls.recv(1024)
            except (ConnectionError, ssl.SSLError):
                data = b""
            waited = time.monotonic() - started
    assert data == b""  # closed, no response
    assert waited < FIRST_REQUEST_S + 5.0
