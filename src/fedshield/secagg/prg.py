"""The mask PRG: a 32-byte seed expanded into a vector of ring elements.

``expand(seed, length=d, ring_bits=b)`` is the AES-256-CTR keystream under ``key = seed``
with an all-zero 16-byte initial counter block (the counter is the whole 128-bit block,
incremented big-endian, as in NIST SP 800-38A), read as little-endian unsigned ``b``-bit
words. The keystream is written straight into the result's buffer by OpenSSL in chunks;
there is no Python loop over coordinates.

What misuse breaks: the zero IV is safe only because every seed is used for exactly one
vector. A seed reused for two vectors (the same pair in two rounds, or one seed for a
self mask and a pairwise mask) gives two masks whose difference is zero, and the server
learns the difference of two inputs. Always derive the seed with
:func:`fedshield.secagg.kdf.derive`, whose label, round and parties make it unique.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedshield.errors import ConfigError, ProtocolError

__all__ = ["RING_BITS", "SEED_SIZE", "expand"]

SEED_SIZE = 32
"""Bytes in a mask seed (an AES-256 key)."""

RING_BITS: tuple[int, ...] = (32, 64)
"""The supported ring sizes: arithmetic is modulo ``2**ring_bits``."""

_BLOCK = 16
# A zero plaintext chunk that stays in cache; the output streams to memory.
_CHUNK = 1 << 16
_ZEROS = bytes(_CHUNK)
_ZERO_IV = bytes(_BLOCK)


def _keystream(key: bytes, *, iv: bytes, nbytes: int) -> npt.NDArray[np.uint8]:
    """Return ``nbytes`` of AES-256-CTR keystream (the core of :func:`expand`).

    Parameters
    ----------
    key : bytes
        32-byte AES-256 key.
    iv : bytes
        16-byte initial counter block.
    nbytes : int
        Number of keystream bytes, >= 0.

    Returns
    -------
    numpy.ndarray
        A ``uint8`` view of exactly ``nbytes`` bytes. Its base buffer is up to 15 bytes
        longer, because ``update_into`` asks for one block of slack.
    """
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    buffer = np.empty(nbytes + _BLOCK - 1, dtype=np.uint8)
    out = memoryview(buffer)  # type: ignore[arg-type]  # numpy stubs lack __buffer__ on 3.11
    for start in range(0, nbytes, _CHUNK):
        size = min(_CHUNK, nbytes - start)
        encryptor.update_into(_ZEROS[:size] if size < _CHUNK else _ZEROS, out[start:])
    return buffer[:nbytes]


def expand(
    seed: bytes, *, length: int, ring_bits: Literal[32, 64]
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Expand a seed into ``length`` uniform elements of the ring ``Z / 2**ring_bits``.

    Parameters
    ----------
    seed : bytes
        Exactly 32 bytes, used as the AES-256 key. Must never be used for a second
        vector (see the module docstring).
    length : int
        Number of ring elements, >= 0.
    ring_bits : {32, 64}
        Bits per element.

    Returns
    -------
    numpy.ndarray
        A writable ``uint32`` (``ring_bits=32``) or ``uint64`` array of shape
        ``(length,)``: word ``i`` is keystream bytes ``[i*w, (i+1)*w)`` read
        little-endian, with ``w = ring_bits // 8``.

    Raises
    ------
    ProtocolError
        If ``seed`` is not 32 bytes.
    ConfigError
        If ``length`` is negative or ``ring_bits`` is not 32 or 64.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
        got = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ProtocolError(f"a mask seed must be {SEED_SIZE} bytes, got {got}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ConfigError(f"length must be an integer >= 0, got {length!r}")
    if ring_bits not in RING_BITS:
        raise ConfigError(f"ring_bits must be 32 or 64, got {ring_bits!r}")
    width = ring_bits // 8
    raw = _keystream(bytes(seed), iv=_ZERO_IV, nbytes=length * width)
    words = raw.view(np.dtype("<u4") if ring_bits == 32 else np.dtype("<u8"))
    native = np.uint32 if ring_bits == 32 else np.uint64
    # A no-op on little-endian hosts; a byte swap on big-endian ones.
    return words.astype(native, copy=False)
