r"""Audit entries: the canonical encoding, the hash chain and the coordinator's signature.

An entry is ``{seq, time, actor, action, resource, outcome, metadata}``. Its canonical
encoding is the UTF-8 of compact JSON (``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=True, allow_nan=False)``):

* ``seq`` is an integer from 1, contiguous in the log;
* ``time`` is UTC with microseconds, always in the form ``2024-05-01T12:00:00.000000Z``;
* ``metadata`` is strict JSON data: objects with string keys, arrays, strings, integers,
  booleans, ``null`` and finite floats. A float is written the way Python's ``repr`` writes
  it (the shortest string that reads back to the same double: ``0.1``, ``1e+16``,
  ``1.0``), which is what ``json.dumps`` does; NaN and infinities are refused. Keys are
  sorted by code point and every non-ASCII character is escaped as ``\uXXXX``. This is not
  RFC 8785 (JCS), whose numbers follow ECMAScript (``1.0`` is ``1`` there): a verifier in
  another language must reproduce Python's float ``repr``.

The chain::

    anchor     = SHA3-256(b"fedshield/audit/v1/anchor" || lp(federation) || public_key)
    entry_hash = SHA3-256(b"fedshield/audit/v1/chain" || prev_hash || canonical(entry))

where ``prev_hash`` is the previous entry's hash (the anchor for ``seq`` 1) and
``lp(x)`` is ``x`` in UTF-8 prefixed by its length as 4 big-endian bytes. The anchor
binds the log to its federation and to the coordinator's audit key: moving a log to
another federation or key changes every hash.

Each entry hash is signed (Ed25519) by the coordinator's audit key over::

    b"fedshield/audit/v1/entry" || lp(federation) || seq (8 bytes, big-endian) || entry_hash

Signatures fail opaquely (:class:`~fedshield.errors.AuditError` without detail); the
verifier (:mod:`fedshield.audit.verify`) names the entry and the check because an auditor
reading a log they hold needs to know where it broke, and learns nothing secret from it.

:func:`check_metadata` is the guard that keeps payloads out of the log: it refuses byte
strings, arrays and tensors, long opaque strings, and oversized metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedshield.errors import AuditError

__all__ = [
    "ANCHOR_LABEL",
    "CHAIN_LABEL",
    "ENTRY_LABEL",
    "MAX_METADATA_BYTES",
    "MAX_STRING_CHARS",
    "Entry",
    "anchor_hash",
    "canonical_json",
    "chain_hash",
    "chain_hash_encoded",
    "check_metadata",
    "entry_signing_bytes",
    "public_key_bytes",
    "sign_entry",
    "verify_entry_signature",
]

ANCHOR_LABEL: Final = b"fedshield/audit/v1/anchor"
CHAIN_LABEL: Final = b"fedshield/audit/v1/chain"
ENTRY_LABEL: Final = b"fedshield/audit/v1/entry"

MAX_METADATA_BYTES: Final = 16_384
"""The largest canonical metadata an entry may carry (identifiers and counts, not data)."""

MAX_STRING_CHARS: Final = 4_096
"""The longest string value metadata may hold (a failure reason, a list of names)."""

MAX_OPAQUE_CHARS: Final = 160
"""Longer strings of only base64/hex characters look like encoded blobs and are refused.

A SHA3-256 hex digest (64) and an Ed25519 signature in hex (128) fit under it."""

_PLAIN_SCALARS: Final = frozenset({int, float, bool})
_MAX_ITEMS: Final = 1_024
_MAX_DEPTH: Final = 8
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_-]*")
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def _lp(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def _sha3(*parts: bytes) -> bytes:
    digest = hashlib.sha3_256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def canonical_time(time: datetime) -> str:
    """Return ``time`` in the canonical form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC).

    Raises
    ------
    ValueError
        If ``time`` is naive.
    """
    if time.tzinfo is UTC:  # the common case: only drop isoformat's "+00:00"
        return time.isoformat(timespec="microseconds")[:-6] + "Z"
    if time.tzinfo is None or time.tzinfo.utcoffset(time) is None:
        raise ValueError(f"time must be timezone-aware, got {time!r}")
    # isoformat, not strftime (several times faster); same text as _TIME_FORMAT.
    utc = time.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def canonical_json(value: object) -> bytes:
    """Return the canonical encoding of strict JSON data (see the module docstring).

    Raises
    ------
    ValueError
        If ``value`` holds NaN or an infinity, a non-string key, or a type JSON lacks.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except TypeError as exc:
        raise ValueError(f"audit data must be strict JSON: {exc}") from exc
    return text.encode("ascii")


@dataclass(frozen=True)
class Entry:
    """One audit entry (version 1 of the format).

    Attributes
    ----------
    seq
        Position in the log, from 1, without gaps.
    time
        When it happened (timezone-aware; encoded in UTC to the microsecond).
    actor
        Who did it (a participant name, ``coordinator``, ``admin-cli``).
    action
        What was done, dotted (``model.commit``).
    resource
        What it was done to (``model/3``).
    outcome
        ``ok``, ``denied``, ``failed``, ``warn``, ...
    metadata
        Strict JSON facts: identifiers, hashes, counts; never payloads.
    """

    seq: int
    time: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate ``seq`` and ``time``."""
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise ValueError(f"seq must be an integer >= 1, got {self.seq!r}")
        canonical_time(self.time)

    def to_json(self) -> dict[str, Any]:
        """Return the entry as JSON data (the object that is canonically encoded)."""
        return {
            "seq": self.seq,
            "time": canonical_time(self.time),
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        """Read an entry written by :meth:`to_json`.

        Raises
        ------
        ValueError
            If a field is missing or malformed.
        """
        try:
            time = datetime.strptime(str(data["time"]), _TIME_FORMAT).replace(tzinfo=UTC)
            metadata = data["metadata"]
            if not isinstance(metadata, Mapping):
                raise ValueError("metadata must be an object")
            return cls(
                seq=data["seq"],
                time=time,
                actor=str(data["actor"]),
                action=str(data["action"]),
                resource=str(data["resource"]),
                outcome=str(data["outcome"]),
                metadata=dict(metadata),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit entry: {exc!r}") from exc

    def canonical(self) -> bytes:
        """Return the canonical encoding that the chain hashes."""
        return canonical_json(self.to_json())


def public_key_bytes(key: ed25519.Ed25519PublicKey) -> bytes:
    """Return the raw 32 bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def anchor_hash(*, federation: str, public_key: bytes) -> bytes:
    """Return the ``prev_hash`` of entry 1: the log's binding to federation and key."""
    if len(public_key) != 32:
        raise ValueError(f"public_key must be 32 raw bytes, got {len(public_key)}")
    return _sha3(ANCHOR_LABEL, _lp(federation), public_key)


def chain_hash(prev_hash: bytes, entry: Entry) -> bytes:
    """Return ``entry``'s hash: SHA3-256 over the label, ``prev_hash`` and the entry."""
    return chain_hash_encoded(prev_hash, entry.canonical())


def chain_hash_encoded(prev_hash: bytes, encoding: bytes) -> bytes:
    """Return the hash of the entry whose canonical encoding is ``encoding``."""
    if len(prev_hash) != 32:
        raise ValueError(f"prev_hash must be 32 bytes, got {len(prev_hash)}")
    return _sha3(CHAIN_LABEL, prev_hash, encoding)


def entry_signing_bytes(*, federation: str, seq: int, entry_hash: bytes) -> bytes:
    """Return the bytes the coordinator signs for entry ``seq``."""
    if len(entry_hash) != 32:
        raise ValueError(f"entry_hash must be 32 bytes, got {len(entry_hash)}")
    return ENTRY_LABEL + _lp(federation) + seq.to_bytes(8, "big") + entry_hash


def sign_entry(
    key: ed25519.Ed25519PrivateKey, *, federation: str, seq: int, entry_hash: bytes
) -> bytes:
    """Return the coordinator's 64-byte signature of entry ``seq`` with hash ``entry_hash``."""
    return key.sign(entry_signing_bytes(federation=federation, seq=seq, entry_hash=entry_hash))


def verify_entry_signature(
    public_key: ed25519.Ed25519PublicKey,
    signature: bytes,
    *,
    federation: str,
    seq: int,
    entry_hash: bytes,
) -> None:
    """Check an entry signature.

    Raises
    ------
    AuditError
        If the signature is not the audit key's signature of this entry (opaque).
    """
    try:
        public_key.verify(
            signature, entry_signing_bytes(federation=federation, seq=seq, entry_hash=entry_hash)
        )
    except (InvalidSignature, ValueError) as exc:
        raise AuditError("invalid audit signature") from exc


def _looks_like_array(value: object) -> bool:
    # numpy arrays, torch tensors and anything array-like; a 0-d numpy scalar is a number.
    ndim = getattr(value, "ndim", None)
    if isinstance(ndim, int) and ndim > 0:
        return True
    return hasattr(value, "__array__") and not isinstance(ndim, int)


def check_metadata(value: object, *, path: str = "metadata", _depth: int = 0) -> None:
    """Refuse metadata that could carry a payload (weights, updates, data, keys, shares).

    Metadata is for identifiers, hashes, counts, scores and reasons. This refuses byte
    strings, arrays and tensors of any size, strings longer than
    :data:`MAX_STRING_CHARS`, strings over :data:`MAX_OPAQUE_CHARS` made only of
    base64/hex characters (an encoded blob), containers of more than 1,024 items or
    deeper than 8, and more than :data:`MAX_METADATA_BYTES` in all. Numbers (including
    numpy scalars), booleans, ``None``, datetimes and short strings pass.

    Parameters
    ----------
    value
        The metadata (a mapping at the top level) or a value inside it.
    path
        Where ``value`` is, for the error message.

    Raises
    ------
    ValueError
        Naming the offending key and why. This is a programming error, never data.
    """
    if _depth > _MAX_DEPTH:
        raise ValueError(f"{path} is nested deeper than {_MAX_DEPTH}: metadata is not data")
    if value is None or type(value) in _PLAIN_SCALARS:
        return  # the common case, on every audited event: nothing else to check
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(
            f"{path} is a byte string ({len(value)} bytes): payloads never go in audit"
        )
    if _looks_like_array(value):
        shape = getattr(value, "shape", "?")
        raise ValueError(f"{path} is an array (shape {shape}): payloads never go in audit")
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise ValueError(f"{path} is a {len(value)}-character string (max {MAX_STRING_CHARS})")
        if len(value) > MAX_OPAQUE_CHARS and _OPAQUE.fullmatch(value):
            raise ValueError(f"{path} looks like an encoded blob ({len(value)} base64/hex chars)")
        return
    if isinstance(value, float) and math.isnan(value):
        return  # stored as the string "nan"
    if isinstance(value, Mapping):
        if len(value) > _MAX_ITEMS:
            raise ValueError(f"{path} has {len(value)} keys (max {_MAX_ITEMS})")
        for key, item in value.items():
            check_metadata(item, path=f"{path}[{key!r}]", _depth=_depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        if len(value) > _MAX_ITEMS:
            raise ValueError(f"{path} has {len(value)} items (max {_MAX_ITEMS})")
        for i, item in enumerate(value):
            check_metadata(item, path=f"{path}[{i}]", _depth=_depth + 1)
    if _depth == 0:
        size = len(json.dumps(value, default=str, skipkeys=True))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"{path} is {size} bytes as JSON (max {MAX_METADATA_BYTES})")
