"""The participant's HTTPS client (httpx), mutual TLS 1.3, outbound only.

Retries follow exponential backoff with full jitter (``uniform(0, min(max, base*2^k))``)
on connection failures and 502/503/504 replies; a 4xx reply is never retried and
becomes an error that carries the coordinator's message. A TLS failure (certificate
not from the federation CA, or ours refused) is not retried either: it will not heal.

While the coordinator is unreachable (for example while it restarts) the client keeps
retrying until ``reconnect_timeout_s`` has passed since the last successful request.

Every request is signed with the kit's signing key and every reply is verified against
the coordinator's certificate before it is used (:class:`EnvelopeAuth`, see
:mod:`fedshield.transport.envelope`); a reply that fails is a
:class:`~fedshield.errors.TransportError`, never retried. A retry is a new message
(new nonce and timestamp). A distributed model is used only if the coordinator signed
its (federation, round, SHA3, version) and the bytes hash to that SHA3
(:meth:`CoordinatorClient.fetch_task_model`).
"""

from __future__ import annotations

import json
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fedshield.audit import Receipt
from fedshield.errors import ConfigError, IdentityError, PayloadError, ProtocolError, TransportError
from fedshield.identity import Kit, client_ssl_context
from fedshield.tensors import Layout, Weights, decode, encode, weights_sha3
from fedshield.transport._client_envelope import Credentials, EnvelopeAuth
from fedshield.transport.envelope import ModelStatement, UntrustedModelError, verify_model
from fedshield.transport.messages import (
    META_HEADER,
    Decline,
    ErrorBody,
    EvaluationResult,
    FitMeta,
    SecAggRefusal,
    TaskMessage,
)

__all__ = ["CoordinatorClient", "Credentials", "EnvelopeAuth", "RejectedError", "parse_receipt"]

_RETRY_STATUS = frozenset({502, 503, 504})


class RejectedError(TransportError):
    """The coordinator answered with a 4xx: the request itself was refused."""

    def __init__(self, status: int, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint or "See the coordinator's message above.")
        self.status = status


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        text = str(seen).lower()
        if "certificate" in text or "alert" in text or "ssl" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def parse_receipt(body: bytes, *, round_number: int) -> Receipt:
    """Read the receipt JSON a coordinator sent (not yet verified).

    Raises
    ------
    ProtocolError
        If ``body`` is not a receipt's JSON.
    """
    try:
        return Receipt.from_json(json.loads(body))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"the coordinator sent a malformed receipt for round {round_number}",
            hint="Tell the federation's admin; the receipt was not kept.",
        ) from exc


class CoordinatorClient:
    """Talk to one coordinator as one participant (or admin) over mutual TLS."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        credentials: Credentials,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 10.0,
        reconnect_timeout_s: float = 300.0,
        max_payload_bytes: int = 256 * 2**20,
        jitter: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith("https://"):
            raise ConfigError(
                f"coordinator URL must start with https://, got {base_url!r}",
                hint="fedshield never sends federation traffic over plain HTTP.",
            )
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.max_payload_bytes = max_payload_bytes
        self._jitter = jitter or random.Random()  # noqa: S311 - jitter, not a secret
        self._sleep = sleep
        self.auth = EnvelopeAuth(credentials, clock=clock)
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=ssl_context,
            auth=self.auth,
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            follow_redirects=False,
        )
        self._last_ok = time.monotonic()
        self._ever_ok = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def from_kit(cls, base_url: str, kit: Kit, **options: Any) -> CoordinatorClient:
        """Return a client that speaks as ``kit`` (its TLS identity and signing key)."""
        return cls(
            base_url,
            ssl_context=client_ssl_context(kit),
            credentials=Credentials.from_kit(kit),
            **options,
        )

    @property
    def coordinator_key(self) -> Ed25519PublicKey | None:
        """The coordinator's signing key, from the certificate of its last verified reply."""
        return self.auth.coordinator_key

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return self._jitter.uniform(0.0, cap)

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        reconnect: bool = False,
        max_retries: int | None = None,
    ) -> httpx.Response:
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        dropped_after_handshake = 0
        while True:
            failure: str
            try:
                response = self._client.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    params=params,
                    timeout=timeout_s if timeout_s is not None else self.timeout_s,
                )
            except httpx.TransportError as exc:
                if _is_tls_failure(exc):
                    raise IdentityError(
                        f"TLS handshake with {self.base_url} failed: {exc}",
                        hint="The coordinator and this kit must come from the same "
                        "`fedshield provision` run (same federation CA).",
                    ) from exc
                failure = f"{type(exc).__name__}: {exc}"
                # With TLS 1.3 the server checks our certificate after our side of the
                # handshake is done, and a refusal shows up as a bare disconnect.
                if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
                    dropped_after_handshake += 1
            else:
                self.bytes_received += len(response.content)
                if response.status_code not in _RETRY_STATUS:
                    self._last_ok = time.monotonic()
                    self._ever_ok = True
                    if content:
                        self.bytes_sent += len(content)
                    if response.status_code >= 400:
                        raise self._refusal(response)
                    return response
                failure = f"HTTP {response.status_code}"
            attempt += 1
            out_of_retries = attempt > retries
            never_accepted = not self._ever_ok and dropped_after_handshake == attempt
            if never_accepted and out_of_retries:
                # The coordinator accepted TCP, finished TLS and hung up every time, and
                # has never answered us: it refuses this kit's certificate.
                raise IdentityError(
                    f"{self.base_url} closed every connection right after the TLS handshake "
                    f"({attempt} attempts): it does not accept this kit's certificate",
                    hint="The coordinator and this kit must come from the same "
                    "`fedshield provision` run (same federation CA), and the certificate "
                    "must not be expired or revoked.",
                )
            if reconnect and not never_accepted:
                out_of_retries = time.monotonic() - self._last_ok > self.reconnect_timeout_s
            if out_of_retries:
                raise TransportError(
                    f"{method} {path} to {self.base_url} failed after {attempt} attempt(s): "
                    f"{failure}"
                )
            self._sleep(self._backoff(min(attempt, 16)))

    @staticmethod
    def _refusal(response: httpx.Response) -> RejectedError:
        try:
            body = ErrorBody.model_validate_json(response.content)
            return RejectedError(response.status_code, body.error, hint=body.hint)
        except ValidationError:
            return RejectedError(response.status_code, f"HTTP {response.status_code}")

    # -- participant API ---------------------------------------------------------------

    def next_task(self, *, wait_s: float) -> TaskMessage | None:
        """Long-poll for work; None when the coordinator has none yet."""
        response = self._request(
            "GET",
            "/v1/task",
            params={"wait_s": wait_s},
            timeout_s=wait_s + self.timeout_s,
            reconnect=True,
        )
        if response.status_code == 204:
            return None
        try:
            return TaskMessage.model_validate_json(response.content)
        except ValidationError as exc:
            raise ProtocolError("the coordinator sent a malformed task message") from exc

    def fetch_model(self, sha3: str, *, layout: Layout | None = None) -> Weights:
        """Download the distributed model and check it hashes to ``sha3``.

        Raises
        ------
        UntrustedModelError
            If the downloaded weights do not hash to ``sha3``.
        """
        response = self._request("GET", f"/v1/models/{sha3}", reconnect=True)
        weights = decode(response.content, layout=layout, max_bytes=self.max_payload_bytes)
        if weights_sha3(weights) != sha3:
            raise UntrustedModelError(
                f"the downloaded model does not match its announced SHA3 hash {sha3[:12]}",
                hint="Do not train on it; tell the federation's administrator.",
            )
        return weights

    def fetch_task_model(self, task: TaskMessage, *, layout: Layout | None = None) -> Weights:
        """Verify the model a fit or evaluate task names, then download and check it.

        The task's ``model_signature`` must be the coordinator's signature (the key
        its certificate binds) over the task's federation, round, model SHA3 and
        version; then the downloaded weights must hash to that SHA3.

        Raises
        ------
        UntrustedModelError
            If either check fails: the model must not be used.
        """
        key = self.coordinator_key
        if task.round is None or task.model_sha3 is None or task.model_version is None:
            raise UntrustedModelError("the task names no model to verify")
        if key is None:
            raise UntrustedModelError("no verified reply from the coordinator yet")
        statement = ModelStatement(
            federation=task.federation,
            round=task.round,
            model_sha3=task.model_sha3,
            model_version=task.model_version,
        )
        verify_model(statement, task.model_signature, key)
        return self.fetch_model(task.model_sha3, layout=layout)

    def push_update(self, meta: FitMeta, update: Mapping[str, np.ndarray]) -> None:
        """Upload an update with its metadata."""
        body = encode(update)
        if len(body) > self.max_payload_bytes:
            raise PayloadError(
                f"update is {len(body)} bytes, over the limit of {self.max_payload_bytes}"
            )
        self._request(
            "POST",
            f"/v1/rounds/{meta.round}/update",
            content=body,
            headers={
                META_HEADER: meta.model_dump_json(),
                "content-type": "application/octet-stream",
            },
            reconnect=True,
        )

    def push_raw(self, round_number: int, body: bytes, meta_json: str) -> httpx.Response:
        """Upload raw bytes as an update (used by tests and benchmarks; no retries)."""
        return self._client.post(
            f"/v1/rounds/{round_number}/update",
            content=body,
            headers={META_HEADER: meta_json, "content-type": "application/octet-stream"},
        )

    def decline(self, round_number: int, attempt: int, reason: str) -> None:
        """Tell the coordinator this site sits out a round it was selected for."""
        self._request(
            "POST",
            f"/v1/rounds/{round_number}/decline",
            content=Decline(reason=reason[:1000]).model_dump_json().encode(),
            params={"attempt": attempt},
            headers={"content-type": "application/json"},
            reconnect=True,
        )

    def push_fit_report(self, meta: FitMeta) -> None:
        """Report a secure fit round's training (example count, metrics), no update."""
        self._request(
            "POST",
            f"/v1/rounds/{meta.round}/secagg/report",
            content=meta.model_dump_json().encode(),
            headers={"content-type": "application/json"},
            reconnect=True,
        )

    def push_secagg(
        self, round_number: int, attempt: int, stage: str, body: bytes, content_type: str
    ) -> None:
        """Post this participant's message for one SecAgg+ stage."""
        self._request(
            "POST",
            f"/v1/rounds/{round_number}/secagg/{stage}",
            content=body,
            params={"attempt": attempt},
            headers={"content-type": content_type},
            reconnect=True,
        )

    def refuse_secagg(self, round_number: int, attempt: int, refusal: SecAggRefusal) -> None:
        """Tell the coordinator this participant leaves a SecAgg+ round, and why."""
        self._request(
            "POST",
            f"/v1/rounds/{round_number}/secagg/refuse",
            content=refusal.model_dump_json().encode(),
            params={"attempt": attempt},
            headers={"content-type": "application/json"},
            reconnect=True,
        )

    def post_raw(
        self, path: str, body: bytes, *, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """POST raw bytes to ``path`` (used by tests and benchmarks; no retries)."""
        return self._client.post(path, content=body, params=params)

    def push_evaluation(self, result: EvaluationResult) -> None:
        """Upload an evaluation result."""
        self._request(
            "POST",
            f"/v1/rounds/{result.round}/evaluation",
            content=result.model_dump_json().encode(),
            headers={"content-type": "application/json"},
            reconnect=True,
        )

    def receipt(self, round_number: int, *, max_retries: int | None = None) -> Receipt:
        """Return this participant's audit receipt for committed ``round_number``, unverified.

        The coordinator picks the participant from our certificate. Check the receipt
        with :func:`~fedshield.audit.verify_receipt` under a key you trust before relying
        on it (:class:`~fedshield.federation.receipts.ReceiptStore` does).

        Raises
        ------
        RejectedError
            404 if the round has no receipt for us (not committed, or we were not in it).
        ProtocolError
            If the reply is not a receipt.
        """
        response = self._request(
            "GET", f"/v1/rounds/{round_number}/receipt", max_retries=max_retries
        )
        return parse_receipt(response.content, round_number=round_number)

    def status(self) -> dict[str, Any]:
        """Return the coordinator's status (admin or observer kits)."""
        response = self._request("GET", "/v1/status")
        data: dict[str, Any] = response.json()
        return data
