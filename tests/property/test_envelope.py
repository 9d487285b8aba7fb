"""Properties of the message envelope: one signature means exactly one message."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.transport.envelope import (
    EnvelopeRejected,
    NonceCache,
    ReplyEnvelope,
    RequestEnvelope,
    canonical,
    open_reply,
    open_request,
    seal,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
hex32 = st.binary(min_size=16, max_size=16).map(bytes.hex)
hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
texts = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=3, max_size=60)

requests = st.builds(
    RequestEnvelope,
    federation=names,
    sender=names,
    round=st.integers(0, 2**40),
    type=texts,
    query=st.text(max_size=40),
    nonce=hex32,
    ts_ms=st.integers(0, 2**50),
    payload_sha3=hex64,
)

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "federation": names,
    "sender": names,
    "round": st.integers(0, 2**40),
    "type": texts,
    "query": st.text(max_size=40),
    "nonce": hex32,
    "ts_ms": st.integers(0, 2**50),
    "payload_sha3": hex64,
}


@given(requests, st.sampled_from(sorted(FIELD_VALUES)), st.data())
@settings(max_examples=200, deadline=None)
def test_any_single_field_change_breaks_the_signature(
    envelope: RequestEnvelope, field: str, data: st.DataObject
) -> None:
    value = data.draw(FIELD_VALUES[field].filter(lambda v: v != getattr(envelope, field)))
    sealed = seal(envelope, KEY)
    assert open_request(sealed, KEY.public_key()) == envelope
    changed = envelope.model_copy(update={field: value})
    signature = sealed.split(".")[1]
    forged = f"{seal(changed, KEY).split('.')[0]}.{signature}"
    with pytest.raises(EnvelopeRejected):
        open_request(forged, KEY.public_key())


@given(requests, requests)
@settings(max_examples=200, deadline=None)
def test_canonical_encoding_is_injective(a: RequestEnvelope, b: RequestEnvelope) -> None:
    assert (canonical(a) == canonical(b)) == (a == b)


@given(requests)
@settings(max_examples=100, deadline=None)
def test_canonical_encoding_round_trips(envelope: RequestEnvelope) -> None:
    assert RequestEnvelope.model_validate_json(canonical(envelope)) == envelope


@given(requests, st.integers(100, 599), hex32)
@settings(max_examples=100, deadline=None)
def test_a_reply_opens_as_a_reply_only(envelope: RequestEnvelope, status: int, nonce: str) -> None:
    reply = ReplyEnvelope(**envelope.model_dump(), status=status, in_reply_to=nonce)
    sealed = seal(reply, KEY)
    assert open_reply(sealed, KEY.public_key()) == reply
    with pytest.raises(EnvelopeRejected):
        open_request(sealed, KEY.public_key())


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 30), st.integers(0, 5)),
        max_size=80,
    )
)
@settings(max_examples=200, deadline=None)
def test_nonce_cache_evicts_by_time_only_and_stays_bounded(
    events: list[tuple[str, int, int]],
) -> None:
    """Model check: a nonce is refused iff it was accepted and its time is not up."""
    window_ms = 10_000
    cache = NonceCache(window_s=window_ms / 1000, max_per_signer=6, max_total=12)
    accepted: dict[tuple[str, int], int] = {}  # (signer, nonce) -> expiry
    now = 0
    for signer, nonce_id, step_s in events:
        now += step_s * 1000
        nonce = f"{nonce_id:032x}"
        live = {k: e for k, e in accepted.items() if e >= now}
        try:
            cache.remember(signer, nonce, ts_ms=now, now_ms=now)
        except EnvelopeRejected as exc:
            if exc.reason == "replay":
                assert (signer, nonce_id) in live
            else:
                assert exc.reason == "rate_limited"
                assert (signer, nonce_id) not in live
                mine = sum(1 for s, _ in live if s == signer)
                assert mine >= 6 or len(live) >= 12
        else:
            assert (signer, nonce_id) not in live
            accepted[(signer, nonce_id)] = now + window_ms
        assert len(cache) <= 12
