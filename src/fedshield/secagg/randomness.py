"""Randomness for secure aggregation, always passed in as a parameter.

Every secagg function that needs random bits takes ``rng: SecureRandom``; nothing in
``fedshield.secagg`` reads a global RNG. Two implementations:

* :func:`system_random` -- the operating system's CSPRNG (``os.urandom``). The only one
  to use in production. Its bulk draws (:meth:`SecureRandom.uniform_u64`, the megabytes
  of stochastic-rounding randomness a round needs) are the AES-256-CTR keystream under a
  fresh 32-byte ``os.urandom`` key per call: a one-shot CTR-DRBG, indistinguishable from
  uniform as long as AES is a PRF, and an order of magnitude faster than reading that
  many bytes from the kernel's generator.
* :func:`deterministic_random` -- an AES-256-CTR keystream keyed by a hash of a seed, so
  a test or a simulation replays bit for bit. **Tests only.**

What misuse breaks: using :func:`deterministic_random` outside tests. Anyone who knows
(or guesses) the seed recomputes every mask seed, every Shamir coefficient and every
private key derived from it, and with them each participant's individual update. Never
use :mod:`random` or numpy's generators (MT19937, PCG64) for anything secret: their
state can be recovered from their output.
"""

from __future__ import annotations

import builtins
import math
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedshield.errors import ConfigError
from fedshield.secagg import prg

__all__ = ["SecureRandom", "deterministic_random", "system_random"]

Shape = int | tuple[int, ...]

_DRBG_INFO = b"fedshield/secagg/v1/deterministic-random"
_ZERO_IV = bytes(16)


@runtime_checkable
class SecureRandom(Protocol):
    """A source of cryptographically secure random bits.

    Implementations must be unpredictable to anyone but their owner. The two provided
    are :func:`system_random` and (for tests) :func:`deterministic_random`.
    """

    def bytes(self, n: int) -> builtins.bytes:
        """Return ``n`` uniformly random bytes.

        Parameters
        ----------
        n : int
            Number of bytes, >= 0.

        Returns
        -------
        bytes
            Exactly ``n`` bytes.
        """
        ...

    def uniform_u64(self, shape: Shape) -> npt.NDArray[np.uint64]:
        """Return independent uniform 64-bit unsigned integers.

        Parameters
        ----------
        shape : int or tuple of int
            Shape of the result.

        Returns
        -------
        numpy.ndarray
            A fresh, writable ``uint64`` array of that shape.
        """
        ...


def _count(shape: Shape) -> tuple[tuple[int, ...], int]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in dims):
        raise ConfigError(f"shape must be non-negative integers, got {shape!r}")
    return dims, math.prod(dims)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be an integer >= 0, got {n!r}")


def _keystream_u64(encryptor: Any, dims: tuple[int, ...], count: int) -> npt.NDArray[np.uint64]:
    """Return the next ``8 * count`` bytes of ``encryptor``'s keystream as ``<u8`` words.

    The keystream is written by OpenSSL straight into the result's buffer (no copy).
    """
    buffer = np.empty(8 * count + 15, dtype=np.uint8)  # update_into wants a block of slack
    prg.fill_keystream(encryptor, memoryview(buffer), 8 * count)  # type: ignore[arg-type]
    words = buffer[: 8 * count].view("<u8").astype(np.uint64, copy=False)
    return words.reshape(dims)


class _SystemRandom:
    """``os.urandom`` behind the :class:`SecureRandom` protocol (bulk: a one-shot CTR-DRBG)."""

    def bytes(self, n: int) -> builtins.bytes:
        _check_n(n)
        return os.urandom(n)

    def uniform_u64(self, shape: Shape) -> npt.NDArray[np.uint64]:
        dims, count = _count(shape)
        # A fresh 256-bit kernel key per call, used for one keystream only.
        encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(_ZERO_IV)).encryptor()
        return _keystream_u64(encryptor, dims, count)

    def __repr__(self) -> str:
        return "system_random()"


class _DeterministicRandom:
    """AES-256-CTR keystream keyed by HKDF(seed): reproducible, for tests only."""

    def __init__(self, seed: builtins.bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DRBG_INFO).derive(seed)
        # One keystream, consumed in order: two calls never return overlapping bits.
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()

    def bytes(self, n: int) -> builtins.bytes:
        _check_n(n)
        return self._encryptor.update(builtins.bytes(n))

    def uniform_u64(self, shape: Shape) -> npt.NDArray[np.uint64]:
        dims, count = _count(shape)
        # The same bytes as self.bytes(8 * count), without the intermediate copies.
        return _keystream_u64(self._encryptor, dims, count)

    def __repr__(self) -> str:
        return "deterministic_random(<seed>)  # tests only"


def system_random() -> SecureRandom:
    """Return the operating system's CSPRNG (``os.urandom``) as a :class:`SecureRandom`.

    Returns
    -------
    SecureRandom
        A stateless source; every call reads fresh bytes from the kernel (for
        ``uniform_u64``, a fresh AES-256-CTR key from the kernel).
    """
    return _SystemRandom()


def deterministic_random(seed: builtins.bytes) -> SecureRandom:
    """Return a reproducible :class:`SecureRandom` for tests and simulations only.

    The output is the AES-256-CTR keystream (zero IV, 128-bit big-endian counter) under
    the key ``HKDF-SHA256(seed, info=b"fedshield/secagg/v1/deterministic-random")``.
    Successive calls consume the stream in order, so the same seed and the same call
    sequence give the same bits on every machine.

    Parameters
    ----------
    seed : bytes
        Any non-empty byte string.

    Returns
    -------
    SecureRandom
        A stateful source.

    Raises
    ------
    ConfigError
        If ``seed`` is not a non-empty ``bytes``.

    Warnings
    --------
    Everything drawn from it is known to whoever knows the seed. Never use it for a real
    federation's keys, masks or shares.
    """
    if not isinstance(seed, builtins.bytes) or not seed:
        raise ConfigError(f"seed must be non-empty bytes, got {type(seed).__name__}")
    return _DeterministicRandom(seed)
