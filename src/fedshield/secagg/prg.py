"""The mask PRG: a 32-byte seed expanded into a vector of ring elements.

``expand(seed, length=d, ring_bits=b)`` is the AES-256-CTR keystream under ``key = seed``
with an all-zero 16-byte initial counter block (the counter is the whole 128-bit block,
incremented big-endian, as in NIST SP 800-38A), read as little-endian unsigned ``b``-bit
words. The keystream is written straight into the result's buffer by OpenSSL in chunks;
there is no Python loop over coordinates.

``accumulate(vector, terms)`` adds ``sign * expand(seed)`` for many seeds to one ring
vector in place, without materialising any mask: it walks the vector in cache-sized
chunks and, for each chunk, writes every seed's next keystream bytes into one small
scratch buffer and adds (or subtracts) it. This is how clients apply their masks and the
server removes them; it costs little more than the keystream itself.

What misuse breaks: the zero IV is safe only because every seed is used for exactly one
vector. A seed reused for two vectors (the same pair in two rounds, or one seed for a
self mask and a pairwise mask) gives two masks whose difference is zero, and the server
learns the difference of two inputs. Always derive the seed with
:func:`fedshield.secagg.kdf.derive`, whose label, round and parties make it unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedshield.errors import ConfigError, ProtocolError

__all__ = ["RING_BITS", "SEED_SIZE", "accumulate", "expand"]

SEED_SIZE = 32
"""Bytes in a mask seed (an AES-256 key)."""

RING_BITS: tuple[int, ...] = (32, 64)
"""The supported ring sizes: arithmetic is modulo ``2**ring_bits``."""

_BLOCK = 16
# A zero plaintext chunk that stays in cache; the output streams to memory.
_CHUNK = 1 << 16
_ZEROS = bytes(_CHUNK)
_ZERO_IV = bytes(_BLOCK)
# accumulate(): bytes of the vector processed per step. The vector chunk, the scratch
# keystream and the zero plaintext (3 x 64 KiB) stay in L2 while every seed's keystream
# is added to the chunk; smaller steps pay more Python overhead per byte.
_STEP = 1 << 16
_STEP_ZEROS = memoryview(bytes(_STEP))


def fill_keystream(encryptor: Any, out: memoryview, nbytes: int) -> None:
    """Write the next ``nbytes`` keystream bytes of ``encryptor`` to ``out[:nbytes]``.

    ``out`` must be at least ``nbytes + 15`` bytes long (``update_into`` asks for one
    block of slack). The encryptor's counter advances by ``nbytes``. Internal: shared
    with :mod:`~fedshield.secagg.randomness`.
    """
    for start in range(0, nbytes, _CHUNK):
        size = min(_CHUNK, nbytes - start)
        encryptor.update_into(_ZEROS[:size] if size < _CHUNK else _ZEROS, out[start:])


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
    fill_keystream(encryptor, out, nbytes)
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


def accumulate(
    vector: npt.NDArray[np.unsignedinteger[Any]], terms: Sequence[tuple[bytes, int]]
) -> None:
    """Add ``sign * expand(seed)`` to ``vector`` in place for every ``(seed, sign)``.

    The result is exactly ``vector + sum(sign * expand(seed, length=len(vector),
    ring_bits=...))`` modulo ``2**ring_bits``, but no mask is ever held in memory: the
    vector is processed in small chunks, each seed's AES-CTR stream continuing from one
    chunk to the next.

    Parameters
    ----------
    vector : numpy.ndarray
        A writable, C-contiguous, 1-D ``uint32`` (32-bit ring) or ``uint64`` (64-bit
        ring) array; it is updated in place.
    terms : sequence of (bytes, int)
        ``(seed, sign)`` pairs: a 32-byte seed (see :func:`expand`) and ``+1`` or ``-1``.

    Raises
    ------
    ProtocolError
        If a seed is not 32 bytes.
    ConfigError
        If the vector is not a writable contiguous 1-D ``uint32``/``uint64`` array or a
        sign is not ``+1`` or ``-1``. Nothing is changed then.
    """
    if (
        not isinstance(vector, np.ndarray)
        or vector.ndim != 1
        or vector.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64))
        or not vector.flags.c_contiguous
        or not vector.flags.writeable
    ):
        raise ConfigError("accumulate() needs a writable contiguous 1-D uint32/uint64 vector")
    streams = []
    for seed, sign in terms:
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
            got = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
            raise ProtocolError(f"a mask seed must be {SEED_SIZE} bytes, got {got}")
        if isinstance(sign, bool) or sign not in (1, -1):
            raise ConfigError(f"a mask sign must be +1 or -1, got {sign!r}")
        encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_IV)).encryptor()
        streams.append((encryptor, np.add if sign == 1 else np.subtract))
    if not streams or vector.size == 0:
        return
    width = vector.dtype.itemsize
    little = np.dtype("<u4") if width == 4 else np.dtype("<u8")
    scratch = np.empty(_STEP + _BLOCK - 1, dtype=np.uint8)
    out = memoryview(scratch)  # type: ignore[arg-type]  # numpy stubs lack __buffer__ on 3.11
    per_step = _STEP // width
    for start in range(0, vector.size, per_step):
        part = vector[start : start + per_step]
        size = part.size * width
        zeros = _STEP_ZEROS[:size]
        words = scratch[:size].view(little)
        for encryptor, combine in streams:
            encryptor.update_into(zeros, out)
            combine(part, words, out=part)
