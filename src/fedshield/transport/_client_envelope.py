"""The client's side of :mod:`fedshield.transport.envelope`: sign requests, verify replies.

:class:`EnvelopeAuth` is an :class:`httpx.Auth`, so every request an
:class:`httpx.Client` built with it sends is signed, whoever builds the request. The
coordinator's signing key is read from the certificate of the very TLS connection a
reply came on (the kit holds only the CA): that certificate is checked again against the
kit's CA, must carry the role ``coordinator``, and then its bound key must verify the
reply, which must answer this request (its nonce, type, query, round and federation),
carry the status it came with and hash to the body received.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedshield.errors import IdentityError, TransportError
from fedshield.identity import (
    Kit,
    identity_of,
    load_certificate,
    signing_key_of,
    verify_issued_by,
)
from fedshield.transport.envelope import (
    ENVELOPE_HEADER,
    NONCE_BYTES,
    EnvelopeRejected,
    RequestEnvelope,
    digest_equal,
    open_reply,
    round_of_path,
    seal,
)

__all__ = ["Credentials", "EnvelopeAuth"]

_UNSIGNED_OK = frozenset({502, 503, 504})
"""Replies only ever retried, never read: a proxy's or uvicorn's own may be unsigned."""


@dataclass(frozen=True)
class Credentials:
    """Who signs a client's requests, and the CA the coordinator's key must come from.

    Parameters
    ----------
    federation : str
        The federation id, signed into every request.
    name : str
        This entity's name (its certificate's CN).
    signing_key : Ed25519PrivateKey
        The kit's ``signing.key`` (the key its certificate binds).
    ca_cert : x509.Certificate
        The federation CA: the coordinator's certificate must be issued by it.
    """

    federation: str
    name: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    ca_cert: x509.Certificate = field(repr=False)

    @classmethod
    def from_kit(cls, kit: Kit) -> Credentials:
        """Read the credentials of a (checked) kit."""
        return cls(
            federation=kit.federation,
            name=kit.name,
            signing_key=kit.signing_key(),
            ca_cert=load_certificate(kit.ca_path),
        )


_FORGED = (
    "the coordinator's reply to {what} failed verification: it is not signed by this "
    "federation's coordinator, or it does not answer this request"
)
_FORGED_HINT = (
    "Do not trust this coordinator's answers. Check that the coordinator runs with its own "
    "kit from the same `fedshield provision` run, and tell the federation's administrator."
)


class EnvelopeAuth(httpx.Auth):
    """Sign each request with :class:`Credentials`; verify each reply before it is used.

    A reply that fails verification raises :class:`~fedshield.errors.TransportError`.
    ``clock`` (seconds since the epoch) and ``nonce`` (``NONCE_BYTES`` random bytes)
    are parameters for tests.
    """

    requires_request_body = True

    def __init__(
        self,
        credentials: Credentials,
        *,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.credentials = credentials
        self._clock = clock
        self._nonce = nonce
        self._coordinator: tuple[bytes, str, Ed25519PublicKey] | None = None

    @property
    def coordinator_key(self) -> Ed25519PublicKey | None:
        """The signing key of the coordinator whose reply was last verified."""
        return self._coordinator[2] if self._coordinator is not None else None

    def sign(self, request: httpx.Request) -> RequestEnvelope:
        """Put a fresh envelope on ``request``; return it."""
        raw_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        try:
            round_number = round_of_path(request.url.path)
        except EnvelopeRejected:
            round_number = 0  # the coordinator refuses the path itself, with its reason
        envelope = RequestEnvelope(
            federation=self.credentials.federation,
            sender=self.credentials.name,
            round=round_number,
            type=f"{request.method} {raw_path}",
            query=request.url.query.decode("ascii"),
            nonce=self._nonce(NONCE_BYTES).hex(),
            ts_ms=round(self._clock() * 1000),
            payload_sha3=hashlib.sha3_256(request.content).hexdigest(),
        )
        request.headers[ENVELOPE_HEADER] = seal(envelope, self.credentials.signing_key)
        return envelope

    def _coordinator_of(self, der: bytes) -> tuple[str, Ed25519PublicKey]:
        known = self._coordinator
        if known is not None and known[0] == der:
            return known[1], known[2]
        try:
            cert = x509.load_der_x509_certificate(der)
            # Validity at the real time, as the TLS handshake checked it (``clock`` only
            # dates envelopes).
            verify_issued_by(cert, self.credentials.ca_cert, now=datetime.now(UTC))
            identity = identity_of(cert)
            if identity.role != "coordinator":
                raise IdentityError(f"the server's certificate is for a {identity.role}")
            key = signing_key_of(cert)
        except (ValueError, IdentityError) as exc:
            raise TransportError(
                f"the server's certificate is not a coordinator certificate of this "
                f"federation: {exc}",
                hint=_FORGED_HINT,
            ) from exc
        self._coordinator = (der, identity.name, key)
        return identity.name, key

    def verify(self, sent: RequestEnvelope, response: httpx.Response, der: bytes | None) -> None:
        """Check that ``response`` is the coordinator's signed answer to ``sent``.

        Raises
        ------
        TransportError
            If it is not (one message, whatever failed).
        """
        what = sent.type
        if der is None:
            raise TransportError(
                f"cannot read the coordinator's certificate from the connection ({what})"
            )
        name, key = self._coordinator_of(der)
        try:
            reply = open_reply(response.headers.get(ENVELOPE_HEADER), key)
        except EnvelopeRejected as exc:
            raise TransportError(_FORGED.format(what=what), hint=_FORGED_HINT) from exc
        body_sha3 = hashlib.sha3_256(response.content).hexdigest()
        answers = (
            reply.federation == sent.federation
            and reply.sender == name
            and reply.in_reply_to == sent.nonce
            and reply.type == sent.type
            and reply.query == sent.query
            and reply.round == sent.round
            and reply.status == response.status_code
        )
        if not answers or not digest_equal(reply.payload_sha3, body_sha3):
            raise TransportError(_FORGED.format(what=what), hint=_FORGED_HINT)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Sign, send, then verify the reply (httpx drives this generator)."""
        sent = self.sign(request)
        response = yield request
        # The certificate of this connection, read before the connection is released.
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        response.read()
        if ENVELOPE_HEADER not in response.headers and response.status_code in _UNSIGNED_OK:
            return
        self.verify(sent, response, der)
