"""Signed, replay-proof message envelopes between clients and the coordinator (sans-I/O).

Every request and every reply carries an envelope in the ``X-Fedshield-Envelope``
header: ``base64url(canonical JSON) "." base64url(Ed25519 signature)``. The JSON names
the federation, the sender, the round (``0`` for messages that are not about one round),
the message type (the HTTP method and the request path, e.g.
``POST /v1/rounds/3/update``), the raw query string, a 128-bit nonce, a timestamp in
milliseconds and the SHA3-256 of the body (an empty body hashes ``b""``). A reply also
names the HTTP status and the nonce of the request it answers, so a reply can never be
replayed to another request.

The signed bytes are a domain label (:data:`REQUEST_DOMAIN`, :data:`REPLY_DOMAIN`,
:data:`MODEL_DOMAIN`) followed by the canonical JSON: keys sorted, no whitespace, ASCII
only, values only strings and integers. A verifier checks the signature over the bytes
it received and then insists that they are the canonical encoding of what they parse
to, so one signature means exactly one message.

Who signs is never taken from a message: the coordinator reads the signer's key from
the TLS-verified client certificate, the client from the coordinator certificate it
verified against its federation CA (:func:`~fedshield.identity.signing_key_of`).

This module is pure: time (``now_ms``) and randomness (``nonce``) are parameters.

What misuse breaks:

* A verifier that trusts the sender key carried by a message accepts anything.
* :class:`NonceCache` forgets a nonce once its timestamp leaves the window; a verifier
  that accepts timestamps outside the same window (or whose clock jumps backwards by
  more than the window) accepts replays.
* Any check here that fails raises :class:`EnvelopeRejected`; a failed signature check
  tells nothing about which byte was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import re
from typing import Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedshield.errors import ProtocolError

__all__ = [
    "EMPTY_SHA3",
    "ENVELOPE_HEADER",
    "MAX_HEADER_CHARS",
    "MODEL_DOMAIN",
    "NONCE_BYTES",
    "REPLY_DOMAIN",
    "REQUEST_DOMAIN",
    "EnvelopeRejected",
    "ModelStatement",
    "NonceCache",
    "ReplyEnvelope",
    "RequestEnvelope",
    "UntrustedModelError",
    "canonical",
    "check_fresh",
    "digest_equal",
    "open_reply",
    "open_request",
    "payload_sha3",
    "peek_nonce",
    "round_of_path",
    "seal",
    "sign_model",
    "verify_model",
]

ENVELOPE_HEADER = "x-fedshield-envelope"
REQUEST_DOMAIN = b"fedshield/transport/v1/request\x00"
REPLY_DOMAIN = b"fedshield/transport/v1/reply\x00"
MODEL_DOMAIN = b"fedshield/transport/v1/model\x00"
NONCE_BYTES = 16
"""128 random bits per message."""
MAX_HEADER_CHARS = 4096
"""Longer envelope headers are refused before they are decoded."""
EMPTY_SHA3 = hashlib.sha3_256(b"").hexdigest()

_SIGNATURE_BYTES = 64
_HEX_NONCE = r"^[0-9a-f]{32}$"
_HEX_SHA3 = r"^[0-9a-f]{64}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ROUND_PATH = re.compile(r"^/v1/rounds/([^/]*)(?:/|$)")
_ROUND_DIGITS = re.compile(r"[1-9][0-9]{0,17}")
_MAX_TS_MS = 2**53


class EnvelopeRejected(ProtocolError):
    """A message failed a check: its envelope, its signature, its freshness or its body.

    ``reason`` is a short code for the audit log (``bad_signature``, ``replay``,
    ``stale``, ...) and ``status`` the HTTP status a server answers with. The message
    of a failed signature check is the same whatever was wrong with it.
    """

    def __init__(self, status: int, reason: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.reason = reason


class UntrustedModelError(ProtocolError):
    """A distributed model is not the one the coordinator signed: it must not be used."""


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[1] = 1
    federation: str = Field(pattern=_NAME)
    sender: str = Field(pattern=_NAME)
    round: int = Field(ge=0, le=_MAX_TS_MS)
    type: str = Field(min_length=3, max_length=1024)
    query: str = Field(default="", max_length=1024)
    nonce: str = Field(pattern=_HEX_NONCE)
    ts_ms: int = Field(ge=0, le=_MAX_TS_MS)
    payload_sha3: str = Field(pattern=_HEX_SHA3)


_E = TypeVar("_E", bound=_Envelope)


class RequestEnvelope(_Envelope):
    """What a client signs about one request.

    ``type`` is the method and the request path (``GET /v1/task``); ``query`` the raw
    query string; ``round`` the round in the path (``/v1/rounds/{round}/...``) or 0.
    """


class ReplyEnvelope(_Envelope):
    """What the coordinator signs about one reply: the request's fields plus these."""

    status: int = Field(ge=100, le=599)
    in_reply_to: str = Field(pattern=r"^([0-9a-f]{32})?$")
    """The nonce of the request answered; empty when the request carried none."""


class ModelStatement(BaseModel):
    """A coordinator's statement about a model it distributes.

    It says: ``model_sha3`` is version ``model_version`` of the federation's model,
    distributed in ``round``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[1] = 1
    federation: str = Field(pattern=_NAME)
    round: int = Field(ge=1, le=_MAX_TS_MS)
    model_sha3: str = Field(pattern=_HEX_SHA3)
    model_version: int = Field(ge=0, le=_MAX_TS_MS)


def canonical(message: BaseModel) -> bytes:
    """Return the canonical JSON of ``message``: sorted keys, no spaces, ASCII only."""
    return json.dumps(
        message.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload_sha3(data: bytes | bytearray | memoryview) -> str:
    """Return the hex SHA3-256 of a body (hashed in place, never copied)."""
    return hashlib.sha3_256(data).hexdigest()


def round_of_path(path: str) -> int:
    """Return the round a request path is about: ``/v1/rounds/{round}/...``, else 0.

    Raises
    ------
    EnvelopeRejected
        If the path is under ``/v1/rounds/`` but its round is not a positive integer
        written canonically (``3``, not ``03`` or ``+3``): the envelope and the route
        must read the same number.
    """
    match = _ROUND_PATH.match(path)
    if match is None:
        return 0
    segment = match.group(1)
    if not _ROUND_DIGITS.fullmatch(segment):
        raise EnvelopeRejected(
            400,
            "bad_round",
            "malformed request: the round in the path must be a positive integer",
        )
    return int(segment)


def seal(envelope: RequestEnvelope | ReplyEnvelope, key: Ed25519PrivateKey) -> str:
    """Sign ``envelope`` and return the header value ``json "." signature`` (base64url)."""
    domain = REPLY_DOMAIN if isinstance(envelope, ReplyEnvelope) else REQUEST_DOMAIN
    data = canonical(envelope)
    return f"{_b64(data)}.{_b64(key.sign(domain + data))}"


_BAD = "the message envelope is malformed or its signature does not verify"


def _split(header: str | None) -> tuple[bytes, bytes]:
    if header is None or header == "":
        raise EnvelopeRejected(
            401,
            "missing",
            "the request carries no signed envelope (X-Fedshield-Envelope)",
            hint="Every request must be signed with the kit's signing key; use the "
            "fedshield client (CoordinatorClient) or `fedshield participant`.",
        )
    if len(header) > MAX_HEADER_CHARS or header.count(".") != 1:
        raise EnvelopeRejected(401, "bad_signature", _BAD)
    data_b64, sig_b64 = header.split(".")
    try:
        data, signature = _unb64(data_b64), _unb64(sig_b64)
    except (ValueError, binascii.Error) as exc:
        raise EnvelopeRejected(401, "bad_signature", _BAD) from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise EnvelopeRejected(401, "bad_signature", _BAD)
    return data, signature


def _open(header: str | None, key: Ed25519PublicKey, domain: bytes, kind: type[_E]) -> _E:
    data, signature = _split(header)
    try:
        key.verify(signature, domain + data)
    except InvalidSignature as exc:
        raise EnvelopeRejected(401, "bad_signature", _BAD) from exc
    # Authentic from here on; still refuse anything but the one canonical encoding.
    try:
        envelope = kind.model_validate_json(data)
    except ValidationError as exc:
        raise EnvelopeRejected(401, "bad_signature", _BAD) from exc
    if canonical(envelope) != data:
        raise EnvelopeRejected(401, "bad_signature", _BAD)
    return envelope


def open_request(header: str | None, key: Ed25519PublicKey) -> RequestEnvelope:
    """Verify a request envelope header with the sender's key and return its fields.

    Raises
    ------
    EnvelopeRejected
        ``missing`` (401) without a header; ``bad_signature`` (401) for anything else
        wrong with it, whatever that is.
    """
    return _open(header, key, REQUEST_DOMAIN, RequestEnvelope)


def open_reply(header: str | None, key: Ed25519PublicKey) -> ReplyEnvelope:
    """Verify a reply envelope header with the coordinator's key (see :func:`open_request`)."""
    return _open(header, key, REPLY_DOMAIN, ReplyEnvelope)


def peek_nonce(header: str | None) -> str:
    """Return the nonce an envelope header claims, unverified ("" if none can be read).

    Only for binding a refusal to the request it refuses: a reply that echoes a forged
    nonce tells the forger nothing it did not send.
    """
    try:
        data, _ = _split(header)
        nonce = json.loads(data).get("nonce", "")
    except (EnvelopeRejected, ValueError, AttributeError, RecursionError):
        return ""
    return nonce if isinstance(nonce, str) and re.fullmatch(_HEX_NONCE, nonce) else ""


def check_fresh(ts_ms: int, *, now_ms: int, window_s: float) -> None:
    """Refuse a timestamp more than ``window_s`` before or after ``now_ms``.

    Raises
    ------
    EnvelopeRejected
        ``stale`` or ``future`` (401), with the skew, so an honest sender can fix its
        clock.
    """
    skew_s = (now_ms - ts_ms) / 1000.0
    if skew_s > window_s:
        raise EnvelopeRejected(
            401,
            "stale",
            f"the message is {skew_s:.0f} s old, over the window of {window_s:g} s",
            hint="Check this machine's clock (NTP); messages cannot be replayed later.",
        )
    if -skew_s > window_s:
        raise EnvelopeRejected(
            401,
            "future",
            f"the message is dated {-skew_s:.0f} s in the future, over the window of "
            f"{window_s:g} s",
            hint="Check this machine's clock (NTP).",
        )


class NonceCache:
    """Nonces seen within the freshness window, per signer, in bounded memory.

    A nonce is remembered until its timestamp leaves the window (``ts_ms +
    window_s``): after that :func:`check_fresh` refuses it anyway. Entries leave by time
    only. When a signer already has ``max_per_signer`` live nonces, or all signers
    together ``max_total``, the new message is refused (429) rather than an old nonce
    forgotten early, which would let it be replayed.

    Memory: at most ``max_total`` entries of about 150 bytes (16-byte nonce, heap entry,
    set entry), i.e. about 10 MB at the default 65,536.
    """

    def __init__(
        self, *, window_s: float, max_per_signer: int = 4096, max_total: int = 65536
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_per_signer < 1 or max_total < max_per_signer:
            raise ValueError(
                f"need 1 <= max_per_signer <= max_total, got {max_per_signer}, {max_total}"
            )
        self.window_ms = round(window_s * 1000)
        self.max_per_signer = max_per_signer
        self.max_total = max_total
        self._heaps: dict[str, list[tuple[int, bytes]]] = {}
        self._sets: dict[str, set[bytes]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def _evict(self, signer: str, now_ms: int) -> None:
        heap = self._heaps[signer]
        seen = self._sets[signer]
        while heap and heap[0][0] < now_ms:
            _, nonce = heapq.heappop(heap)
            seen.discard(nonce)
            self._total -= 1
        if not heap:
            del self._heaps[signer], self._sets[signer]

    def evict_expired(self, now_ms: int) -> None:
        """Forget every nonce whose timestamp has left the window at ``now_ms``."""
        for signer in list(self._heaps):
            self._evict(signer, now_ms)

    def remember(self, signer: str, nonce: str, *, ts_ms: int, now_ms: int) -> None:
        """Record ``nonce`` of ``signer``; refuse it if it was seen within the window.

        Call only after the signature and :func:`check_fresh` passed.

        Raises
        ------
        EnvelopeRejected
            ``replay`` (409) for a nonce seen before; ``rate_limited`` (429) when the
            memory bound is reached.
        """
        raw = bytes.fromhex(nonce)
        if signer in self._heaps:
            self._evict(signer, now_ms)
        seen = self._sets.get(signer)
        if seen is not None and raw in seen:
            raise EnvelopeRejected(
                409, "replay", "this message was already received (replayed nonce)"
            )
        if self._total >= self.max_total:
            self.evict_expired(now_ms)
        count = len(seen) if seen is not None else 0
        if count >= self.max_per_signer or self._total >= self.max_total:
            raise EnvelopeRejected(
                429,
                "rate_limited",
                f"too many messages within {self.window_ms / 1000:g} s",
                hint="Slow down; nonces are remembered for the freshness window.",
            )
        heapq.heappush(self._heaps.setdefault(signer, []), (ts_ms + self.window_ms, raw))
        self._sets.setdefault(signer, set()).add(raw)
        self._total += 1


def sign_model(statement: ModelStatement, key: Ed25519PrivateKey) -> str:
    """Sign a :class:`ModelStatement`; return the signature, base64url."""
    return _b64(key.sign(MODEL_DOMAIN + canonical(statement)))


def verify_model(statement: ModelStatement, signature: str | None, key: Ed25519PublicKey) -> None:
    """Check the coordinator's signature over a :class:`ModelStatement`.

    Raises
    ------
    UntrustedModelError
        If the signature is missing or does not verify (whatever is wrong with it).
    """
    message = (
        f"model {statement.model_sha3[:12]} (version {statement.model_version}, round "
        f"{statement.round}) is not signed by this federation's coordinator"
    )
    hint = "Do not train on it; tell the federation's administrator."
    if signature is None:
        raise UntrustedModelError(message, hint=hint)
    try:
        raw = _unb64(signature)
        key.verify(raw, MODEL_DOMAIN + canonical(statement))
    except (ValueError, binascii.Error, InvalidSignature) as exc:
        raise UntrustedModelError(message, hint=hint) from exc


def digest_equal(a: str, b: str) -> bool:
    """Compare two hex digests in constant time."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
