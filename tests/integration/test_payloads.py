"""Specification of how the coordinator treats hostile update payloads, end to end.

One provisioned participant is an attacker driven by hand (its real kit, over mutual
TLS); the others are real participant processes. The attacker long-polls for its fit
task like an honest site, then uploads something malformed. Each refusal is a 4xx with
a JSON ``{"error", "hint"}`` body that names the problem (422 for wrong shapes and
non-finite values, 413 for a body over ``transport.max_payload_bytes``), and the round
still commits with the honest participants only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from fedshield.tensors import encode
from fedshield.transport.client import CoordinatorClient
from fedshield.transport.messages import FitMeta, TaskMessage

if TYPE_CHECKING:
    from conftest import Federation, FederationFactory

pytestmark = pytest.mark.timeout(150)

# The digits model encodes to ~19.5 KB: this limit lets honest updates through.
LIMIT_BYTES = 24 * 1024


def fit_task(client: CoordinatorClient, *, round_number: int, timeout_s: float) -> TaskMessage:
    """Long-poll like an agent until the fit task of ``round_number`` arrives (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = client.next_task(wait_s=2.0)
        if task is not None and task.kind == "fit" and task.round == round_number:
            return task
        assert task is None or task.kind == "fit", f"unexpected task {task!r}"
    pytest.fail(f"no fit task for round {round_number} within {timeout_s:g} s")


def meta_for(task: TaskMessage) -> str:
    """The X-Fedshield-Meta header an honest site would send for ``task``."""
    assert task.round is not None and task.attempt is not None and task.model_sha3 is not None
    return FitMeta(
        round=task.round, attempt=task.attempt, model_sha3=task.model_sha3, num_examples=50
    ).model_dump_json()


def error_of(reply: httpx.Response) -> str:
    """The error message of a refusal, checking the body is the documented JSON shape."""
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"v", "error", "hint"}
    assert body["error"]
    return str(body["error"])


def committed_entry(status: dict[str, Any], round_number: int) -> dict[str, Any] | None:
    """The history entry of ``round_number`` once it committed, else None."""
    for entry in status["history"]:
        if entry["kind"] == "fit" and entry["round"] == round_number:
            if entry["status"] == "committed":
                return dict(entry)
    return None


def wait_committed(
    federation: Federation, round_number: int, *, timeout_s: float
) -> dict[str, Any]:
    """Wait until ``round_number`` committed; return its history entry."""
    status = federation.wait_status(
        lambda s: committed_entry(s, round_number) is not None,
        timeout_s=timeout_s,
        what=f"round {round_number} to commit",
    )
    entry = committed_entry(status, round_number)
    assert entry is not None
    return entry


@pytest.fixture
def federation(federation_factory: FederationFactory) -> Iterator[Federation]:
    """A running coordinator, every participant but the last one as a real process."""
    fed = federation_factory(
        {
            "rounds": {"count": 3, "fit_timeout_s": 10.0, "final_evaluation": False},
            "transport": {"max_payload_bytes": LIMIT_BYTES},
        }
    )
    fed.start_coordinator()
    fed.start_participants(fed.names[:-1])
    yield fed


def test_malformed_updates_are_refused_and_rounds_commit_without_the_attacker(
    federation: Federation,
) -> None:
    attacker = federation.names[-1]
    honest = list(federation.names[:-1])
    head_sizes: list[int] = []

    with federation.client(attacker) as client:
        # (a) Round 1: one tensor with the wrong shape.
        task = fit_task(client, round_number=1, timeout_s=60.0)
        assert task.model_sha3 is not None
        model = client.fetch_model(task.model_sha3)
        head_sizes.append(len(encode(model)))
        name = sorted(model)[-1]
        bad = {k: np.zeros_like(v) for k, v in model.items()}
        bad[name] = np.zeros((model[name].shape[0] - 1, *model[name].shape[1:]), np.float32)
        reply = client.push_raw(1, encode(bad), meta_for(task))
        assert reply.status_code == 422, reply.text
        message = error_of(reply)
        assert name in message and "shape" in message
        assert str(tuple(model[name].shape)) in message
        # A refused site may not try again in the same round, not even with a good update.
        reply = client.push_raw(
            1, encode({k: np.zeros_like(v) for k, v in model.items()}), meta_for(task)
        )
        assert reply.status_code == 409, reply.text

        entry = wait_committed(federation, 1, timeout_s=30.0)
        assert entry["answered"] == honest
        assert attacker in entry["dropped"]

        # (b) Round 2: the right shapes, but a NaN inside.
        task = fit_task(client, round_number=2, timeout_s=30.0)
        assert task.model_sha3 is not None
        model = client.fetch_model(task.model_sha3)
        poisoned = {k: np.zeros_like(v) for k, v in model.items()}
        name = sorted(model)[0]
        poisoned[name].flat[0] = np.nan
        reply = client.push_raw(2, encode(poisoned), meta_for(task))
        assert reply.status_code == 422, reply.text
        message = error_of(reply)
        assert name in message and "NaN" in message

        entry = wait_committed(federation, 2, timeout_s=30.0)
        assert entry["answered"] == honest
        assert attacker in entry["dropped"]

        # (c) Round 3: a body over the size limit, declared and streamed (chunked).
        task = fit_task(client, round_number=3, timeout_s=30.0)
        assert task.model_sha3 is not None
        head_sizes.append(len(encode(client.fetch_model(task.model_sha3))))
        oversize = b"\0" * (2 * LIMIT_BYTES)

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"\0" * (LIMIT_BYTES // 4)

        # Streamed in chunks (no Content-Length): cut off at the limit while reading.
        reply = client._client.post(
            "/v1/rounds/3/update",
            content=chunks(),
            headers={
                "x-fedshield-meta": meta_for(task),
                "content-type": "application/octet-stream",
            },
        )
        assert reply.status_code == 413, reply.text
        message = error_of(reply)
        assert str(LIMIT_BYTES) in message and "limit" in message

        # A refused payload puts the site out of the round: the same body again, with a
        # declared length this time, is refused before a byte of it is read.
        reply = client.push_raw(3, oversize, meta_for(task))
        assert reply.status_code == 409, reply.text

        # Not counted as an answer: the round closes with the others.
        entry = wait_committed(federation, 3, timeout_s=30.0)
        assert entry["answered"] == honest
        assert attacker in entry["dropped"]

        # The federation ends; the attacker is told like everyone else.
        end = None
        for _ in range(10):
            end = client.next_task(wait_s=2.0)
            if end is not None and end.kind != "fit":
                break
        assert end is not None and end.kind == "finished"

    # Honest updates fitted under the limit all along (the limit was the binding one).
    assert all(size < LIMIT_BYTES < 2 * size for size in head_sizes)
    versions = federation.registry()
    assert [v for v, _ in versions] == [0, 1, 2, 3]
    assert len({sha for _, sha in versions}) == 4
    assert federation.coordinator is not None
    codes = federation.wait_exit(
        {"coordinator": federation.coordinator, **federation.participants}, timeout_s=40.0
    )
    assert codes == dict.fromkeys(codes, 0)
    for record in federation.round_log():
        assert attacker not in record.answered


def test_malformed_update_for_another_round_leaves_the_open_round_alone(
    federation_factory: FederationFactory,
) -> None:
    # Regression: such an upload used to be recorded as a refusal in the open round,
    # which failed round 1 attempt 1 at once. One site is enough to open a round.
    fed = federation_factory(
        {
            "participants": {"count": 2},
            "rounds": {"min_participants": 1, "min_available": 1, "per_round": 1},
        }
    )
    fed.start_coordinator()
    site = fed.names[0]
    with fed.client(site) as client:
        task = fit_task(client, round_number=1, timeout_s=30.0)
        assert task.model_sha3 is not None
        model = client.fetch_model(task.model_sha3)
        poisoned = {k: np.full_like(v, np.nan) for k, v in model.items()}
        stale = json.loads(meta_for(task))
        stale["round"] = 7
        reply = client.push_raw(7, encode(poisoned), json.dumps(stale))
        # Refused (as a conflict or as a bad payload, both name the problem) ...
        assert reply.status_code in (409, 422), reply.text
        assert error_of(reply)
        # ... and round 1 is untouched: the site still owes the same attempt of it.
        again = client.next_task(wait_s=0.0)
        assert again is not None
        assert (again.round, again.attempt) == (task.round, task.attempt)
        assert [r.status for r in fed.round_log()] == ["running"]
