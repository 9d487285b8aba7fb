"""Distributed DP: each participant adds its share of discrete Gaussian noise inside SecAgg.

Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation" (DDGauss). Each of the ``n`` selected
participants

1. clips its update to L2 norm ``C`` (:func:`~fedshield.privacy.clipping.clip_update`);
2. rotates it with a randomized Walsh-Hadamard transform whose signs every participant
   derives from the round's public seed (:class:`Rotation`), which spreads the norm
   evenly over ``D = 2**k >= d`` coordinates;
3. scales by ``scale`` integers per unit and rounds stochastically (unbiased);
4. adds discrete Gaussian integers of variance ``(z * sensitivity * scale)**2 / n``
   (:func:`discrete_gaussian`, after Canonne, Kamath and Steinke 2020).

Secure aggregation sums the signed integer vectors modulo ``2**64``; the coordinator
reads the exact signed sum, rotates back and divides (:meth:`DistributedEncoding.decode`).
It never sees a value with less noise than the full ``z``: no participant's noise is
visible alone. When only ``m < n`` participants survive, the sum holds ``m / n`` of the
variance; :meth:`DistributedEncoding.effective_noise_multiplier` returns
``z * sqrt(m / n)`` and the round is accounted at that, never at ``z`` (the conservative
treatment of dropouts).

Approximations, stated: the sum of discrete Gaussians is accounted as a continuous
Gaussian of the same variance. Kairouz et al. (Theorem 11) bound the gap by a term
``tau`` that falls like ``exp(-2 pi^2 sigma_i^2)``; every participant's standard
deviation here is at least :data:`MIN_SITE_STD` integers, which makes it smaller than
``1e-300``. Stochastic rounding adds at most ``sqrt(D)`` to the norm in integer units;
the sensitivity used for the noise includes that term. The sampler draws its uniforms
from a CSPRNG and evaluates the acceptance test in float64, not in exact rational
arithmetic; the resulting distribution differs from the ideal one by less than float64
rounding of the acceptance probabilities.

Pure: randomness comes from an injected :class:`~fedshield.secagg.randomness.SecureRandom`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError, PayloadError
from fedshield.privacy.clipping import clip_update
from fedshield.secagg import prg
from fedshield.secagg.randomness import SecureRandom

__all__ = [
    "MIN_SITE_STD",
    "DistributedEncoding",
    "Rotation",
    "discrete_gaussian",
    "hadamard",
]

MIN_SITE_STD = 16.0
"""Smallest per-participant discrete Gaussian standard deviation, in integer units."""

_SUM_BITS = 52  # |sum| < 2**52 keeps every integer exact in float64
_TAIL = 40.0  # standard deviations of noise the bound allows (probability < 1e-300)
_ROTATION_INFO = b"fedshield/privacy/v1/rotation-signs"
_TO_UNIT = 2.0**-53


def hadamard(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Return the orthonormal Walsh-Hadamard transform of ``x`` (length a power of two).

    ``H / sqrt(D)`` is symmetric and orthogonal, so the transform is its own inverse.
    O(D log D), one vectorized pass per level.
    """
    size = x.shape[0]
    if size < 1 or size & (size - 1):
        raise ValueError(f"the length must be a power of two, got {size}")
    out = np.array(x, dtype=np.float64)
    half = 1
    while half < size:
        pairs = out.reshape(-1, 2, half)
        left = pairs[:, 0, :].copy()
        pairs[:, 0, :] += pairs[:, 1, :]
        left -= pairs[:, 1, :]
        pairs[:, 1, :] = left
        half *= 2
    out *= 1.0 / math.sqrt(size)
    return out


@dataclass(frozen=True)
class Rotation:
    """A randomized Hadamard rotation ``x -> H D_s pad(x) / sqrt(D)`` from a public seed.

    Every participant and the coordinator derive the same signs from ``seed`` (32 bytes,
    fresh per round): the rotation is public, its purpose is to flatten the vector, not
    to hide it.
    """

    seed: bytes
    dim: int

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise ConfigError("the rotation seed must be 32 bytes")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be an integer >= 1, got {self.dim!r}")

    @property
    def padded(self) -> int:
        """``D``: the smallest power of two >= ``dim``."""
        return 1 << (self.dim - 1).bit_length()

    def _signs(self) -> npt.NDArray[np.float64]:
        key = hashlib.sha3_256(_ROTATION_INFO + self.seed).digest()
        words = prg.expand(key, length=self.padded, ring_bits=32)
        return 1.0 - 2.0 * (words & np.uint32(1)).astype(np.float64)

    def forward(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Rotate a ``(dim,)`` vector into ``(padded,)`` (norm preserved)."""
        vector = np.asarray(x, dtype=np.float64)
        if vector.shape != (self.dim,):
            raise PayloadError(f"expected a vector of shape ({self.dim},), got {vector.shape}")
        padded = np.zeros(self.padded, dtype=np.float64)
        padded[: self.dim] = vector
        padded *= self._signs()
        return hadamard(padded)

    def inverse(self, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Undo :meth:`forward`: ``(padded,)`` back to ``(dim,)``."""
        vector = np.asarray(y, dtype=np.float64)
        if vector.shape != (self.padded,):
            raise PayloadError(f"expected a vector of shape ({self.padded},), got {vector.shape}")
        out = hadamard(vector)
        out *= self._signs()
        return out[: self.dim]


def _uniform(rng: SecureRandom, size: int) -> npt.NDArray[np.float64]:
    """Uniforms on (0, 1] with 53 random bits."""
    bits = rng.uniform_u64(size) >> np.uint64(11)
    return (bits.astype(np.float64) + 1.0) * _TO_UNIT


def discrete_gaussian(rng: SecureRandom, size: int, *, sigma: float) -> npt.NDArray[np.int64]:
    """Return ``size`` draws of the discrete Gaussian N_Z(0, sigma^2) as int64.

    Canonne, Kamath and Steinke 2020, Algorithm 3: propose from the discrete Laplace
    with scale ``t = floor(sigma) + 1`` (the difference of two geometric variables) and
    accept ``y`` with probability ``exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2))``; repeat
    for the rejected. Vectorized; the expected acceptance rate is above 0.5.

    Raises
    ------
    ConfigError
        If ``sigma`` is not finite and > 0, or ``size`` is negative.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"size must be an integer >= 0, got {size!r}")
    s = float(sigma)
    if not (0.0 < s < 2.0**50):
        raise ConfigError(f"sigma must be > 0 and < 2**50, got {sigma!r}")
    t = math.floor(s) + 1.0
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        k = todo.size
        # Geometric(1 - exp(-1/t)) on {0, 1, ...} is floor(-t * ln U).
        g1 = np.floor(-t * np.log(_uniform(rng, k)))
        g2 = np.floor(-t * np.log(_uniform(rng, k)))
        y = g1 - g2
        accept = _uniform(rng, k) <= np.exp(-((np.abs(y) - s * s / t) ** 2) / (2.0 * s * s))
        out[todo[accept]] = y[accept].astype(np.int64)
        todo = todo[~accept]
    return out


@dataclass(frozen=True)
class DistributedEncoding:
    """One round's DDGauss settings, shared by every participant and the coordinator.

    Attributes
    ----------
    clip_norm : float
        ``C``, the L2 bound of each update.
    noise_multiplier : float
        ``z``: the survivors' summed noise has standard deviation ``z * sensitivity``
        when all ``participants`` survive.
    sensitivity_factor : float
        1 (add/remove a participant) or 2 (replace one, fixed-size sampling).
    participants : int
        ``n``, the selected participants; each adds ``1/n`` of the variance.
    rotation : Rotation
        The round's public rotation.
    """

    clip_norm: float
    noise_multiplier: float
    sensitivity_factor: float
    participants: int
    rotation: Rotation

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (0.0 < float(value) < math.inf):
                raise ConfigError(f"{name} must be > 0 and finite, got {value!r}")
        if self.sensitivity_factor not in (1.0, 2.0):
            raise ConfigError(f"sensitivity_factor must be 1 or 2, got {self.sensitivity_factor}")
        n = self.participants
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"participants must be an integer >= 1, got {n!r}")
        if self.site_std < MIN_SITE_STD:
            raise ConfigError(
                f"each participant's noise would be {self.site_std:.3g} integers, below the "
                f"{MIN_SITE_STD:g} the discrete Gaussian accounting needs",
                hint="Raise noise_multiplier or lower the number of participants per round.",
            )

    @property
    def scale(self) -> float:
        """Integers per unit: the largest power of two for which the sum cannot overflow.

        Each rotated coordinate is at most ``C`` in magnitude, so the summed values stay
        below ``n * C * scale``; the noise adds at most ``_TAIL`` standard deviations of
        ``z * 2C * scale``. Both together stay below ``2**52`` (exact in float64).
        """
        worst = self.participants * self.clip_norm + _TAIL * self.noise_multiplier * 2.0 * (
            self.clip_norm + 1.0
        )
        return 2.0 ** math.floor(math.log2(2.0**_SUM_BITS / (worst + 1.0)))

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the integer sum, in units: the clip plus the rounding slack."""
        slack = math.sqrt(self.rotation.padded) / self.scale
        return self.sensitivity_factor * (self.clip_norm + slack)

    @property
    def site_std(self) -> float:
        """Each participant's discrete Gaussian standard deviation, in integers."""
        total = self.noise_multiplier * self.sensitivity * self.scale
        return total / math.sqrt(self.participants)

    def encode(
        self, update: npt.ArrayLike, *, rng: SecureRandom
    ) -> tuple[npt.NDArray[np.int64], bool]:
        """Return this participant's signed integer vector ``(padded,)`` and its clip bit."""
        clipped, inside = clip_update(update, clip_norm=self.clip_norm)
        rotated = self.rotation.forward(clipped)
        rotated *= self.scale
        floor = np.floor(rotated)
        up = _uniform(rng, rotated.size) <= (rotated - floor)
        integers = floor.astype(np.int64) + up
        integers += discrete_gaussian(rng, integers.size, sigma=self.site_std)
        return integers, inside

    def public(self) -> dict[str, Any]:
        """Return the settings every participant needs, as JSON-ready values."""
        return {
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity_factor": self.sensitivity_factor,
            "participants": self.participants,
            "seed": self.rotation.seed.hex(),
            "dim": self.rotation.dim,
        }

    @classmethod
    def from_public(cls, data: object) -> DistributedEncoding:
        """Rebuild the settings a coordinator sent; :class:`PayloadError` if malformed."""
        if not isinstance(data, Mapping):
            raise PayloadError("the distributed DP settings must be a JSON object")
        try:
            return cls(
                clip_norm=float(data["clip_norm"]),
                noise_multiplier=float(data["noise_multiplier"]),
                sensitivity_factor=float(data["sensitivity_factor"]),
                participants=int(data["participants"]),
                rotation=Rotation(seed=bytes.fromhex(str(data["seed"])), dim=int(data["dim"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"malformed distributed DP settings: {exc}") from exc
        except ConfigError as exc:
            raise PayloadError(f"unusable distributed DP settings: {exc.message}") from exc

    def norm_bound(self, survivors: int) -> float:
        """Return the largest L2 norm an honest sum of ``survivors`` inputs reaches (units).

        Each input is at most ``C`` plus the rounding slack; the noise's norm
        concentrates at ``std * sqrt(D)``, and exceeds twice that with probability far
        below ``1e-100`` for ``D >= 64`` (chi-square tail).
        """
        padded = self.rotation.padded
        inputs = survivors * (self.clip_norm + math.sqrt(padded) / self.scale)
        noise = 2.0 * self.noise_multiplier * self.sensitivity * math.sqrt(max(padded, 64))
        return inputs + noise

    def decode(self, total: npt.ArrayLike, *, denominator: float) -> npt.NDArray[np.float64]:
        """Turn the survivors' exact signed sum ``(padded,)`` into the noised mean ``(dim,)``.

        Raises
        ------
        PayloadError
            If the sum has the wrong shape or dtype, or a norm no honest sum of
            ``denominator`` inputs can have (a participant masked an oversized input).
        """
        vector = np.asarray(total)
        if vector.shape != (self.rotation.padded,) or vector.dtype != np.int64:
            raise PayloadError(
                f"the distributed sum must be int64 of shape ({self.rotation.padded},), "
                f"got {vector.dtype} {vector.shape}"
            )
        units = vector.astype(np.float64) / self.scale
        norm = float(np.linalg.norm(units))
        bound = self.norm_bound(int(denominator))
        if not norm <= bound:
            raise PayloadError(
                f"the distributed sum has norm {norm:.6g}, above the {bound:.6g} that "
                f"{int(denominator)} clipped, noised inputs can reach: a participant masked "
                "an oversized input; the sum is not used"
            )
        mean = self.rotation.inverse(units)
        mean /= float(denominator)
        return mean

    def effective_noise_multiplier(self, survivors: int) -> float:
        """``z * sqrt(m / n)``: the multiplier the ``m`` survivors' noise actually reaches."""
        if not 1 <= survivors <= self.participants:
            raise ConfigError(
                f"survivors must be in 1..{self.participants}, got {survivors}",
            )
        return self.noise_multiplier * math.sqrt(survivors / self.participants)
