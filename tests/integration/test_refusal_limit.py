"""The refusal limit over real mutual TLS (a coordinator process on 127.0.0.1).

* A caller with a valid certificate hammering an endpoint its role may not use gets
  403s (each one audited) up to its burst, then 429s with the same JSON shape; the
  audit log holds at most its burst (plus refill) denials, one ``access.rate_limited``
  marker and, written when the coordinator stops, a summary whose count is the rest.
  A well-behaved participant of the same federation is unaffected: its round commits.
* Refused envelopes share the limit: past it the answer is a signed 429 and the
  suppressed refusals are summarized window by window while the coordinator runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from conftest import wait_until

from fedshield.identity import client_ssl_context
from fedshield.storage import Database, EventLog, EventRecord
from fedshield.transport.client import Credentials, EnvelopeAuth
from fedshield.transport.envelope import ENVELOPE_HEADER

if TYPE_CHECKING:
    from conftest import Federation, FederationFactory

pytestmark = pytest.mark.slow

HAMMER = 200
BURST = 5


def _events(federation: Federation) -> list[EventRecord]:
    db = Database.for_workdir(federation.workdir)
    try:
        return EventLog(db).list()
    finally:
        db.close()


def _client(federation: Federation, name: str, *, envelope: bool) -> httpx.Client:
    kit = federation.kit(name)
    return httpx.Client(
        base_url=federation.url,
        verify=client_ssl_context(kit),
        auth=EnvelopeAuth(Credentials.from_kit(kit)) if envelope else None,
        trust_env=False,
        timeout=15.0,
    )


def _of(events: list[EventRecord], actor: str, action: str) -> list[EventRecord]:
    return [e for e in events if e.actor == actor and e.action == action]


@pytest.mark.timeout(300)
def test_a_caller_hammering_a_forbidden_endpoint_is_limited_and_summarized(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory(
        {
            "rounds": {"count": 1},
            "access": {"kits": [{"name": "watcher", "role": "observer"}]},
            "transport": {
                "refusal_burst": BURST,
                "refusals_per_minute": 1.0,
                # Only the shutdown drain writes the summary in this test.
                "refusal_summary_s": 600.0,
            },
        }
    )
    federation.start_coordinator()
    sites = tuple(n for n in federation.names if n != "watcher")
    federation.start_participants(sites)
    statuses: list[int] = []
    with _client(federation, "watcher", envelope=True) as http:
        assert http.get("/v1/status").status_code == 200  # allowed: never limited
        for _ in range(HAMMER):
            reply = http.get("/v1/audit/export")  # observers may not read the audit log
            statuses.append(reply.status_code)
            assert set(reply.json()) == {"v", "error", "hint"}, reply.text
            assert ENVELOPE_HEADER in reply.headers  # a 429 is signed like any reply
        assert http.get("/v1/status").status_code == 200  # still not limited
    denied, limited = statuses.count(403), statuses.count(429)
    assert denied + limited == HAMMER, statuses
    assert BURST <= denied <= BURST + 2  # a slow loop may refill a token or two
    assert statuses[:BURST] == [403] * BURST
    assert statuses[-1] == 429

    # The participants' federation runs to its end; the coordinator exits on its own.
    assert federation.coordinator is not None
    codes = federation.wait_exit(
        {"coordinator": federation.coordinator, **federation.participants}, timeout_s=240.0
    )
    assert codes == dict.fromkeys(codes, 0), federation.describe()
    assert [v for v, _ in federation.registry()] == [0, 1]

    events = _events(federation)
    denials = _of(events, "watcher", "access.deny")
    assert len(denials) == denied
    markers = _of(events, "watcher", "access.rate_limited")
    summaries = _of(events, "watcher", "access.refusals_suppressed")
    assert len(markers) == len(summaries) >= 1
    assert sum(int(s.details["count"]) for s in summaries) == limited
    assert all(s.details["reasons"] == {"policy": s.details["count"]} for s in summaries)
    assert all(e.action != "access.deny" for e in events if e.actor in sites)


@pytest.mark.timeout(300)
def test_refused_envelopes_share_the_limit_and_are_summarized_while_running(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory(
        {
            "rounds": {"join_timeout_s": 600.0},
            "transport": {
                "refusal_burst": BURST,
                "refusals_per_minute": 1.0,
                "refusal_summary_s": 1.0,
            },
        }
    )
    federation.start_coordinator()
    name = federation.names[0]
    statuses: list[int] = []
    with _client(federation, name, envelope=False) as http:
        for _ in range(HAMMER // 2):
            reply = http.get("/v1/status")  # no envelope at all
            statuses.append(reply.status_code)
            assert set(reply.json()) == {"v", "error", "hint"}, reply.text
            assert ENVELOPE_HEADER in reply.headers
    refused, limited = statuses.count(401), statuses.count(429)
    assert refused + limited == HAMMER // 2, statuses
    assert BURST <= refused <= BURST + 2

    # Another caller (and the same one, with envelopes) is served as before.
    with _client(federation, federation.names[1], envelope=True) as other:
        assert other.get("/v1/task", params={"wait_s": 0}).status_code in (200, 204)

    def summarized() -> list[EventRecord] | None:
        events = _events(federation)
        summaries = _of(events, name, "access.refusals_suppressed")
        count = sum(int(s.details["count"]) for s in summaries)
        return events if count == limited else None

    events = wait_until(summarized, timeout_s=30.0, what="every suppressed refusal summarized")
    rejected = _of(events, name, "message.rejected")
    assert len(rejected) == refused
    assert {e.details["reason"] for e in rejected} == {"missing"}
    markers = _of(events, name, "access.rate_limited")
    summaries = _of(events, name, "access.refusals_suppressed")
    assert len(markers) == len(summaries) >= 1
    for summary in summaries:
        assert summary.details["reasons"] == {"missing": summary.details["count"]}
        assert summary.details["first"] <= summary.details["last"]
