"""Fixed-point encoding of weighted float updates into the ring ``Z / 2**ring_bits``.

Secure aggregation sums integers modulo ``2**ring_bits``, so each float update is
clipped to ``[-c, c]`` and mapped onto ``L + 1`` levels, ``L = 2**value_bits - 1``::

    q(x) = stochastic_round((clip(x, -c, c) + c) / (2 c) * L)      in {0, ..., L}

Stochastic rounding rounds up with probability equal to the fractional part, drawn from
the injected :class:`~fedshield.secagg.randomness.SecureRandom` (53-bit uniforms in
``[0, 1)``), so ``E[q(x)] = (clip(x) + c) / (2 c) * L`` exactly: quantization adds
zero-mean noise instead of a bias. A participant with integer weight ``w`` (e.g. its
example count) uploads ``[w q(x_1), ..., w q(x_d), w]``; the sum of ``n`` such vectors
decodes to the weighted mean of the clipped inputs plus that noise.

What misuse breaks: a sum that exceeds ``2**ring_bits - 1`` wraps around silently and
decodes to garbage. :meth:`Quantizer.check_budget` refuses ``n * max_weight * L >=
2**ring_bits``; call it (or build with :meth:`Quantizer.for_budget`) before a round, and
make sure no participant reports a weight above ``max_weight``. Values outside
``[-c, c]`` are clipped, which biases the mean: choose ``clip_range`` from the updates'
scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError, PayloadError, ProtocolError
from fedshield.secagg.randomness import SecureRandom

__all__ = ["MAX_VALUE_BITS", "MIN_VALUE_BITS", "Quantizer"]

MIN_VALUE_BITS = 8
"""The fewest value bits :meth:`Quantizer.for_budget` accepts."""

MAX_VALUE_BITS = 48
"""The most value bits used: beyond this, float64 cannot resolve the rounding fraction."""

_SCALE = 2.0**53  # a 53-bit uniform u is u * 2**-53 in [0, 1)
_STEP = 1 << 15  # coordinates per step of the rounding loop (256 KiB of float64)


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Clip, stochastically round, weight and decode vectors for a ``2**ring_bits`` ring.

    Parameters
    ----------
    clip_range : float
        ``c > 0``: inputs are clipped to ``[-c, c]``.
    value_bits : int
        Bits per quantized value, ``1 <= value_bits <= min(ring_bits, 48)``; there are
        ``2**value_bits`` levels.
    ring_bits : {32, 64}
        The ring the encoded vectors live in.

    Raises
    ------
    ConfigError
        If a parameter is out of range.
    """

    clip_range: float
    value_bits: int
    ring_bits: Literal[32, 64]

    def __post_init__(self) -> None:
        c = self.clip_range
        if isinstance(c, bool) or not isinstance(c, int | float) or not (0 < c < math.inf):
            raise ConfigError(f"clip_range must be a finite float > 0, got {c!r}")
        if self.ring_bits not in (32, 64):
            raise ConfigError(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        vb = self.value_bits
        top = min(self.ring_bits, MAX_VALUE_BITS)
        if isinstance(vb, bool) or not isinstance(vb, int) or not 1 <= vb <= top:
            raise ConfigError(f"value_bits must be an integer in [1, {top}], got {vb!r}")

    @classmethod
    def for_budget(
        cls, n: int, *, max_weight: int, clip_range: float, ring_bits: Literal[32, 64]
    ) -> Quantizer:
        """Return the quantizer with the most value bits whose sums cannot overflow.

        Picks the largest ``value_bits <= 48`` with
        ``n * max_weight * (2**value_bits - 1) < 2**ring_bits``.

        Parameters
        ----------
        n : int
            Most participants whose vectors are summed, >= 1.
        max_weight : int
            Largest weight any participant may use, >= 1.
        clip_range : float
            ``c > 0``, as in the constructor.
        ring_bits : {32, 64}
            The ring.

        Returns
        -------
        Quantizer
            A quantizer for which :meth:`check_budget` ``(n, max_weight)`` passes.

        Raises
        ------
        ConfigError
            If fewer than 8 value bits fit, naming ``n``, ``max_weight`` and
            ``ring_bits``.
        """
        n = _check_positive_int(n, name="n")
        max_weight = _check_positive_int(max_weight, name="max_weight")
        if ring_bits not in (32, 64):
            raise ConfigError(f"ring_bits must be 32 or 64, got {ring_bits!r}")
        # Largest L = 2**vb - 1 with n * max_weight * L < 2**ring_bits.
        largest_levels = ((1 << ring_bits) - 1) // (n * max_weight)
        value_bits = min((largest_levels + 1).bit_length() - 1, MAX_VALUE_BITS)
        if value_bits < MIN_VALUE_BITS:
            raise ConfigError(
                f"n={n} participants with max_weight={max_weight} leave only {value_bits} "
                f"value bits in a {ring_bits}-bit ring (at least {MIN_VALUE_BITS} needed: "
                f"n * max_weight * (2**{MIN_VALUE_BITS} - 1) must be < 2**{ring_bits})",
                hint="Use ring_bits = 64, a smaller max_weight or fewer participants.",
            )
        return cls(clip_range=clip_range, value_bits=value_bits, ring_bits=ring_bits)

    @property
    def levels(self) -> int:
        """``L = 2**value_bits - 1``, the largest quantized value."""
        return (1 << self.value_bits) - 1

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """The numpy dtype of ring vectors: ``uint32`` or ``uint64``."""
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def check_budget(self, n: int, max_weight: int) -> None:
        """Refuse a configuration whose sum could overflow the ring.

        Parameters
        ----------
        n : int
            Most participants whose vectors are summed, >= 1.
        max_weight : int
            Largest weight any participant may use, >= 1.

        Raises
        ------
        ConfigError
            If ``n * max_weight * (2**value_bits - 1) >= 2**ring_bits``; the message
            names all four numbers.
        """
        n = _check_positive_int(n, name="n")
        max_weight = _check_positive_int(max_weight, name="max_weight")
        worst = n * max_weight * self.levels
        if worst >= 1 << self.ring_bits:
            raise ConfigError(
                f"n={n} * max_weight={max_weight} * (2**value_bits - 1) with "
                f"value_bits={self.value_bits} is {worst}, which does not fit in "
                f"ring_bits={self.ring_bits} (must be < 2**{self.ring_bits})",
                hint="Lower value_bits or max_weight, or use ring_bits = 64.",
            )

    def quantize(self, x: npt.ArrayLike, *, rng: SecureRandom) -> npt.NDArray[np.uint64]:
        """Clip and stochastically round ``x`` to integers in ``[0, 2**value_bits - 1]``.

        Parameters
        ----------
        x : array_like
            A finite 1-D float vector.
        rng : SecureRandom
            Source of the rounding uniforms (one 64-bit draw per coordinate).

        Returns
        -------
        numpy.ndarray
            ``uint64`` levels; unbiased: ``E[q] = (clip(x) + c) / (2 c) * L``.

        Raises
        ------
        PayloadError
            If ``x`` is not 1-D or has a NaN or infinity.
        """
        values = self._checked(x)
        out = np.empty(values.shape, dtype=np.uint64)
        self._round_into(values, out, rng=rng)
        return out

    @staticmethod
    def _checked(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        values = np.asarray(x, dtype=np.float64)
        if values.ndim != 1:
            raise PayloadError(f"x must be a 1-D vector, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise PayloadError("x has NaN or infinite values")
        return values

    def _round_into(
        self,
        values: npt.NDArray[np.float64],
        out: npt.NDArray[np.unsignedinteger[Any]],
        *,
        rng: SecureRandom,
    ) -> None:
        """Write the stochastically rounded levels of ``values`` into ``out`` (same length).

        ``out`` is ``uint32`` or ``uint64``; every level is at most ``L < 2**value_bits``
        and is exact in float64 (``value_bits <= 48``), so the cast is exact. Rounds up
        iff ``u * 2**-53 < fraction`` for a 53-bit uniform ``u``; the comparison is done
        as ``u < fraction * 2**53`` (the same, since scaling by a power of two is exact).
        """
        c = float(self.clip_range)
        factor = self.levels / (2.0 * c)
        top = float(self.levels)
        size = values.size
        # Work in cache-sized steps with reused buffers: no full-size temporaries.
        # Drawing the uniforms step by step consumes the same stream as one big draw.
        step = max(1, min(size, _STEP))
        scaled = np.empty(step, dtype=np.float64)
        floor = np.empty(step, dtype=np.float64)
        up = np.empty(step, dtype=np.bool_)
        for start in range(0, size, step):
            stop = min(start + step, size)
            s, f, u = scaled[: stop - start], floor[: stop - start], up[: stop - start]
            np.maximum(values[start:stop], -c, out=s)  # clip to [-c, c]
            np.minimum(s, c, out=s)
            s += c
            s *= factor
            np.maximum(s, 0.0, out=s)  # clip to [0, L] against rounding
            np.minimum(s, top, out=s)
            np.floor(s, out=f)
            s -= f  # the fractional part ...
            s *= _SCALE  # ... times 2**53
            uniform = rng.uniform_u64(stop - start)
            uniform >>= np.uint64(11)
            np.less(uniform, s, out=u)
            part = out[start:stop]
            np.copyto(part, f, casting="unsafe")
            np.add(part, u, out=part)

    def encode(
        self, x: npt.ArrayLike, weight: int, *, rng: SecureRandom
    ) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Return the ring vector ``[w q(x_1), ..., w q(x_d), w]`` (length ``d + 1``).

        Parameters
        ----------
        x : array_like
            A finite 1-D float vector of length ``d``.
        weight : int
            The participant's integer weight ``w >= 1`` (e.g. its example count). It
            must not exceed the ``max_weight`` the budget was checked for.
        rng : SecureRandom
            Source of the stochastic rounding.

        Returns
        -------
        numpy.ndarray
            ``uint32`` or ``uint64`` (see :attr:`dtype`), shape ``(d + 1,)``.

        Raises
        ------
        PayloadError
            If ``x`` is not a finite 1-D vector, or ``w * (2**value_bits - 1)`` alone
            does not fit in the ring.
        ConfigError
            If ``weight`` is not an integer >= 1.
        """
        w = _check_positive_int(weight, name="weight")
        if w * self.levels >= 1 << self.ring_bits:
            raise PayloadError(
                f"weight={w} with value_bits={self.value_bits} overflows a "
                f"{self.ring_bits}-bit ring"
            )
        values = self._checked(x)
        out = np.empty(values.size + 1, dtype=self.dtype)
        body = out[:-1]
        self._round_into(values, body, rng=rng)
        if w != 1:  # w * L < 2**ring_bits (checked above): no wrap-around
            np.multiply(body, self.dtype(w), out=body)
        out[-1] = w
        return out

    def decode(
        self, sum_vector: npt.ArrayLike, total_weight: int | None = None
    ) -> tuple[npt.NDArray[np.float64], int]:
        """Decode a sum of encoded vectors into the weighted mean and the total weight.

        Parameters
        ----------
        sum_vector : array_like
            The ring sum (``uint32`` or ``uint64``) of the survivors' :meth:`encode`
            outputs, shape ``(d + 1,)``; its last element is the total weight.
        total_weight : int, optional
            If given, must equal the last element (a cross-check).

        Returns
        -------
        mean : numpy.ndarray
            ``float64``, shape ``(d,)``: ``sum_i w_i dequantized(x_i) / sum_i w_i``.
        total_weight : int
            ``sum_i w_i``.

        Raises
        ------
        ProtocolError
            If the vector is not 1-D and non-empty, its total weight is 0, or it
            disagrees with ``total_weight``.
        """
        vector = np.asarray(sum_vector)
        if vector.ndim != 1 or vector.size < 1 or not np.issubdtype(vector.dtype, np.integer):
            raise ProtocolError(
                f"a sum vector is a non-empty 1-D integer array, got {vector.dtype} "
                f"of shape {vector.shape}"
            )
        mask = (1 << self.ring_bits) - 1
        weight = int(vector[-1]) & mask
        if total_weight is not None and weight != total_weight:
            raise ProtocolError(
                f"the sum's total weight is {weight}, expected {total_weight}: "
                "the sum is corrupt or overflowed"
            )
        if weight == 0:
            raise ProtocolError("the sum's total weight is 0: nothing to average")
        sums = vector[:-1].astype(self.dtype, copy=False).astype(np.float64)
        c = float(self.clip_range)
        mean = sums * (2.0 * c / (self.levels * weight)) - c
        return mean, weight


def _check_positive_int(value: int, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
