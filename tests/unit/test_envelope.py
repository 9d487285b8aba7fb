"""Specification of the message envelope (fedshield.transport.envelope), without sockets."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.transport.envelope import (
    EMPTY_SHA3,
    MODEL_DOMAIN,
    REPLY_DOMAIN,
    REQUEST_DOMAIN,
    EnvelopeRejected,
    ModelStatement,
    NonceCache,
    ReplyEnvelope,
    RequestEnvelope,
    UntrustedModelError,
    canonical,
    check_fresh,
    open_reply,
    open_request,
    payload_sha3,
    peek_nonce,
    round_of_path,
    seal,
    sign_model,
    verify_model,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def request(**changes: object) -> RequestEnvelope:
    fields: dict[str, object] = {
        "federation": "fed",
        "sender": "site-1",
        "round": 3,
        "type": "POST /v1/rounds/3/update",
        "query": "",
        "nonce": "ab" * 16,
        "ts_ms": 1_700_000_000_000,
        "payload_sha3": EMPTY_SHA3,
    }
    fields.update(changes)
    return RequestEnvelope.model_validate(fields)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_sealed_request_opens_with_the_signers_key_only() -> None:
    sealed = seal(request(), KEY)
    assert open_request(sealed, KEY.public_key()) == request()
    with pytest.raises(EnvelopeRejected) as info:
        open_request(sealed, OTHER.public_key())
    assert info.value.reason == "bad_signature" and info.value.status == 401


def test_a_request_signature_is_not_a_reply_signature() -> None:
    # Same JSON, other domain: a request can never be presented as a reply, or back.
    reply = ReplyEnvelope(**request().model_dump(), status=200, in_reply_to="")
    with pytest.raises(EnvelopeRejected):
        open_request(seal(reply, KEY), KEY.public_key())
    with pytest.raises(EnvelopeRejected):
        open_reply(seal(request(), KEY), KEY.public_key())
    assert len({REQUEST_DOMAIN, REPLY_DOMAIN, MODEL_DOMAIN}) == 3


def test_the_signature_failure_message_is_the_same_whatever_is_wrong() -> None:
    sealed = seal(request(), KEY)
    data, sig = sealed.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    flipped_sig = f"{data}.{b64(bytes(raw))}"
    other_body = f"{b64(canonical(request(round=4)))}.{sig}"
    messages = set()
    for header in (flipped_sig, other_body, "x.y", "a" * 5000, f"{data}.{sig}.z", "%%.%%"):
        with pytest.raises(EnvelopeRejected) as info:
            open_request(header, KEY.public_key())
        assert info.value.reason == "bad_signature"
        messages.add(info.value.message)
    assert len(messages) == 1


def test_a_missing_envelope_says_how_to_fix_it() -> None:
    for header in (None, ""):
        with pytest.raises(EnvelopeRejected) as info:
            open_request(header, KEY.public_key())
        assert info.value.reason == "missing" and info.value.status == 401
        assert "CoordinatorClient" in info.value.hint


def test_a_non_canonical_encoding_of_a_signed_message_is_refused() -> None:
    # Signed by the right key, but with spaces / duplicate keys: not the one encoding.
    fields = request().model_dump()
    spaced = json.dumps(fields, sort_keys=True).encode()
    dup = canonical(request())[:-1] + b',"round":3}'
    for data in (spaced, dup):
        header = f"{b64(data)}.{b64(KEY.sign(REQUEST_DOMAIN + data))}"
        with pytest.raises(EnvelopeRejected):
            open_request(header, KEY.public_key())


def test_fields_are_validated_strictly() -> None:
    with pytest.raises(ValueError):
        request(nonce="ab" * 8)  # 64 bits is too few
    with pytest.raises(ValueError):
        request(round=-1)
    with pytest.raises(ValueError):
        request(federation="fed\x00")
    with pytest.raises(ValueError):
        request(extra=1)


def test_peek_nonce_reads_only_well_formed_nonces() -> None:
    assert peek_nonce(seal(request(), KEY)) == "ab" * 16
    assert peek_nonce(None) == ""
    data = b'{"nonce":"../../etc"}'
    assert peek_nonce(f"{b64(data)}.{b64(bytes(64))}") == ""


def test_round_of_path() -> None:
    assert round_of_path("/v1/task") == 0
    assert round_of_path("/v1/models/" + "a" * 64) == 0
    assert round_of_path("/v1/rounds/12/update") == 12
    assert round_of_path("/v1/rounds/7") == 7
    for bad in ("/v1/rounds/03/update", "/v1/rounds/+3/update", "/v1/rounds/x/update"):
        with pytest.raises(EnvelopeRejected) as info:
            round_of_path(bad)
        assert info.value.status == 400


def test_freshness_window_both_ways() -> None:
    check_fresh(1_000_000, now_ms=1_000_000 + 120_000, window_s=120)
    check_fresh(1_000_000, now_ms=1_000_000 - 120_000, window_s=120)
    with pytest.raises(EnvelopeRejected) as info:
        check_fresh(1_000_000, now_ms=1_000_000 + 120_001, window_s=120)
    assert info.value.reason == "stale"
    with pytest.raises(EnvelopeRejected) as info:
        check_fresh(1_000_000, now_ms=1_000_000 - 120_001, window_s=120)
    assert info.value.reason == "future"


def test_nonce_cache_refuses_a_replay_within_the_window_and_forgets_after() -> None:
    cache = NonceCache(window_s=120)
    cache.remember("a", "00" * 16, ts_ms=0, now_ms=0)
    with pytest.raises(EnvelopeRejected) as info:
        cache.remember("a", "00" * 16, ts_ms=0, now_ms=119_000)
    assert info.value.reason == "replay" and info.value.status == 409
    cache.remember("b", "00" * 16, ts_ms=0, now_ms=0)  # per signer
    cache.evict_expired(120_001)
    assert len(cache) == 0


def test_nonce_cache_is_bounded_and_refuses_rather_than_forgets() -> None:
    cache = NonceCache(window_s=10, max_per_signer=3, max_total=4)
    for i in range(3):
        cache.remember("a", f"{i:032x}", ts_ms=0, now_ms=0)
    with pytest.raises(EnvelopeRejected) as info:
        cache.remember("a", f"{9:032x}", ts_ms=0, now_ms=0)
    assert info.value.reason == "rate_limited" and info.value.status == 429
    cache.remember("b", f"{1:032x}", ts_ms=0, now_ms=0)
    with pytest.raises(EnvelopeRejected):
        cache.remember("c", f"{1:032x}", ts_ms=0, now_ms=0)  # total bound
    # ... and the old nonces are still refused: nothing was forgotten early.
    with pytest.raises(EnvelopeRejected) as info:
        cache.remember("a", f"{0:032x}", ts_ms=0, now_ms=5_000)
    assert info.value.reason == "replay"
    # Once their time is up they leave, and room is made.
    cache.remember("c", f"{1:032x}", ts_ms=10_001, now_ms=10_001)
    assert len(cache) == 1


def test_nonce_cache_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        NonceCache(window_s=0)
    with pytest.raises(ValueError):
        NonceCache(window_s=1, max_per_signer=10, max_total=5)


def test_model_statement_signature() -> None:
    statement = ModelStatement(federation="fed", round=2, model_sha3="c" * 64, model_version=1)
    signature = sign_model(statement, KEY)
    verify_model(statement, signature, KEY.public_key())
    for changed in (
        statement.model_copy(update={"round": 3}),
        statement.model_copy(update={"model_version": 2}),
        statement.model_copy(update={"model_sha3": "d" * 64}),
        statement.model_copy(update={"federation": "other"}),
    ):
        with pytest.raises(UntrustedModelError):
            verify_model(changed, signature, KEY.public_key())
    for bad in (None, "", "!!", sign_model(statement, OTHER)):
        with pytest.raises(UntrustedModelError):
            verify_model(statement, bad, KEY.public_key())


def test_payload_hash_of_empty_body_and_of_a_view() -> None:
    assert payload_sha3(b"") == EMPTY_SHA3 == hashlib.sha3_256(b"").hexdigest()
    data = bytearray(b"x" * 1000)
    assert payload_sha3(memoryview(data)) == payload_sha3(bytes(data))
