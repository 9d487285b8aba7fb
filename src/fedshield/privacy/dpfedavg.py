"""Participant-level DP-FedAvg: clip whole updates, add Gaussian noise to their sum.

McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent
Language Models": each round every participant's update is clipped to L2 norm ``C``
(:func:`~fedshield.privacy.clipping.clip_update`), the clipped updates are summed with
equal weight (an example count would be a second, unbounded sensitivity) and Gaussian
noise of standard deviation ``z * sensitivity`` is added to the sum, which is divided by
``n``. Where the noise is added is the trust assumption:

* ``central``: the coordinator sees the clipped updates and noises the sum
  (:func:`central_mean`). Protects the participants from everyone who sees the model,
  not from the coordinator.
* ``local``: every participant noises its own clipped update before it leaves the site
  (:func:`local_update`), with standard deviation ``z * 2C``: a single update may be
  replaced by any other in the ``C`` ball, so its sensitivity is ``2C``, derived from the
  clip norm and never a separate knob. Protects against the coordinator too, at
  ``sqrt(n)`` times the noise in the mean.
* ``distributed``: every participant adds ``1/n`` of the noise variance, as discrete
  Gaussian integers inside secure aggregation (:mod:`fedshield.privacy.distributed`).

The sensitivity of the clipped sum follows the neighbouring relation of the sampling
(:mod:`fedshield.privacy.accounting`): ``C`` when participants are Poisson-sampled or
all take part (add or remove one participant), ``2C`` for fixed-size sampling (replace
one). :func:`round_event` states one round for the accountant; the ledger keeps those
events and epsilon is recomputed from them.

Pure: the noise comes from an injected :class:`~fedshield.secagg.randomness.SecureRandom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import dp_accounting
import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError
from fedshield.privacy.accounting import Sampling, dp_event
from fedshield.privacy.clipping import AdaptiveClipping, clip_update, update_noise_multiplier
from fedshield.privacy.noise import gaussian
from fedshield.secagg.randomness import SecureRandom

__all__ = [
    "NOISE_PLACEMENTS",
    "CentralSum",
    "ParticipantDP",
    "NoisePlacement",
    "central_mean",
    "local_update",
    "round_event",
    "sum_sensitivity",
]

NoisePlacement = Literal["central", "local", "distributed"]
NOISE_PLACEMENTS: tuple[NoisePlacement, ...] = get_args(NoisePlacement)


def _finite_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (0.0 < number < math.inf):
        raise ConfigError(f"{name} must be > 0 and finite, got {number!r}")
    return number


def sum_sensitivity(clip_norm: float, *, sampling: Sampling, sampling_rate: float) -> float:
    """Return the L2 sensitivity of a sum of updates clipped to ``clip_norm``.

    ``clip_norm`` under Poisson sampling or when everyone takes part
    (``sampling_rate == 1``), ``2 * clip_norm`` for fixed-size sampling of a part.
    """
    bound = _finite_positive("clip_norm", clip_norm)
    if sampling == "fixed" and sampling_rate < 1.0:
        return 2.0 * bound
    return bound


@dataclass(frozen=True)
class ParticipantDP:
    """A federation's participant-level DP settings, as the round applies them.

    Attributes
    ----------
    noise : {"central", "local", "distributed"}
        Where the noise is added.
    noise_multiplier : float
        ``z`` of one round (with adaptive clipping: of update and count together).
    clip_norm : float
        The fixed bound, or the adaptive bound's start.
    sampling : {"fixed", "poisson"}
        How the round selects participants.
    sampling_rate : float
        The planned chance that a participant is in a round.
    adaptive : AdaptiveClipping or None
        The quantile tracker, or ``None`` for a fixed bound.
    """

    noise: NoisePlacement
    noise_multiplier: float
    clip_norm: float
    sampling: Sampling
    sampling_rate: float
    adaptive: AdaptiveClipping | None = None

    def __post_init__(self) -> None:
        if self.noise not in NOISE_PLACEMENTS:
            raise ConfigError(f"noise must be one of {NOISE_PLACEMENTS}, got {self.noise!r}")
        _finite_positive("noise_multiplier", self.noise_multiplier)
        _finite_positive("clip_norm", self.clip_norm)
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {self.sampling_rate!r}")
        if self.adaptive is not None and self.noise == "local":
            raise ConfigError(
                "adaptive clipping needs an aggregator's noisy count, not local noise"
            )
        self.update_noise_multiplier  # noqa: B018 - validates count noise against z

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier of the update's noise (above ``z`` when the count takes a share)."""
        if self.adaptive is None:
            return self.noise_multiplier
        return update_noise_multiplier(
            self.noise_multiplier, count_noise_std=self.adaptive.count_noise_std
        )


@dataclass(frozen=True)
class CentralSum:
    """One round of central DP-FedAvg.

    Attributes
    ----------
    mean : numpy.ndarray
        ``(sum of clipped updates + noise) / denominator``, float64.
    within : int
        How many updates were within ``clip_norm`` (adaptive clipping's count).
    noise_std : float
        Standard deviation of the noise added to each coordinate of the sum.
    """

    mean: npt.NDArray[np.float64]
    within: int
    noise_std: float


def central_mean(
    updates: npt.ArrayLike,
    *,
    clip_norm: float,
    noise_multiplier: float,
    sensitivity: float,
    denominator: float,
    rng: SecureRandom,
) -> CentralSum:
    """Clip each row of ``updates``, sum, add N(0, (z * sensitivity)^2), divide.

    Parameters
    ----------
    updates
        ``(n, d)`` finite updates, one row per participant.
    clip_norm
        ``C``: each row is scaled to L2 norm at most ``C``.
    noise_multiplier
        ``z`` for the update (with adaptive clipping: after
        :func:`~fedshield.privacy.clipping.update_noise_multiplier`).
    sensitivity
        The sum's L2 sensitivity, from :func:`sum_sensitivity` with the same ``C``.
    denominator
        ``n`` (or the expected number of participants under Poisson sampling).
    rng
        A cryptographically secure source of the noise.

    Raises
    ------
    ConfigError
        If a number is out of range.
    ValueError
        If ``updates`` is not a finite ``(n, d)`` array with ``n >= 1``.
    """
    rows = np.asarray(updates)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"updates must be an (n, d) array with n >= 1, got {rows.shape}")
    z = float(noise_multiplier)
    if not (0.0 <= z < math.inf):
        raise ConfigError(f"noise_multiplier must be >= 0 and finite, got {noise_multiplier!r}")
    delta = _finite_positive("sensitivity", sensitivity)
    n = _finite_positive("denominator", denominator)
    total = np.zeros(rows.shape[1], dtype=np.float64)
    within = 0
    for row in rows:
        clipped, inside = clip_update(row, clip_norm=clip_norm)
        total += clipped
        within += inside
    std = z * delta
    total += gaussian(rng, rows.shape[1], std=std)
    total /= n
    return CentralSum(mean=total, within=within, noise_std=std)


def local_update(
    update: npt.ArrayLike,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: SecureRandom,
) -> tuple[npt.NDArray[np.float64], bool]:
    """Clip ``update`` to ``C`` and add N(0, (z * 2C)^2) to every coordinate, at the site.

    The sensitivity of one released update is ``2C`` (it may be replaced by any vector in
    the ``C`` ball). Each round the site takes part in is one Gaussian mechanism with
    noise multiplier ``z`` and no amplification by sampling: the coordinator knows who
    took part.

    Returns
    -------
    (numpy.ndarray, bool)
        The noised update and whether it was within ``C`` before clipping.
    """
    z = _finite_positive("noise_multiplier", noise_multiplier)
    clipped, inside = clip_update(update, clip_norm=clip_norm)
    clipped += gaussian(rng, clipped.size, std=z * 2.0 * float(clip_norm))
    return clipped, inside


def round_event(
    *, noise_multiplier: float, sampling_rate: float, sampling: Sampling
) -> dp_accounting.DpEvent:
    """Return one round of participant-level DP as a dp-accounting event.

    ``noise_multiplier`` is the effective one: with adaptive clipping the combined
    multiplier of update and count, with distributed noise the one the survivors'
    noise actually reached.
    """
    mode: Sampling = "poisson" if sampling_rate >= 1.0 else sampling
    return dp_event(
        noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, rounds=1, sampling=mode
    )
