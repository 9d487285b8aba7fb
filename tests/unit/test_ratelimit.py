"""The refusal limiter with a fake clock: buckets, windows, the actor cap, conservation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.config import parse_config
from fedshield.errors import ConfigError
from fedshield.transport._server_envelope import RefusalGate
from fedshield.transport.ratelimit import (
    OVERFLOW_ACTOR,
    RefusalLimiter,
    RefusalLimits,
    SuppressedSummary,
    Verdict,
)


def _limiter(**limits: float) -> RefusalLimiter:
    return RefusalLimiter(RefusalLimits(**limits))  # type: ignore[arg-type]


def test_a_burst_is_audited_then_the_first_refusal_over_it_opens_a_window() -> None:
    limiter = _limiter(per_minute=6.0, burst=3, summary_s=60.0)
    verdicts = [limiter.admit("mallory", "policy", now_s=100.0) for _ in range(6)]
    assert verdicts == [
        Verdict.AUDIT,
        Verdict.AUDIT,
        Verdict.AUDIT,
        Verdict.LIMIT_FIRST,
        Verdict.SUPPRESS,
        Verdict.SUPPRESS,
    ]


def test_the_bucket_refills_at_the_configured_rate() -> None:
    limiter = _limiter(per_minute=6.0, burst=2, summary_s=60.0)  # one token per 10 s
    assert limiter.admit("a", "policy", now_s=0.0) is Verdict.AUDIT
    assert limiter.admit("a", "policy", now_s=0.0) is Verdict.AUDIT
    # 9.9 s refill less than a token: over the limit.
    assert limiter.admit("a", "policy", now_s=9.9) is Verdict.LIMIT_FIRST
    # Quiet for the whole refill time (20 s): the window closes, the bucket is full.
    (summary,) = limiter.due(now_s=30.0)
    assert summary.count == 1
    assert limiter.admit("a", "policy", now_s=30.0) is Verdict.AUDIT
    assert limiter.admit("a", "policy", now_s=30.0) is Verdict.AUDIT
    assert limiter.admit("a", "policy", now_s=30.0) is Verdict.LIMIT_FIRST


def test_actors_have_their_own_buckets() -> None:
    limiter = _limiter(per_minute=1.0, burst=1)
    assert limiter.admit("a", "policy", now_s=0.0) is Verdict.AUDIT
    assert limiter.admit("a", "policy", now_s=0.0) is Verdict.LIMIT_FIRST
    assert limiter.admit("b", "policy", now_s=0.0) is Verdict.AUDIT


def test_a_hammering_actor_gets_a_summary_at_the_latest_every_summary_s() -> None:
    limiter = _limiter(per_minute=1.0, burst=1, summary_s=10.0)
    limiter.admit("m", "policy", now_s=0.0)
    for i in range(1, 50):
        limiter.admit("m", "policy" if i % 2 else "revoked", now_s=i * 0.1)
    assert limiter.due(now_s=10.0) == []  # opened at 0.1: due 10 s later
    (summary,) = limiter.due(now_s=10.2)
    assert summary == SuppressedSummary(
        actor="m",
        count=49,
        first_s=0.1,
        last_s=pytest.approx(4.9),  # type: ignore[arg-type]
        opened_s=0.1,
        closed_s=10.2,
        reasons=(("policy", 25), ("revoked", 24)),
    )
    # The next window starts with a new marker: the switch stays visible.
    assert limiter.admit("m", "policy", now_s=10.5) is Verdict.LIMIT_FIRST


def test_drain_summarizes_every_open_window() -> None:
    limiter = _limiter(per_minute=1.0, burst=1, summary_s=600.0)
    for actor in ("a", "b"):
        for _ in range(4):
            limiter.admit(actor, "policy", now_s=1.0)
    drained = limiter.drain(now_s=2.0)
    assert sorted((s.actor, s.count) for s in drained) == [("a", 3), ("b", 3)]
    assert limiter.drain(now_s=3.0) == []


def test_reason_codes_are_bounded() -> None:
    limiter = _limiter(per_minute=1.0, burst=1)
    limiter.admit("m", "x", now_s=0.0)
    for i in range(40):
        limiter.admit("m", f"code-{i}" + "z" * 100, now_s=0.0)
    (summary,) = limiter.drain(now_s=1.0)
    reasons = dict(summary.reasons)
    assert len(reasons) == 17  # 16 codes and "other"
    assert sum(reasons.values()) == 40
    assert all(len(code) <= 64 for code in reasons)


def test_at_the_cap_new_actors_share_one_bucket_and_cannot_evade_the_limit() -> None:
    limiter = _limiter(per_minute=1.0, burst=2, max_actors=3)
    for actor in ("a", "b", "c"):
        limiter.admit(actor, "policy", now_s=0.0)
    assert limiter.tracked == 3
    # A thousand fresh identities get two audited refusals between them, not 2000.
    verdicts = [limiter.admit(f"sybil-{i}", "policy", now_s=0.0) for i in range(1000)]
    assert verdicts.count(Verdict.AUDIT) == 2
    assert verdicts.count(Verdict.LIMIT_FIRST) == 1
    assert limiter.tracked == 3
    (summary,) = limiter.drain(now_s=1.0)
    assert summary.actor == OVERFLOW_ACTOR
    assert summary.count == 998
    # A tracked actor keeps its own bucket: the flood did not push it out.
    assert limiter.key_of("a") == "a"


def test_a_limited_actor_is_not_forgotten_until_its_window_is_summarized_and_refilled() -> None:
    limiter = _limiter(per_minute=60.0, burst=2, summary_s=5.0, max_actors=16)
    for _ in range(3):
        limiter.admit("m", "policy", now_s=0.0)
    assert limiter.due(now_s=1.0) == []  # window open, not due: kept
    assert limiter.tracked == 1
    (summary,) = limiter.due(now_s=5.0)
    assert summary.count == 1
    # Five seconds at one token a second refilled its two tokens: nothing to lose.
    assert limiter.tracked == 0


def test_a_clock_that_steps_back_refills_nothing() -> None:
    limiter = _limiter(per_minute=60.0, burst=1)
    assert limiter.admit("a", "policy", now_s=100.0) is Verdict.AUDIT
    assert limiter.admit("a", "policy", now_s=50.0) is Verdict.LIMIT_FIRST


@pytest.mark.parametrize(
    ("field", "value"),
    [("per_minute", 0.0), ("burst", 0), ("summary_s", -1.0), ("max_actors", 0)],
)
def test_limits_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be"):
        RefusalLimits(**{field: value})  # type: ignore[arg-type]


def test_the_config_has_safe_defaults_and_refuses_bad_values() -> None:
    transport = parse_config({}).transport
    assert transport.refusals_per_minute == 60.0
    assert transport.refusal_burst == 60
    assert transport.refusal_summary_s == 60.0
    assert transport.refusal_max_actors == 4096
    with pytest.raises(ConfigError, match=r"transport\.refusal_burst: .*got 0"):
        parse_config({"transport": {"refusal_burst": 0}})
    with pytest.raises(ConfigError, match=r"transport\.refusals_per_minute: .*got -1"):
        parse_config({"transport": {"refusals_per_minute": -1}})
    with pytest.raises(ConfigError, match=r"transport\.refusal_max_actors"):
        parse_config({"transport": {"refusal_max_actors": 1}})
    with pytest.raises(ConfigError, match=r"transport\.refusal_limit: unknown key"):
        parse_config({"transport": {"refusal_limit": 3}})


_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["policy", "revoked", "wrong_round"]),
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
        st.booleans(),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    events=_EVENTS,
    burst=st.integers(min_value=1, max_value=5),
    per_minute=st.floats(min_value=0.5, max_value=600.0),
    summary_s=st.floats(min_value=1.0, max_value=20.0),
    max_actors=st.integers(min_value=1, max_value=4),
)
def test_counts_are_conserved_audited_plus_summarized_is_refused(
    events: list[tuple[str, str, float, bool]],
    burst: int,
    per_minute: float,
    summary_s: float,
    max_actors: int,
) -> None:
    limiter = RefusalLimiter(
        RefusalLimits(
            per_minute=per_minute, burst=burst, summary_s=summary_s, max_actors=max_actors
        )
    )
    now = 0.0
    audited = 0
    markers: dict[str, int] = {}
    summaries: list[SuppressedSummary] = []
    for actor, reason, step, sweep in events:
        now += step
        verdict = limiter.admit(actor, reason, now_s=now)
        audited += verdict is Verdict.AUDIT
        if verdict is Verdict.LIMIT_FIRST:
            key = limiter.key_of(actor)
            markers[key] = markers.get(key, 0) + 1
        if sweep:
            summaries += limiter.due(now_s=now)
        assert limiter.tracked <= max_actors
    summaries += limiter.drain(now_s=now)
    assert audited + sum(s.count for s in summaries) == len(events) == limiter.seen
    # One marker per window, and every window is summarized once.
    assert sum(markers.values()) == len(summaries)
    for summary in summaries:
        assert summary.count == sum(n for _, n in summary.reasons) >= 1
        assert summary.opened_s <= summary.first_s <= summary.last_s <= summary.closed_s


def test_the_gate_writes_one_marker_per_window_and_summaries_as_metadata() -> None:
    entries: list[tuple[str, str, str, str, dict[str, object]]] = []
    now = [1_700_000_000.0]
    gate = RefusalGate(
        RefusalLimiter(RefusalLimits(per_minute=1.0, burst=2, summary_s=30.0)),
        lambda *entry: entries.append(entry),
        clock=lambda: now[0],
    )

    async def scenario() -> list[bool]:
        admitted = [await gate.admit("m", "policy", "GET /v1/audit/export") for _ in range(10)]
        await gate.flush()  # not due yet
        now[0] += 31.0
        await gate.flush()
        admitted.append(await gate.admit("m", "revoked", "GET /v1/task"))  # a new window
        gate.drain()
        return admitted

    admitted = asyncio.run(scenario())
    assert admitted == [True, True] + [False] * 9
    assert [(e[0], e[1], e[3]) for e in entries] == [
        ("m", "access.rate_limited", "limited"),
        ("m", "access.refusals_suppressed", "suppressed"),
        ("m", "access.rate_limited", "limited"),
        ("m", "access.refusals_suppressed", "suppressed"),
    ]
    first, second = entries[1][4], entries[3][4]
    assert first["count"] == 8
    assert first["reasons"] == {"policy": 8}
    assert first["window_start"] == "2023-11-14T22:13:20+00:00"
    assert second["count"] == 1
    assert second["reasons"] == {"revoked": 1}
