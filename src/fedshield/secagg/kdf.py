r"""Key derivation for secure aggregation: HKDF-SHA256 with domain separation.

:func:`derive` turns input keying material (an X25519 shared secret or a 32-byte seed)
into a 32-byte key bound to a purpose (``label``), a federation, a round and the ordered
parties involved (RFC 5869, empty salt)::

    info = b"fedshield/secagg/v1/" + utf8(label) + b"\x00" + canonical(federation, round, parties)

:func:`canonical` is length-prefixed (a fixed-width length before every string, a
fixed-width round and party count), so two different ``(federation, round, parties)``
never give the same bytes, and labels cannot contain ``\x00``, so the whole ``info`` is
injective: distinct inputs derive independent keys.

What misuse breaks: omitting or fixing the round, or the parties, makes keys repeat
across rounds or across pairs; a repeated mask seed lets the server subtract two masked
inputs and learn their difference. Parties are taken in the order given: a pairwise key
must be derived with ``tuple(sorted((i, j)))`` by both sides.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedshield.errors import ConfigError

__all__ = ["INFO_PREFIX", "KEY_SIZE", "canonical", "derive", "hkdf_sha256"]

INFO_PREFIX = b"fedshield/secagg/v1/"
"""Prefix of every HKDF ``info`` in secure aggregation (version 1)."""

KEY_SIZE = 32
"""Bytes in every derived key."""

_MIN_IKM = 16
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


def _text(value: str, *, name: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__}")
    raw = value.encode("utf-8")
    if len(raw) > _MAX_U32:
        raise ConfigError(f"{name} is too long: {len(raw)} bytes")
    return struct.pack(">I", len(raw)) + raw


def canonical(federation: str, round: int, parties: Sequence[str]) -> bytes:
    """Encode ``(federation, round, parties)`` unambiguously.

    The encoding is ``u32be(len) || utf8(federation) || u64be(round) || u32be(count) ||``
    then ``u32be(len) || utf8(party)`` for each party, in the order given. It is also
    suitable as AES-GCM associated data or as part of a signed message.

    Parameters
    ----------
    federation : str
        Federation identifier.
    round : int
        Round number, ``0 <= round < 2**64``.
    parties : sequence of str
        Participant identifiers; order matters.

    Returns
    -------
    bytes
        The encoding; injective over all valid inputs.

    Raises
    ------
    ConfigError
        If a value has the wrong type or is out of range.
    """
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= _MAX_U64:
        raise ConfigError(f"round must be an integer in [0, 2**64), got {round!r}")
    if isinstance(parties, str):
        raise ConfigError("parties must be a sequence of ids, not a single str")
    chunks = [_text(federation, name="federation"), struct.pack(">Q", round)]
    chunks.append(struct.pack(">I", len(parties)))
    chunks.extend(_text(party, name="party") for party in parties)
    return b"".join(chunks)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Run HKDF-SHA256 (RFC 5869) exactly as :func:`derive` does, with explicit inputs.

    Parameters
    ----------
    ikm : bytes
        Input keying material.
    salt : bytes or None
        Salt; ``None`` means a string of 32 zero bytes (RFC 5869).
    info : bytes
        Context and application specific information.
    length : int
        Output length in bytes, at most ``255 * 32``.

    Returns
    -------
    bytes
        The output keying material.
    """
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive(
    ikm: bytes, *, label: str, federation: str, round: int, parties: tuple[str, ...]
) -> bytes:
    r"""Derive a 32-byte key for one purpose, federation, round and tuple of parties.

    Parameters
    ----------
    ikm : bytes
        Input keying material, at least 16 bytes (an X25519 shared secret or a seed).
    label : str
        The purpose, e.g. ``"share"``, ``"self"`` or ``"pair"``; non-empty, no ``"\x00"``.
    federation : str
        Federation identifier.
    round : int
        Round number, ``0 <= round < 2**64``.
    parties : tuple of str
        The parties the key belongs to, in order (sort them for a symmetric pair key).

    Returns
    -------
    bytes
        32 bytes of HKDF-SHA256 output with ``info`` as in the module docstring.

    Raises
    ------
    ConfigError
        If an argument has the wrong type, ``ikm`` is shorter than 16 bytes, or
        ``label`` is empty or contains ``"\x00"``.
    """
    if not isinstance(ikm, bytes | bytearray) or len(ikm) < _MIN_IKM:
        got = len(ikm) if isinstance(ikm, bytes | bytearray) else type(ikm).__name__
        raise ConfigError(f"ikm must be at least {_MIN_IKM} bytes, got {got}")
    if not isinstance(label, str) or not label or "\x00" in label:
        raise ConfigError(f"label must be a non-empty str without NUL, got {label!r}")
    if not isinstance(parties, tuple):
        raise ConfigError(f"parties must be a tuple of str, got {type(parties).__name__}")
    info = INFO_PREFIX + label.encode("utf-8") + b"\x00" + canonical(federation, round, parties)
    return hkdf_sha256(bytes(ikm), salt=None, info=info, length=KEY_SIZE)
