"""Gaussian noise drawn from a cryptographically secure generator.

Differential privacy assumes the noise is unpredictable to the adversary. numpy's and
torch's generators (PCG64, MT19937) are not: their state can be recovered from enough
output, and a seed that leaks replays every draw. Here the uniform bits come from a
:class:`~fedshield.secagg.randomness.SecureRandom` (the operating system's CSPRNG feeding
an AES-256-CTR keystream, see :mod:`fedshield.secagg.randomness`), and the Box-Muller
transform turns them into standard normal float64 values.

Each normal draw uses 53 random bits for each of its two uniforms, so the smallest
uniform is ``2**-53`` and the largest ``|z|`` is about 8.6: the tail beyond that has
probability below ``1e-17`` per draw. The floating-point attack of Mironov (2012) on
textbook Laplace sampling concerns the *low-order bits* of a released noisy value; the
noise here is added to float32 model updates, whose rounding is far coarser than the
spacing of the draws, and the accounting treats the mechanism as the ideal Gaussian.

What misuse breaks: passing :func:`~fedshield.secagg.randomness.deterministic_random`
outside tests (anyone who knows the seed subtracts the noise).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError
from fedshield.secagg.randomness import SecureRandom

__all__ = ["gaussian", "standard_normal"]

_TO_UNIT = 2.0**-53


def _unit_open(bits: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """Map 64-bit words to floats uniform on ``(0, 1]`` (53 bits, never 0)."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * _TO_UNIT


def standard_normal(rng: SecureRandom, size: int) -> npt.NDArray[np.float64]:
    """Return ``size`` independent N(0, 1) float64 draws from ``rng`` (Box-Muller).

    Raises
    ------
    ConfigError
        If ``size`` is negative or not an integer.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ConfigError(f"noise size must be an integer >= 0, got {size!r}")
    pairs = (int(size) + 1) // 2
    bits = rng.uniform_u64((2, pairs))
    radius = np.sqrt(-2.0 * np.log(_unit_open(bits[0])))
    angle = (2.0 * math.pi) * _unit_open(bits[1])
    out = np.empty(2 * pairs)
    np.multiply(radius, np.cos(angle), out=out[:pairs])
    np.multiply(radius, np.sin(angle), out=out[pairs:])
    return out[: int(size)]


def gaussian(rng: SecureRandom, size: int, *, std: float) -> npt.NDArray[np.float64]:
    """Return ``size`` independent N(0, std²) float64 draws from ``rng``.

    Raises
    ------
    ConfigError
        If ``std`` is negative, NaN or infinite, or ``size`` is invalid.
    """
    if isinstance(std, bool) or not isinstance(std, int | float) or not math.isfinite(std):
        raise ConfigError(f"noise std must be a finite number, got {std!r}")
    if std < 0:
        raise ConfigError(f"noise std must be >= 0, got {std}")
    draws = standard_normal(rng, size)
    draws *= std
    return draws
