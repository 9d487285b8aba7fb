"""The coordinator's one envelope checkpoint: an ASGI middleware around the whole API.

Before any endpoint runs, :class:`EnvelopeMiddleware` verifies the request's
:mod:`~fedshield.transport.envelope` with the signing key bound in the TLS-verified
client certificate, then checks, in this order: the federation, the sender (the
certificate's name), the message type and query (the request actually made), the round
(the one in the path, and for a ``POST`` under ``/v1/rounds/{r}/`` the round the
coordinator has open), the timestamp (within the window) and the nonce (never seen
within the window). The body is not buffered here: it is hashed as the endpoint reads
it, under the endpoint's own byte limit, and the last chunk is withheld from the
endpoint unless the whole body hashes to what the envelope signed.

Every reply leaving the API, refusals included, is signed by the coordinator and bound
to the request's nonce. Every refusal here is a JSON ``{"error", "hint"}`` with a 4xx
status and an audit event (``message.rejected``, with a short reason code), as long as
its caller is under the refusal limit (:class:`RefusalGate`, shared with the access
check): over it the answer is 429 and the refusal is counted in a summary entry instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedshield.errors import FedshieldError, IdentityError
from fedshield.identity import identity_of, signing_key_of
from fedshield.transport.envelope import (
    EMPTY_SHA3,
    ENVELOPE_HEADER,
    NONCE_BYTES,
    EnvelopeRejected,
    NonceCache,
    ReplyEnvelope,
    RequestEnvelope,
    check_fresh,
    digest_equal,
    open_request,
    peek_nonce,
    round_of_path,
    seal,
)
from fedshield.transport.messages import ErrorBody
from fedshield.transport.ratelimit import RefusalLimiter, SuppressedSummary, Verdict

__all__ = ["AuditRejection", "AuditWrite", "EnvelopeGuard", "EnvelopeMiddleware", "RefusalGate"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AuditRejection = Callable[[str, str, str, dict[str, Any]], None]
"""``(actor, resource, reason, details)``: record a refusal (a durable write; blocking)."""
AuditWrite = Callable[[str, str, str, str, dict[str, Any]], None]
"""``(actor, action, resource, outcome, details)``: one durable audit entry (blocking)."""
LIMITED_STATUS = 429
LIMITED_MESSAGE = "too many refused requests from this caller"
LIMITED_HINT = (
    "Fix what the earlier refusals said before retrying; refused requests are limited per caller."
)

SCOPE_ENVELOPE = "fedshield.envelope"
"""Where the verified :class:`RequestEnvelope` is put in ``scope["extensions"]``."""
_HEADER = ENVELOPE_HEADER.encode("ascii")
_MAX_CERTS = 1024
_log = logging.getLogger(__name__)


def peer_actor(scope: Scope) -> str:
    """Return the actor of a caller without a certificate identity: its peer address."""
    client = scope.get("client")
    host = str(client[0]) if client else "unknown"
    return f"peer:{host[:64]}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class RefusalGate:
    """The refusal limit of the whole API (see :mod:`fedshield.transport.ratelimit`).

    Every refusal path asks :meth:`admit` before it writes its own audit entry. This
    class writes what the limiter decides instead: one ``access.rate_limited`` entry
    when a caller's window opens, and one ``access.refusals_suppressed`` entry (actor,
    count, window, first/last time, reason codes: metadata only) when it closes.
    :meth:`run` closes windows as they fall due; :meth:`drain` closes the rest at
    shutdown. Called from the event loop only (the limiter is not thread-safe).
    """

    def __init__(
        self,
        limiter: RefusalLimiter,
        write: AuditWrite,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.write = write
        self.clock = clock

    async def admit(self, actor: str, reason: str, resource: str) -> bool:
        """Return whether this refusal is audited as always; False: answer 429.

        Raises
        ------
        FedshieldError
            If the marker of a newly opened window cannot be written.
        """
        verdict = self.limiter.admit(actor, reason, now_s=self.clock())
        if verdict is Verdict.AUDIT:
            return True
        if verdict is Verdict.LIMIT_FIRST:
            limits = self.limiter.limits
            details: dict[str, Any] = {
                "reason": reason[:64],
                "bucket": self.limiter.key_of(actor),
                "refusals_per_minute": limits.per_minute,
                "burst": limits.burst,
                "summary_s": limits.summary_s,
            }
            await asyncio.to_thread(
                self.write, actor, "access.rate_limited", resource[:300], "limited", details
            )
        return False

    def _write_summary(self, summary: SuppressedSummary) -> None:
        self.write(
            summary.actor,
            "access.refusals_suppressed",
            "refusals",
            "suppressed",
            {
                "count": summary.count,
                "window_start": _iso(summary.opened_s),
                "window_end": _iso(summary.closed_s),
                "first": _iso(summary.first_s),
                "last": _iso(summary.last_s),
                "reasons": dict(summary.reasons),
            },
        )

    async def flush(self) -> None:
        """Write the summary of every window that is over."""
        for summary in self.limiter.due(now_s=self.clock()):
            await asyncio.to_thread(self._write_summary, summary)

    async def run(self, *, every_s: float = 1.0) -> None:
        """Flush every ``every_s`` until cancelled (a failed write is logged, retried never)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.flush()
            except FedshieldError:
                _log.exception("cannot record a summary of suppressed refusals")

    def drain(self) -> None:
        """Write the summary of every open window now (blocking; at shutdown)."""
        for summary in self.limiter.drain(now_s=self.clock()):
            try:
                self._write_summary(summary)
            except FedshieldError:
                _log.exception("cannot record a summary of suppressed refusals")


class _BodyMismatch(Exception):
    """The body does not hash to what the envelope signed (raised inside an endpoint)."""


@dataclass
class EnvelopeGuard:
    """What the middleware checks against, and with.

    Parameters
    ----------
    federation : str
        This federation's id.
    sender : str
        The coordinator's name (its certificate's CN), signed into every reply.
    signing_key : Ed25519PrivateKey
        The coordinator's signing key (the one its certificate binds).
    window_s : float
        How far a timestamp may be from the coordinator's clock, either way.
    open_round : callable
        The number of the round the coordinator has open, or None.
    audit : AuditRejection
        Records a refusal; called in a worker thread.
    peer_key : str
        The ``scope["extensions"]`` key holding the verified peer certificate (DER).
    clock : callable
        Seconds since the epoch (``time.time``); tests pass a fake one.
    nonce_cache : NonceCache | None
        Defaults to one for ``window_s`` with the default bounds.
    """

    federation: str
    sender: str
    signing_key: Ed25519PrivateKey
    window_s: float
    open_round: Callable[[], int | None]
    audit: AuditRejection
    peer_key: str
    clock: Callable[[], float] = time.time
    nonce_cache: NonceCache | None = None

    def __post_init__(self) -> None:
        if self.nonce_cache is None:
            self.nonce_cache = NonceCache(window_s=self.window_s)
        # Per certificate: its name, signing key and role (parsed once).
        self._signers: dict[bytes, tuple[str, Ed25519PublicKey, str]] = {}

    def signer_of(self, der: bytes) -> tuple[str, Ed25519PublicKey]:
        """Return the name and signing key the (TLS-verified) certificate ``der`` binds."""
        known = self._signers.get(der)
        if known is not None:
            return known[0], known[1]
        try:
            cert = x509.load_der_x509_certificate(der)
            # Any well-formed role: whether the role exists is the access policy's call,
            # made by the endpoint (custom roles come from [access] policy).
            identity = identity_of(cert, roles=None)
            key = signing_key_of(cert)
        except (ValueError, IdentityError) as exc:
            raise EnvelopeRejected(
                403, "no_signing_key", "the client certificate binds no signing key"
            ) from exc
        if len(self._signers) >= _MAX_CERTS:
            self._signers.clear()
        self._signers[der] = (identity.name, key, identity.role)
        return identity.name, key

    def check(self, scope: Scope, header: str | None) -> tuple[str, RequestEnvelope]:
        """Verify the envelope of the request ``scope``; return the signer and envelope.

        Raises
        ------
        EnvelopeRejected
            For the first check that fails.
        """
        der = scope.get("extensions", {}).get(self.peer_key)
        if not der:
            raise EnvelopeRejected(401, "no_certificate", "a client certificate is required")
        name, key = self.signer_of(der)
        envelope = open_request(header, key)
        if envelope.federation != self.federation:
            raise EnvelopeRejected(
                403,
                "wrong_federation",
                f"the message is for federation {envelope.federation!r}, this is "
                f"{self.federation!r}",
            )
        if envelope.sender != name:
            raise EnvelopeRejected(403, "wrong_sender", "the message names another sender")
        method, path, raw_path, query = _target(scope)
        if envelope.type != f"{method} {raw_path}" or envelope.query != query:
            raise EnvelopeRejected(
                400, "wrong_type", "the signed message type or query is not this request's"
            )
        path_round = round_of_path(path)
        if envelope.round != path_round:
            raise EnvelopeRejected(
                400, "wrong_round", "the signed round is not the round in the path"
            )
        # Only a participant may post to a round (the endpoint's access check refuses
        # every other role with 403 and audits it): asking others about the open round
        # first would answer them 409 instead and tell them the round state.
        if path_round and method == "POST" and self._signers[der][2] == "participant":
            current = self.open_round()
            if current != path_round:
                now = f"round {current} is open" if current else "no round is open"
                raise EnvelopeRejected(
                    409,
                    "wrong_round",
                    f"the message is for round {path_round}, but {now}",
                    hint="Poll /v1/task for the current round.",
                )
        now_ms = round(self.clock() * 1000)
        check_fresh(envelope.ts_ms, now_ms=now_ms, window_s=self.window_s)
        assert self.nonce_cache is not None
        self.nonce_cache.remember(name, envelope.nonce, ts_ms=envelope.ts_ms, now_ms=now_ms)
        return name, envelope

    def reply_header(
        self, request: RequestEnvelope | None, scope: Scope, status: int, body_sha3: str, nonce: str
    ) -> bytes:
        """Sign a reply to ``scope`` (``request`` is None if it did not verify)."""
        method, path, raw_path, query = _target(scope)
        if request is not None:
            round_number = request.round
        else:
            try:
                round_number = round_of_path(path)
            except EnvelopeRejected:
                round_number = 0
        reply = ReplyEnvelope(
            federation=self.federation,
            sender=self.sender,
            round=round_number,
            type=request.type if request is not None else f"{method} {raw_path}"[:1024],
            query=request.query if request is not None else query[:1024],
            nonce=secrets.token_hex(NONCE_BYTES),
            ts_ms=round(self.clock() * 1000),
            payload_sha3=body_sha3,
            status=status,
            in_reply_to=nonce,
        )
        return seal(reply, self.signing_key).encode("ascii")


def _target(scope: Scope) -> tuple[str, str, str, str]:
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    return (
        str(scope["method"]),
        str(scope["path"]),
        raw.decode("latin-1"),
        bytes(scope.get("query_string", b"")).decode("latin-1"),
    )


def _has_body(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"transfer-encoding" or (key == b"content-length" and value != b"0"):
            return True
    return False


def _header(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == _HEADER:
            return bytes(value).decode("latin-1")
    return None


def _error_body(message: str, hint: str = "") -> bytes:
    return ErrorBody(error=message, hint=hint).model_dump_json().encode("utf-8")


class _Reply:
    """One request's reply: held until its body is complete, then signed and sent.

    Holding keeps references to the body chunks, never a copy of them.
    """

    def __init__(self, guard: EnvelopeGuard, scope: Scope, send: Send, nonce: str) -> None:
        self.guard = guard
        self.scope = scope
        self.send = send
        self.nonce = nonce
        self.envelope: RequestEnvelope | None = None
        self.started = False
        self._held: list[Message] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._held = [message]
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        self._held.append(message)
        if message.get("more_body", False):
            return
        start, parts = self._held[0], self._held[1:]
        self._held = []
        hasher = hashlib.sha3_256()
        for part in parts:
            hasher.update(part.get("body", b""))
        signature = self.guard.reply_header(
            self.envelope, self.scope, int(start["status"]), hasher.hexdigest(), self.nonce
        )
        self.started = True
        await self.send({**start, "headers": [*start.get("headers", ()), (_HEADER, signature)]})
        for part in parts:
            await self.send(part)

    async def json(self, status: int, body: bytes) -> None:
        """Send a JSON reply of our own (a refusal)."""
        await self(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await self({"type": "http.response.body", "body": body})


class EnvelopeMiddleware:
    """Verify every request's envelope and sign every reply (see the module docstring)."""

    def __init__(self, app: ASGIApp, guard: EnvelopeGuard, gate: RefusalGate | None = None) -> None:
        self.app = app
        self.guard = guard
        self.gate = gate

    async def _refuse(self, reply: _Reply, actor: str, exc: EnvelopeRejected) -> None:
        details: dict[str, Any] = {"reason": exc.reason, "status": exc.status}
        method, path, _, _ = _target(reply.scope)
        resource = f"{method} {path}"[:300]
        key = actor if actor != "unknown" else peer_actor(reply.scope)
        try:
            if self.gate is not None and not await self.gate.admit(key, exc.reason, resource):
                await reply.json(LIMITED_STATUS, _error_body(LIMITED_MESSAGE, LIMITED_HINT))
                return
            await asyncio.to_thread(self.guard.audit, actor, resource, exc.reason, details)
        except FedshieldError:
            _log.exception("cannot record a refused message")
            body = _error_body("the coordinator cannot reach its storage right now")
            await reply.json(503, body)
            return
        await reply.json(exc.status, _error_body(exc.message, exc.hint))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        header = _header(scope)
        reply = _Reply(guard, scope, send, peek_nonce(header))
        actor = "unknown"
        try:
            der = scope.get("extensions", {}).get(guard.peer_key)
            if der:
                actor = guard.signer_of(der)[0]
            actor, envelope = guard.check(scope, header)
        except EnvelopeRejected as exc:
            await self._refuse(reply, actor, exc)
            return
        reply.envelope = envelope
        scope.setdefault("extensions", {})[SCOPE_ENVELOPE] = envelope
        expected = envelope.payload_sha3
        if not _has_body(scope) and not digest_equal(expected, EMPTY_SHA3):
            mismatch = EnvelopeRejected(
                400, "payload_mismatch", "the body does not match the hash its envelope signed"
            )
            await self._refuse(reply, actor, mismatch)
            return
        hasher = hashlib.sha3_256()

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                hasher.update(message.get("body", b""))
                # The last chunk reaches the endpoint only if the whole body is authentic.
                if not message.get("more_body", False) and not digest_equal(
                    hasher.hexdigest(), expected
                ):
                    raise _BodyMismatch
            return message

        try:
            await self.app(scope, checked_receive, reply)
        except _BodyMismatch:
            if reply.started:
                raise
            mismatch = EnvelopeRejected(
                400, "payload_mismatch", "the body does not match the hash its envelope signed"
            )
            await self._refuse(reply, actor, mismatch)
        except Exception:
            if not reply.started:
                await reply.json(500, _error_body("internal error", "See the coordinator's log."))
            raise
