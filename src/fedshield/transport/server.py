"""The coordinator's HTTPS API (FastAPI on uvicorn), mutual TLS 1.3 only.

Who is calling is decided by the TLS handshake, never by a header: the server context
requires a client certificate issued by the federation CA (``ssl.CERT_REQUIRED``), and
:class:`_PeerCertH11Protocol` puts the verified peer certificate into the ASGI scope,
where :class:`_Access` reads the name and role from it and asks the access policy
whether that role holds the endpoint's permission (deny by default).

Endpoints (all under ``/v1``)::

    GET  /health                       health:read     liveness
    GET  /task?wait_s=S                participant     long-poll for work (204: none yet)
    GET  /models/{sha3}                participant     the distributed model, safetensors
    POST /rounds/{round}/update        participant     safetensors body + X-Fedshield-Meta
    POST /rounds/{round}/evaluation    participant     JSON EvaluationResult
    POST /rounds/{round}/decline       participant     JSON Decline (?attempt=A): sit out
    POST /rounds/{round}/secagg/report participant     JSON FitMeta (SecAgg+ on: no update)
    POST /rounds/{round}/secagg/refuse participant     JSON SecAggRefusal (?attempt=A)
    POST /rounds/{round}/secagg/{stage} participant    a SecAgg+ stage message (?attempt=A):
                                                       JSON, raw ring bytes for ``masked``
    GET  /rounds/{round}/receipt       participant     the caller's own audit receipt (JSON)
    GET  /status                       status:read     round progress and history
    GET  /participants                 participants:read       list with status
    POST /participants/{name}/enroll   participants:enroll     JSON {"certificate", "organization"?}
    POST /participants/{name}/revoke   participants:revoke     JSON {"reason"}
    POST /participants/{name}/quarantine participants:quarantine JSON {"reason"}
    POST /participants/{name}/release  participants:release    JSON {}
    POST /models/rollback              models:rollback         JSON {"version", "reason"}
    GET  /audit/export                 audit:read      every audit entry, JSON lines
    GET  /privacy                      privacy_ledger:read     the privacy report (JSON)

Every endpoint needs one permission (``resource:action``) of the caller's role, the
certificate ``OU``, in the federation's access policy (:mod:`fedshield.policy`; deny by
default): ``health:read`` for health, ``rounds:read`` for the task long-poll,
``models:read`` for the model, ``updates:write`` for updates and SecAgg+ messages,
``rounds:write`` for evaluations and declines, ``receipts:read`` for a receipt (always
the caller's own: the name comes from its certificate, never from the request).
Participant endpoints also need the name to be enrolled: listed in the config, or
enrolled since (the ``enrollments`` table, re-read like the revocation list; see
:mod:`fedshield.federation.admin`).
Before the policy, every request's certificate is checked against the revocation list
(:class:`~fedshield.storage.identity.RevocationCache`) and its expiry: a revoked or
expired certificate gets 403 whatever its role. Denials, and the allows that
:class:`~fedshield.policy.DecisionLog` selects, are audit entries
(``access.deny`` / ``access.allow``). Denials and refused envelopes share one limit per
caller (:class:`~fedshield.transport._server_envelope.RefusalGate`, ``[transport]
refusals_per_minute`` and ``refusal_burst``): past it a refusal is answered 429 and
counted in an ``access.refusals_suppressed`` summary entry instead of its own entry.

Request bodies are read with a byte limit before they are parsed; errors are JSON
``{"error", "hint"}`` bodies with 4xx codes and never echo internals.

Every request must carry a signed envelope and every reply carries one: one middleware
(:class:`~fedshield.transport._server_envelope.EnvelopeMiddleware`) checks them before
any endpoint runs, and hashes the body as the endpoint reads it under its own limit (see
:mod:`fedshield.transport.envelope` and docs/messages.md).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import uvicorn
from cryptography import x509
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedshield.errors import (
    AuditError,
    ConfigError,
    FedshieldError,
    IdentityError,
    NotFoundError,
    PayloadError,
    ProtocolError,
    StorageError,
)
from fedshield.federation.admin import MAX_CERTIFICATE_BYTES, Administration, StateConflict
from fedshield.federation.coordinator import utcnow
from fedshield.federation.privacy_report import load_report
from fedshield.federation.secure import SecureRelay
from fedshield.federation.service import CoordinatorService
from fedshield.identity import Identity, identity_from_der
from fedshield.policy import DecisionLog, Permission
from fedshield.storage import ModelVersion
from fedshield.storage.audit import AuditLog
from fedshield.storage.enrollment import EnrollmentRecord
from fedshield.storage.identity import RevocationRecord
from fedshield.tensors import decode, encode
from fedshield.transport._server_envelope import (
    LIMITED_HINT,
    LIMITED_MESSAGE,
    LIMITED_STATUS,
    EnvelopeGuard,
    EnvelopeMiddleware,
    RefusalGate,
    peer_actor,
)
from fedshield.transport.messages import (
    META_HEADER,
    SECAGG_STAGES,
    Decline,
    ErrorBody,
    EvaluationResult,
    FitMeta,
    SecAggRefusal,
)
from fedshield.transport.ratelimit import RefusalLimiter, RefusalLimits

__all__ = ["create_app", "serve"]

_SCOPE_KEY = "fedshield.peer_cert_der"
FIRST_REQUEST_S = 10.0
TLS_HANDSHAKE_S = 10.0
_UPLOAD_SLACK_BYTES = 16 * 1024
_SMALL_BODY_BYTES = 64 * 1024
_SECAGG_JSON_BYTES = 4 * 2**20
_HEALTH = Permission("health", "read")
_STATUS_READ = Permission("status", "read")
_MODELS_READ = Permission("models", "read")
_ADMIN_BODY_HINT = (
    'enroll takes {"certificate": "PEM"}, revoke and quarantine {"reason": "..."}, '
    'release {}, rollback {"version": N, "reason": "..."} (fedshield participants ... '
    "--kit does this)"
)


class _AdminBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReasonBody(_AdminBody):
    """Why an admin revokes or quarantines."""

    reason: str = Field(min_length=1, max_length=1000)


class EmptyBody(_AdminBody):
    """No fields."""


class EnrollBody(_AdminBody):
    """The certificate the federation CA issued from the site's CSR (no key: it stays there)."""

    certificate: str = Field(min_length=1, max_length=MAX_CERTIFICATE_BYTES)
    organization: str | None = Field(default=None, min_length=1, max_length=64)


class RollbackBody(_AdminBody):
    """Which model version becomes the head, and why."""

    version: int = Field(ge=0)
    reason: str = Field(min_length=1, max_length=1000)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified client certificate in every scope.

    A connection that has not sent a complete request head within
    ``FIRST_REQUEST_S`` of its handshake is closed (slow clients must not hold
    connections open; uvicorn has no header timeout of its own).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.loop.call_later(FIRST_REQUEST_S, self._first_request_deadline)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        inner: ASGIApp = self.app

        async def with_peer(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})[_SCOPE_KEY] = der
            await inner(scope, receive, send)

        self.app = with_peer

    def _first_request_deadline(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


class _Refused(Exception):
    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint


def _error(status: int, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse(ErrorBody(error=message, hint=hint).model_dump(), status_code=status)


class _Access:
    """The access check of every endpoint: identity, revocation, expiry, policy, audit."""

    def __init__(self, service: CoordinatorService, gate: RefusalGate | None = None) -> None:
        self.service = service
        self.policy = service.policy
        self.decisions = DecisionLog()
        self.events = service.coordinator.events
        self.gate = gate

    def _record(
        self,
        request: Request,
        *,
        actor: str,
        allowed: bool,
        permission: Permission,
        role: str | None,
        reason: str,
        cert_sha256: str | None,
    ) -> None:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", request.url.path)
        self.events.record(
            actor=actor,
            action="access.allow" if allowed else "access.deny",
            resource=str(permission),
            outcome="allowed" if allowed else "denied",
            details={
                "role": role,
                "method": request.method,
                "endpoint": endpoint,
                "path": request.url.path[:256],
                "reason": reason[:500],
                "cert_sha256": cert_sha256,
            },
            now=utcnow(),
        )

    async def deny(
        self,
        request: Request,
        status: int,
        message: str,
        *,
        permission: Permission,
        identity: Identity | None,
        hint: str = "",
        code: str = "denied",
    ) -> _Refused:
        """Audit a denial; return the refusal to raise.

        Over the caller's refusal limit the denial is only counted (``code`` is what its
        summary entry calls it) and the refusal to raise is a 429.
        """
        actor = identity.name if identity else peer_actor(request.scope)
        route = request.scope.get("route")
        resource = f"{request.method} {getattr(route, 'path', request.url.path)}"
        if self.gate is not None and not await self.gate.admit(actor, code, resource):
            return _Refused(LIMITED_STATUS, LIMITED_MESSAGE, LIMITED_HINT)
        await asyncio.to_thread(
            functools.partial(
                self._record,
                request,
                actor=identity.name if identity else "unidentified",
                allowed=False,
                permission=permission,
                role=identity.role if identity else None,
                reason=message,
                cert_sha256=identity.fingerprint_sha256 if identity else None,
            )
        )
        return _Refused(status, message, hint)

    async def check(self, request: Request, permission: Permission) -> Identity:
        """Return the caller's identity if it may do ``permission``; else raise 401/403."""
        der = request.scope.get("extensions", {}).get(_SCOPE_KEY)
        if not der:
            # TLS requires a certificate, so this is a misconfigured server, not a client.
            raise _Refused(401, "a client certificate is required")
        try:
            # Any well-formed role: the policy decides what it may do (deny by default).
            identity = identity_from_der(der, roles=None)
        except IdentityError as exc:
            raise await self.deny(
                request,
                403,
                "the client certificate carries no fedshield identity",
                permission=permission,
                identity=None,
                code="no_identity",
            ) from exc
        revoked = await asyncio.to_thread(
            self.service.revocations.revoked, identity.name, identity.fingerprint_sha256
        )
        if revoked is not None:
            self.service.revoked_seen(identity.name)
            raise await self.deny(
                request,
                403,
                f"the certificate of {identity.name!r} was revoked at "
                f"{revoked.revoked_at.isoformat()}",
                permission=permission,
                identity=identity,
                hint="Ask the federation's admin; a revoked identity is not re-admitted.",
                code="revoked",
            )
        now = utcnow()
        if now > identity.not_after:
            # TLS checked expiry at the handshake; a kept-alive connection can outlive it.
            raise await self.deny(
                request,
                403,
                f"the certificate of {identity.name!r} expired at {identity.not_after.isoformat()}",
                permission=permission,
                identity=identity,
                hint="Ask the federation's admin for a new kit.",
                code="expired",
            )
        decision = self.policy.decide(identity.role, permission)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", request.url.path)
        current = self.service.coordinator.machine.current
        if self.decisions.should_record(
            decision,
            caller=identity.name,
            endpoint=f"{request.method} {endpoint}",
            round=current[0] if current else None,
        ):
            if not decision.allowed:
                raise await self.deny(
                    request,
                    403,
                    decision.reason,
                    permission=permission,
                    identity=identity,
                    code="policy",
                )
            await asyncio.to_thread(
                functools.partial(
                    self._record,
                    request,
                    actor=identity.name,
                    allowed=True,
                    permission=permission,
                    role=identity.role,
                    reason=decision.reason,
                    cert_sha256=identity.fingerprint_sha256,
                )
            )
        return identity


async def _read_body(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, f"payload is {declared} bytes, over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _Refused(413, f"payload exceeds the limit of {limit} bytes")
        body += chunk
    return bytes(body)


def _audit_write(
    service: CoordinatorService,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    details: dict[str, Any],
) -> None:
    service.coordinator.events.record(
        actor=actor,
        action=action,
        resource=resource,
        outcome=outcome,
        details=details,
        now=utcnow(),
    )


def create_app(
    service: CoordinatorService,
    *,
    clock: Callable[[], float] = time.time,
    ca_cert: x509.Certificate | None = None,
) -> FastAPI:
    """Build the coordinator API around ``service``.

    ``clock`` (seconds since the epoch) is what message timestamps are checked against.
    ``ca_cert`` is the federation CA that TLS trusts; an enrollment's certificate must
    be issued by it (without it the enroll endpoint answers 409: enroll locally).
    ``app.state.refusal_gate`` is the refusal limit's
    :class:`~fedshield.transport._server_envelope.RefusalGate`: whoever serves the app
    runs its :meth:`~fedshield.transport._server_envelope.RefusalGate.run` and calls
    :meth:`~fedshield.transport._server_envelope.RefusalGate.drain` at the end, as
    :func:`serve` does, or suppressed refusals are never summarized.
    """
    coordinator = service.coordinator
    limit = service.config.transport.max_payload_bytes
    layout = coordinator.layout
    # An honest update encodes to exactly this many bytes (plus header slack); nobody
    # needs to send more, whatever max_payload_bytes allows.
    zeros = {
        n: np.zeros(shape, dtype=np.float32)
        for n, shape in zip(layout.names, layout.shapes, strict=True)
    }
    update_limit = min(limit, len(encode(zeros)) + _UPLOAD_SLACK_BYTES)
    del zeros
    uploading: set[str] = set()
    long_poll_s = service.config.coordinator.long_poll_s
    app = FastAPI(title="fedshield coordinator", docs_url=None, redoc_url=None, openapi_url=None)
    transport = service.config.transport
    gate = RefusalGate(
        RefusalLimiter(
            RefusalLimits(
                per_minute=transport.refusals_per_minute,
                burst=transport.refusal_burst,
                summary_s=transport.refusal_summary_s,
                max_actors=transport.refusal_max_actors,
            )
        ),
        functools.partial(_audit_write, service),
        clock=clock,
    )
    # serve() flushes the gate's summaries while it runs and drains them at shutdown.
    app.state.refusal_gate = gate
    access = _Access(service, gate)
    admin = Administration(
        coordinator.db, config=service.config, models_dir=coordinator.workdir / "models"
    )
    app.add_middleware(
        EnvelopeMiddleware,
        guard=EnvelopeGuard(
            federation=service.config.federation.name,
            sender=service.name,
            signing_key=service.signing_key,
            window_s=service.config.transport.envelope_window_s,
            open_round=service.open_round,
            audit=service.record_rejection,
            peer_key=_SCOPE_KEY,
            clock=clock,
        ),
        gate=gate,
    )

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "malformed request: a path or query parameter has the wrong type")

    async def participant(request: Request, permission: str) -> str:
        wanted = Permission.parse(permission)
        identity = await access.check(request, wanted)
        # The round knows its members by name: only a participant certificate of an
        # enrolled name acts as one, whatever permissions another role was given.
        enrolled = identity.role == "participant" and (
            service.is_enrolled(identity.name, refresh=False)
            or await asyncio.to_thread(service.is_enrolled, identity.name)
        )
        if not enrolled:
            raise await access.deny(
                request,
                403,
                f"{identity.name!r} is not a participant enrolled in this federation",
                permission=wanted,
                identity=identity,
                code="not_enrolled",
            )
        if service.secure is not None:
            service.secure.saw(identity.name, request.scope["extensions"][_SCOPE_KEY])
        service.touch(identity.name)
        service.record_contact(
            identity.name,
            organization=identity.organization,
            cert_sha256=identity.fingerprint_sha256,
        )
        return identity.name

    def accepted(submit: Callable[[], None]) -> Response:
        """Run ``submit``; map its refusals to 422 (payload) and 409 (protocol)."""
        try:
            submit()
        except PayloadError as exc:
            return _error(422, exc.message, exc.hint)
        except ProtocolError as exc:
            return _error(409, exc.message, exc.hint)
        finally:
            service.wake()
        return Response(json.dumps({"accepted": True}), media_type="application/json")

    @app.get("/v1/health")
    async def health(request: Request) -> dict[str, str]:
        await access.check(request, _HEALTH)
        return {"status": "ok", "federation": service.config.federation.name}

    @app.get("/v1/task")
    async def task(request: Request, wait_s: float = 0.0) -> Response:
        name = await participant(request, "rounds:read")
        if not math.isfinite(wait_s):
            return _error(400, "wait_s must be a finite number of seconds")
        wait = min(max(wait_s, 0.0), long_poll_s)
        message = await service.next_task(name, wait_s=wait)
        if message is None:
            return Response(status_code=204)
        return Response(message.model_dump_json(), media_type="application/json")

    @app.get("/v1/models/{sha3}")
    async def model(request: Request, sha3: str) -> Response:
        identity = await access.check(request, _MODELS_READ)
        if identity.role == "participant":
            # A participant certificate the CA issued for a name never enrolled (or
            # enrolled nowhere in this federation) gets no model either.
            if not (
                service.is_enrolled(identity.name, refresh=False)
                or await asyncio.to_thread(service.is_enrolled, identity.name)
            ):
                raise await access.deny(
                    request,
                    403,
                    f"{identity.name!r} is not a participant enrolled in this federation",
                    permission=_MODELS_READ,
                    identity=identity,
                    code="not_enrolled",
                )
            service.touch(identity.name)
        data = await asyncio.to_thread(service.model_bytes, sha3)
        if data is None:
            return _error(404, "no such model is being distributed", "Poll /v1/task again.")
        return Response(data, media_type="application/octet-stream")

    @app.post("/v1/rounds/{round_number}/update")
    async def update(request: Request, round_number: int) -> Response:
        name = await participant(request, "updates:write")
        try:
            meta = FitMeta.model_validate_json(request.headers.get(META_HEADER, ""))
        except ValidationError:
            return _error(400, f"missing or invalid {META_HEADER} header")
        if meta.round != round_number:
            return _error(400, "the round in the path and in the metadata differ")
        if service.secure is not None:
            return _error(
                409,
                "secure aggregation is on: this coordinator never accepts an update in the clear",
                "Report with /secagg/report and answer the secagg tasks (fedshield participant "
                "does this).",
            )
        # Refuse before reading a byte of the body: only a selected site that still owes
        # this round may upload, one upload at a time.
        try:
            coordinator.expects(
                name, kind="fit", round=meta.round, attempt=meta.attempt, now=utcnow()
            )
        except ProtocolError as exc:
            return _error(409, exc.message, exc.hint)
        if name in uploading:
            return _error(409, "an upload from this participant is already in progress")
        uploading.add(name)
        try:
            return await _accept_update(request, name, meta)
        finally:
            uploading.discard(name)

    async def _accept_update(request: Request, name: str, meta: FitMeta) -> Response:
        try:
            body = await _read_body(request, limit=update_limit)
        except _Refused as exc:
            # An oversized update is a refused payload like any other: the site is out
            # of this round, which then closes as soon as the others have answered.
            if exc.status == 413:
                coordinator.reject(name, exc.message, round=meta.round, attempt=meta.attempt)
            service.wake()
            raise
        try:
            weights = await asyncio.to_thread(decode, body, layout=layout, max_bytes=update_limit)
            await asyncio.to_thread(
                coordinator.submit_fit,
                name,
                round=meta.round,
                attempt=meta.attempt,
                model_sha3=meta.model_sha3,
                num_examples=meta.num_examples,
                update=weights,
                metrics=meta.metrics,
                masking_policy_sha3=meta.masking_policy_sha3,
                now=utcnow(),
            )
        except PayloadError as exc:
            coordinator.reject(name, exc.message, round=meta.round, attempt=meta.attempt)
            return _error(422, exc.message, exc.hint)
        except ProtocolError as exc:
            return _error(409, exc.message, exc.hint)
        finally:
            service.wake()
        return Response(json.dumps({"accepted": True}), media_type="application/json")

    @app.post("/v1/rounds/{round_number}/evaluation")
    async def evaluation(request: Request, round_number: int) -> Response:
        name = await participant(request, "rounds:write")
        body = await _read_body(request, limit=64 * 1024)
        try:
            result = EvaluationResult.model_validate_json(body)
        except ValidationError:
            return _error(400, "evaluation body is not a valid EvaluationResult")
        if result.round != round_number:
            return _error(400, "the round in the path and in the body differ")
        return accepted(
            functools.partial(
                coordinator.submit_evaluation,
                name,
                round=result.round,
                attempt=result.attempt,
                model_sha3=result.model_sha3,
                num_examples=result.num_examples,
                metrics=result.metrics,
                now=utcnow(),
            )
        )

    def relay_owing(name: str, round_number: int, attempt: int, stage: str) -> SecureRelay:
        if service.secure is None:
            raise _Refused(409, "secure aggregation is off in this federation")
        try:
            relay = service.secure.relay_for(round_number, attempt)
            relay.owes(name, stage)
        except ProtocolError as exc:
            raise _Refused(409, exc.message, "Poll /v1/task for what is owed now.") from exc
        return relay

    @app.post("/v1/rounds/{round_number}/decline")
    async def decline(request: Request, round_number: int, attempt: int) -> Response:
        name = await participant(request, "rounds:write")
        body = await _read_body(request, limit=_SMALL_BODY_BYTES)
        try:
            refusal = Decline.model_validate_json(body)
        except ValidationError:
            return _error(400, "the body is not a valid Decline")

        def record() -> None:
            # Only a site that still owes the round can decline it; then it is a dropout.
            coordinator.expects(name, kind="fit", round=round_number, attempt=attempt, now=utcnow())
            coordinator.reject(
                name, f"declined: {refusal.reason}", round=round_number, attempt=attempt
            )

        return accepted(record)

    @app.post("/v1/rounds/{round_number}/secagg/report")
    async def secure_report(request: Request, round_number: int) -> Response:
        name = await participant(request, "updates:write")
        if service.secure is None:
            return _error(409, "secure aggregation is off: upload the update instead")
        body = await _read_body(request, limit=_SMALL_BODY_BYTES)
        try:
            meta = FitMeta.model_validate_json(body)
        except ValidationError:
            return _error(400, "the report body is not a valid FitMeta")
        if meta.round != round_number:
            return _error(400, "the round in the path and in the body differ")
        return accepted(
            functools.partial(
                coordinator.submit_fit,
                name,
                round=meta.round,
                attempt=meta.attempt,
                model_sha3=meta.model_sha3,
                num_examples=meta.num_examples,
                update=None,
                metrics=meta.metrics,
                masking_policy_sha3=meta.masking_policy_sha3,
                now=utcnow(),
            )
        )

    @app.post("/v1/rounds/{round_number}/secagg/refuse")
    async def secure_refuse(request: Request, round_number: int, attempt: int) -> Response:
        name = await participant(request, "updates:write")
        body = await _read_body(request, limit=_SMALL_BODY_BYTES)
        try:
            refusal = SecAggRefusal.model_validate_json(body)
        except ValidationError:
            return _error(400, "the body is not a valid SecAggRefusal")
        relay = relay_owing(name, round_number, attempt, refusal.stage)
        relay.refuse(name, refusal.stage, refusal.reason)
        service.wake()
        return Response(json.dumps({"accepted": True}), media_type="application/json")

    @app.post("/v1/rounds/{round_number}/secagg/{stage}")
    async def secure_stage(
        request: Request, round_number: int, stage: str, attempt: int
    ) -> Response:
        name = await participant(request, "updates:write")
        if stage not in SECAGG_STAGES:
            return _error(404, f"no secure aggregation stage {stage!r}")
        relay = relay_owing(name, round_number, attempt, stage)
        setup = relay.owes(name, stage)
        masked = stage == "masked"
        limit = (setup.dim + 1) * setup.ring_bits // 8 if masked else _SECAGG_JSON_BYTES
        try:
            body = await _read_body(request, limit=limit)
        except _Refused as exc:
            relay.refuse(name, stage, exc.message)
            service.wake()
            raise

        def receive() -> None:
            data: bytes | object = body
            if not masked:
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    relay.refuse(name, stage, "the body is not JSON")
                    raise ProtocolError(f"the {stage!r} body is not JSON") from exc
            relay.receive(name, stage, data)  # a refused message takes its sender out

        return accepted(receive)

    @app.get("/v1/rounds/{round_number}/receipt")
    async def receipt(request: Request, round_number: int) -> Response:
        # Only the caller's own: the certificate names the participant, nothing else does.
        name = await participant(request, "receipts:read")
        hint = (
            "Receipts exist once a round commits, for the participants whose update it "
            "included; ask again after the round commits, or ask the admin."
        )
        if not 1 <= round_number < 2**63:
            return _error(404, f"there is no round {round_number}", hint)

        def build() -> str:
            return json.dumps(AuditLog(coordinator.db).receipt(name, round_number).to_json())

        try:
            text = await asyncio.to_thread(build)
        except NotFoundError as exc:
            return _error(404, exc.message, hint)
        except AuditError:
            return _error(
                500,
                f"the coordinator cannot issue the receipt of round {round_number}: its audit "
                "log does not reproduce the signed tree head",
                "Tell the federation's admin: fedshield audit verify --workdir W.",
            )
        return Response(text, media_type="application/json")

    @app.get("/v1/status")
    async def status(request: Request) -> dict[str, Any]:
        await access.check(request, _STATUS_READ)
        return await asyncio.to_thread(service.status)

    # -- administration (admin kits; see fedshield.federation.admin) -----------------

    @app.get("/v1/participants")
    async def participants_list(request: Request) -> dict[str, Any]:
        await access.check(request, Permission("participants", "read"))
        rows = await asyncio.to_thread(admin.participants)
        return {"participants": [r.to_json() for r in rows]}

    async def _admin_body(request: Request, model: type[_AdminBody]) -> Any:
        body = await _read_body(request, limit=_SMALL_BODY_BYTES)
        try:
            return model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise _Refused(
                400, f"the body is not a valid {model.__name__}", _ADMIN_BODY_HINT
            ) from exc

    def _admin_result(call: Callable[[], object]) -> object:
        try:
            return call()
        except StateConflict as exc:
            raise _Refused(409, exc.message, exc.hint) from exc
        except NotFoundError as exc:
            raise _Refused(404, exc.message, exc.hint) from exc
        except (ConfigError, IdentityError) as exc:
            raise _Refused(400, exc.message, exc.hint) from exc

    @app.post("/v1/participants/{name}/enroll")
    async def participant_enroll(request: Request, name: str) -> dict[str, Any]:
        caller = await access.check(request, Permission("participants", "enroll"))
        body = await _admin_body(request, EnrollBody)
        if ca_cert is None:
            raise _Refused(
                409,
                "this coordinator was started without its CA certificate and cannot check "
                "an enrollment",
                "Enroll on the coordinator host: fedshield participants enroll --workdir "
                "DIR --config FILE.",
            )
        record = await asyncio.to_thread(
            _admin_result,
            functools.partial(
                admin.enroll,
                name,
                body.certificate.encode("utf-8"),
                ca_cert=ca_cert,
                actor=caller.name,
                now=utcnow(),
                organization=body.organization,
            ),
        )
        assert isinstance(record, EnrollmentRecord)
        # Accepted now, in this process: no wait for the next refresh.
        service.enrollments.invalidate()
        await asyncio.to_thread(service.enrollments.refresh)
        return {
            "enrolled": record.name,
            "enrollment": record.id,
            "organization": record.organization,
            "cert_sha256": record.cert_sha256,
            "serial": record.serial,
            "not_after": record.not_after.isoformat(),
            "at": record.enrolled_at.isoformat(),
        }

    @app.post("/v1/participants/{name}/revoke")
    async def participant_revoke(request: Request, name: str) -> dict[str, Any]:
        caller = await access.check(request, Permission("participants", "revoke"))
        body = await _admin_body(request, ReasonBody)
        record = await asyncio.to_thread(
            _admin_result,
            functools.partial(
                admin.revoke, name, reason=body.reason, actor=caller.name, now=utcnow()
            ),
        )
        # Enforced now, in this process: no wait for the next refresh.
        await asyncio.to_thread(service.apply_revocations, True)
        service.wake()
        assert isinstance(record, RevocationRecord)
        return {"revoked": name, "revocation": record.id, "at": record.revoked_at.isoformat()}

    @app.post("/v1/participants/{name}/quarantine")
    async def participant_quarantine(request: Request, name: str) -> dict[str, Any]:
        caller = await access.check(request, Permission("participants", "quarantine"))
        body = await _admin_body(request, ReasonBody)
        await asyncio.to_thread(
            _admin_result,
            functools.partial(
                admin.quarantine, name, reason=body.reason, actor=caller.name, now=utcnow()
            ),
        )
        return {"quarantined": name, "effective": "from the next round"}

    @app.post("/v1/participants/{name}/release")
    async def participant_release(request: Request, name: str) -> dict[str, Any]:
        caller = await access.check(request, Permission("participants", "release"))
        await _admin_body(request, EmptyBody)
        await asyncio.to_thread(
            _admin_result,
            functools.partial(admin.release, name, actor=caller.name, now=utcnow()),
        )
        return {"released": name, "effective": "from the next round"}

    @app.post("/v1/models/rollback")
    async def models_rollback(request: Request) -> dict[str, Any]:
        caller = await access.check(request, Permission("models", "rollback"))
        body = await _admin_body(request, RollbackBody)
        version = await asyncio.to_thread(
            _admin_result,
            functools.partial(
                admin.rollback, body.version, reason=body.reason, actor=caller.name, now=utcnow()
            ),
        )
        assert isinstance(version, ModelVersion)
        return {"head": version.version, "sha3": version.sha3, "effective": "from the next round"}

    @app.get("/v1/audit/export")
    async def audit_export(request: Request) -> Response:
        await access.check(request, Permission("audit", "read"))

        def export() -> str:
            out = io.StringIO()
            AuditLog(coordinator.db).export_jsonl(out)
            return out.getvalue()

        text = await asyncio.to_thread(export)
        return Response(text, media_type="application/x-ndjson")

    @app.get("/v1/privacy")
    async def privacy(request: Request) -> Response:
        await access.check(request, Permission("privacy_ledger", "read"))

        def report() -> str:
            return json.dumps(load_report(coordinator.workdir).to_json())

        try:
            text = await asyncio.to_thread(report)
        except NotFoundError as exc:
            return _error(404, exc.message, exc.hint)
        return Response(text, media_type="application/json")

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
        # Our problem, maybe passing (a locked database): clients retry 503s.
        return _error(503, "the coordinator cannot reach its storage right now")

    @app.exception_handler(FedshieldError)
    async def _fedshield_error(request: Request, exc: FedshieldError) -> JSONResponse:
        return _error(400, exc.message, exc.hint)

    return app


def serve(
    service: CoordinatorService,
    *,
    ssl_context: ssl.SSLContext,
    sock: socket.socket,
) -> None:
    """Serve the API on the bound socket until the federation ends (blocking)."""
    anchors = ssl_context.get_ca_certs(binary_form=True)
    # The one CA the handshake trusts is the one an enrollment must come from.
    ca_cert = x509.load_der_x509_certificate(anchors[0]) if len(anchors) == 1 else None
    app = create_app(service, ca_cert=ca_cert)
    config = uvicorn.Config(
        app,
        http=_PeerCertH11Protocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
        limit_concurrency=4 * len(service.names) + 16,
    )
    config.load()
    config.ssl = ssl_context
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    async def main() -> None:
        # uvicorn creates the server with asyncio's 60 s TLS handshake timeout; a client
        # that opens TCP and never handshakes should not hold a connection that long.
        loop = asyncio.get_running_loop()
        loop.create_server = functools.partial(  # type: ignore[method-assign]
            loop.create_server, ssl_handshake_timeout=TLS_HANDSHAKE_S
        )
        driver = asyncio.create_task(service.drive(stop))
        # A driver that dies (say, the database disappears) must stop the server too.
        driver.add_done_callback(lambda _: stop())
        gate: RefusalGate = app.state.refusal_gate
        summaries = asyncio.create_task(gate.run())
        try:
            await server.serve(sockets=[sock])
        finally:
            summaries.cancel()
            if not driver.done():
                driver.cancel()
            await asyncio.gather(driver, summaries, return_exceptions=True)
            # Nothing suppressed goes unrecorded: open windows are summarized now.
            await asyncio.to_thread(gate.drain)
        if not driver.cancelled() and driver.exception() is not None:
            raise driver.exception()  # type: ignore[misc]

    asyncio.run(main())
