"""Shamir secret sharing of 32-byte secrets over GF(2**521 - 1).

Shamir, "How to Share a Secret" (CACM 1979). A secret ``s`` (32 bytes, read big-endian,
so ``s < 2**256 < p``) becomes the constant term of a polynomial of degree
``threshold - 1`` whose other coefficients are uniform in GF(p), drawn from the injected
:class:`~fedshield.secagg.randomness.SecureRandom`; holder ``x`` (a small positive
integer) receives ``Share(x, f(x))``. Any ``threshold`` shares give ``s`` back by
Lagrange interpolation at 0; any ``threshold - 1`` shares are uniformly distributed
whatever ``s`` is, so they reveal nothing about it.

The prime is the Mersenne prime ``p = 2**521 - 1``; a share's ``y`` fits in 66 bytes.

What misuse breaks: combining shares of different secrets, or a forged share, yields a
wrong value. :func:`combine` rejects a result that is not a 32-byte secret (which
catches a wrong combination with probability about ``1 - 2**-265``), but this module
has no MAC: shares must travel authenticated (inside AES-GCM). Revealing ``threshold``
shares of both ``b_i`` and ``s_sk_i`` of one client unmasks its input; the rule that
prevents it lives in the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedshield.errors import ConfigError, ProtocolError
from fedshield.secagg.randomness import SecureRandom

__all__ = ["PRIME", "SECRET_SIZE", "SHARE_SIZE", "Share", "combine", "split"]

PRIME = 2**521 - 1
"""The field modulus, the Mersenne prime ``2**521 - 1``."""

SECRET_SIZE = 32
"""Bytes in a secret."""

_X_SIZE = 4
_Y_SIZE = 66
SHARE_SIZE = _X_SIZE + _Y_SIZE
"""Bytes in :meth:`Share.to_bytes`: ``u32be(x) || y`` as 66 big-endian bytes."""

_MAX_X = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Share:
    """One holder's point ``(x, f(x))`` of a sharing polynomial.

    Attributes
    ----------
    x : int
        The holder, ``1 <= x < 2**32``.
    y : int
        The polynomial's value at ``x``, ``0 <= y < 2**521 - 1``.
    """

    x: int
    y: int

    def __post_init__(self) -> None:
        if isinstance(self.x, bool) or not isinstance(self.x, int) or not 1 <= self.x <= _MAX_X:
            raise ProtocolError(f"share x must be an integer in [1, 2**32), got {self.x!r}")
        if isinstance(self.y, bool) or not isinstance(self.y, int) or not 0 <= self.y < PRIME:
            raise ProtocolError("share y must be an integer in [0, 2**521 - 1)")

    def to_bytes(self) -> bytes:
        """Return the fixed-length encoding ``u32be(x) || y`` (70 bytes).

        Returns
        -------
        bytes
            :data:`SHARE_SIZE` bytes.
        """
        return self.x.to_bytes(_X_SIZE, "big") + self.y.to_bytes(_Y_SIZE, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse the encoding of :meth:`to_bytes`.

        Parameters
        ----------
        data : bytes
            Exactly :data:`SHARE_SIZE` bytes.

        Returns
        -------
        Share
            The decoded share.

        Raises
        ------
        ProtocolError
            If the length is wrong, ``x`` is 0 or ``y`` is not below the prime.
        """
        if not isinstance(data, bytes | bytearray) or len(data) != SHARE_SIZE:
            got = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
            raise ProtocolError(f"a share is {SHARE_SIZE} bytes, got {got}")
        x = int.from_bytes(data[:_X_SIZE], "big")
        y = int.from_bytes(data[_X_SIZE:], "big")
        return cls(x, y)


def _field_element(rng: SecureRandom, prime: int) -> int:
    """Return a uniform element of GF(prime) by rejection sampling (no modulo bias)."""
    bits = prime.bit_length()
    nbytes = (bits + 7) // 8
    excess = 8 * nbytes - bits
    while True:
        value = int.from_bytes(rng.bytes(nbytes), "big") >> excess
        if value < prime:
            return value


def _evaluate(coefficients: Sequence[int], x: int, prime: int) -> int:
    """Horner evaluation of ``sum(c[i] * x**i)`` modulo ``prime``."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % prime
    return acc


def _split_int(
    secret: int, *, threshold: int, holders: Sequence[int], rng: SecureRandom, prime: int
) -> dict[int, int]:
    coefficients = [secret] + [_field_element(rng, prime) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x, prime) for x in holders}


def _batch_inverse(values: Sequence[int], prime: int) -> list[int]:
    """Invert every value modulo ``prime`` with a single ``pow`` (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % prime)
    inverse = pow(prefix[-1], -1, prime)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % prime
        inverse = inverse * values[i] % prime
    return out


def _interpolate_at_zero(points: Sequence[tuple[int, int]], prime: int) -> int:
    """Return ``f(0)`` for the polynomial of degree ``len(points) - 1`` through ``points``.

    ``f(0) = sum_i y_i * prod_{j != i} x_j / (x_j - x_i)``.
    """
    xs = [x for x, _ in points]
    numerator = 1
    for x in xs:
        numerator = numerator * x % prime
    denominators = []
    for i, xi in enumerate(xs):
        d = xi
        for j, xj in enumerate(xs):
            if j != i:
                d = d * (xj - xi) % prime
        denominators.append(d)
    acc = 0
    for (_, yi), inv in zip(points, _batch_inverse(denominators, prime), strict=True):
        acc += yi * inv % prime
    return acc % prime * numerator % prime


def _check_threshold(threshold: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ConfigError(f"threshold must be an integer >= 1, got {threshold!r}")


def split(
    secret: bytes, *, threshold: int, holders: Sequence[int], rng: SecureRandom
) -> dict[int, Share]:
    """Split a 32-byte secret into one share per holder; any ``threshold`` recover it.

    Parameters
    ----------
    secret : bytes
        Exactly 32 bytes.
    threshold : int
        Shares needed to recover, ``1 <= threshold <= len(holders)``. With 1 every
        holder alone learns the secret.
    holders : sequence of int
        Distinct holder numbers, each in ``[1, 2**32)``.
    rng : SecureRandom
        Source of the polynomial's coefficients.

    Returns
    -------
    dict of int to Share
        ``{x: Share(x, f(x))}`` for every holder.

    Raises
    ------
    ConfigError
        If the secret is not 32 bytes, a holder is out of range or repeated, or the
        threshold is out of range.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_SIZE:
        got = len(secret) if isinstance(secret, bytes | bytearray) else type(secret).__name__
        raise ConfigError(f"a secret must be {SECRET_SIZE} bytes, got {got}")
    _check_threshold(threshold)
    xs = list(holders)
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= _MAX_X:
            raise ConfigError(f"holders must be integers in [1, 2**32), got {x!r}")
    if len(set(xs)) != len(xs):
        raise ConfigError(f"holders must be distinct, got {sorted(xs)}")
    if threshold > len(xs):
        raise ConfigError(f"threshold {threshold} exceeds the number of holders {len(xs)}")
    values = _split_int(
        int.from_bytes(secret, "big"), threshold=threshold, holders=xs, rng=rng, prime=PRIME
    )
    return {x: Share(x, y) for x, y in values.items()}


def combine(shares: Mapping[int, Share], *, threshold: int) -> bytes:
    """Recover a secret from ``threshold`` shares (Lagrange interpolation at 0).

    When more than ``threshold`` shares are given, the ``threshold`` with the smallest
    holder numbers are used; the others are ignored (not checked).

    Parameters
    ----------
    shares : mapping of int to Share
        ``{x: share}`` with ``share.x == x``.
    threshold : int
        The threshold the secret was split with.

    Returns
    -------
    bytes
        The 32-byte secret.

    Raises
    ------
    ProtocolError
        If fewer than ``threshold`` shares are given, a key disagrees with its share's
        ``x``, or the shares do not interpolate to a 32-byte secret (they belong to
        different secrets or were altered).
    ConfigError
        If ``threshold`` is not an integer >= 1.
    """
    _check_threshold(threshold)
    if len(shares) < threshold:
        raise ProtocolError(
            f"need {threshold} shares to recover a secret, got {len(shares)}",
            hint="Too many share holders dropped out; the round cannot be unmasked.",
        )
    for x, share in shares.items():
        if not isinstance(share, Share) or share.x != x:
            raise ProtocolError(f"share for holder {x!r} is not a Share with x == {x!r}")
    chosen = sorted(shares)[:threshold]
    value = _interpolate_at_zero([(x, shares[x].y) for x in chosen], PRIME)
    if value.bit_length() > 8 * SECRET_SIZE:
        raise ProtocolError("shares do not reconstruct a valid secret")
    return value.to_bytes(SECRET_SIZE, "big")
