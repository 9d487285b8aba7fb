"""Clipping whole updates for participant-level DP: fixed, or adaptive (Andrew et al. 2021).

Participant-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models") bounds each participant's influence by scaling its whole
update to L2 norm at most ``clip_norm``; the noise added to the sum is proportional to
that bound.

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping") tracks a quantile ``target_quantile`` of the update
norms instead of a fixed bound. Each round every participant also reports the bit
``b_i = [||update_i|| <= C_r]``; the aggregator sums the bits, adds Gaussian noise of
standard deviation ``count_noise_std`` and moves the bound geometrically::

    b = (sum_i b_i + N(0, count_noise_std**2)) / n
    C_{r+1} = C_r * exp(-clip_learning_rate * (b - target_quantile))

The count is a second Gaussian query over the same participants. Theorem 1 of the paper
treats the pair as one Gaussian mechanism whose noise multiplier is
``(z_update**-2 + (2 * count_noise_std)**-2) ** -0.5`` (a bit has sensitivity 1/2 once
centred); :func:`update_noise_multiplier` inverts that, so a round spends exactly the
budget of a fixed-clip round with noise multiplier ``z``.

The noise of round ``r`` is computed from ``C_r``, the bound the round's updates were
clipped to. Using ``C_{r+1}`` instead (Flower 1.x computes the next bound before it
noises) adds too little noise whenever the bound shrinks.

Pure: no I/O, clocks or randomness (the count noise is drawn by the caller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError

__all__ = ["AdaptiveClipping", "clip_update", "update_noise_multiplier"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (0.0 < number < math.inf):
        raise ConfigError(f"{name} must be > 0 and finite, got {number!r}")
    return number


def clip_update(update: npt.ArrayLike, *, clip_norm: float) -> tuple[npt.NDArray[np.float64], bool]:
    """Scale ``update`` to L2 norm at most ``clip_norm``.

    Returns
    -------
    (numpy.ndarray, bool)
        The clipped float64 vector and whether the update was already within the bound
        (adaptive clipping's bit ``b_i``).

    Raises
    ------
    ConfigError
        If ``clip_norm`` is not a finite number > 0.
    ValueError
        If ``update`` is not a finite 1-D vector.
    """
    bound = _positive("clip_norm", clip_norm)
    vector = np.array(update, dtype=np.float64)
    if vector.ndim != 1 or not np.isfinite(vector).all():
        raise ValueError("the update must be a finite 1-D vector")
    norm = float(np.linalg.norm(vector))
    if norm <= bound:
        return vector, True
    vector *= bound / norm
    return vector, False


def update_noise_multiplier(noise_multiplier: float, *, count_noise_std: float) -> float:
    """Return the update's noise multiplier so that update + count spend ``noise_multiplier``.

    Andrew et al. 2021, Theorem 1: ``z_update = (z**-2 - (2 * count_noise_std)**-2)**-0.5``.

    Raises
    ------
    ConfigError
        If ``count_noise_std <= noise_multiplier / 2``: the count alone would spend the
        whole budget.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    sigma_b = _positive("clipped_count_stddev", count_noise_std)
    if 2.0 * sigma_b <= z:
        raise ConfigError(
            f"clipped_count_stddev={sigma_b:g} must exceed noise_multiplier / 2 = {z / 2:g}: "
            "the clipped count would spend the whole privacy budget",
            hint="Raise clipped_count_stddev (Andrew et al. use expected participants / 20).",
        )
    return float((z**-2 - (2.0 * sigma_b) ** -2) ** -0.5)


@dataclass(frozen=True)
class AdaptiveClipping:
    """The geometric quantile update of Andrew et al. 2021.

    Attributes
    ----------
    target_quantile : float
        ``gamma`` in (0, 1): the share of updates that should fall within the bound.
    clip_learning_rate : float
        ``eta > 0``: the step of the geometric update (the paper uses 0.2).
    count_noise_std : float
        Standard deviation of the noise on the clipped count, in participants (the paper
        uses expected participants / 20).
    """

    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise_std: float = 1.0

    def __post_init__(self) -> None:
        gamma = self.target_quantile
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 < gamma < 1:
            raise ConfigError(f"target_quantile must be in (0, 1), got {gamma!r}")
        _positive("clip_learning_rate", self.clip_learning_rate)
        _positive("clipped_count_stddev", self.count_noise_std)

    def next_clip_norm(
        self, clip_norm: float, *, within_count: float, count_noise: float, participants: float
    ) -> float:
        """Return ``C_{r+1}`` from ``C_r``, the summed bits and the count's noise draw.

        Parameters
        ----------
        clip_norm
            ``C_r``, the bound this round's updates were clipped to.
        within_count
            ``sum_i b_i``: how many updates were within the bound (no noise yet).
        count_noise
            One draw of N(0, 1); it is scaled by ``count_noise_std`` here.
        participants
            ``n``, the denominator of the mean (the participants summed, or the expected
            number under Poisson sampling).
        """
        bound = _positive("clip_norm", clip_norm)
        n = _positive("participants", participants)
        noisy = (float(within_count) + self.count_noise_std * float(count_noise)) / n
        return bound * math.exp(-self.clip_learning_rate * (noisy - self.target_quantile))
