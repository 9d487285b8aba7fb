"""Server-side optimizers: how the aggregated update moves the global model.

The coordinator averages the participants' updates (``delta = local - global``) with
:func:`weighted_mean`, then a :class:`ServerOptimizer` turns that mean into the next
global model. FedAvg (McMahan et al. 2017) is ``global + server_lr * mean_delta``;
adaptive optimizers (FedAdam, FedYogi; Reddi et al. 2021) plug in behind the same
protocol and keep their moments as explicit state.

Pure numpy, float64 throughout, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedshield.errors import ConfigError, PayloadError

__all__ = ["FedAvg", "ServerOptimizer", "make_server_optimizer", "weighted_mean"]


def weighted_mean(updates: np.ndarray | Sequence[np.ndarray], *, weights: np.ndarray) -> np.ndarray:
    """Return the weighted mean of ``updates`` (n vectors of length d) as float64.

    ``updates`` may be an (n, d) array or a sequence of n 1-D vectors (float32 is fine:
    each is promoted while it is added, so no (n, d) float64 copy is ever made). The
    sum runs in the given order, so the same inputs always give the same bits.
    """
    if isinstance(updates, np.ndarray) and updates.ndim != 2:
        raise PayloadError(f"updates must be a 2-D (n, d) array, got shape {updates.shape}")
    vectors = list(updates)
    if weights.shape != (len(vectors),):
        raise PayloadError(f"weights have shape {weights.shape}, expected ({len(vectors)},)")
    if not vectors:
        raise PayloadError("no updates to average")
    shape = vectors[0].shape
    if len(shape) != 1 or any(v.shape != shape for v in vectors):
        raise PayloadError("updates must be 1-D vectors of one length")
    w = weights.astype(np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise PayloadError("weights must be finite and >= 0")
    total = w.sum()
    if total <= 0:
        raise PayloadError("weights sum to 0: no participant reported any examples")
    acc = np.zeros(shape, dtype=np.float64)
    for share, vector in zip(w / total, vectors, strict=True):
        if share:
            acc += share * vector
    return acc


class ServerOptimizer(Protocol):
    """Turns the mean update into the next global model (flat float64 vectors)."""

    name: str

    def step(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """Return the next global vector."""
        ...


class FedAvg:
    """FedAvg server step: ``global + learning_rate * mean_update`` (McMahan et al. 2017)."""

    name = "fedavg"

    def __init__(self, *, learning_rate: float = 1.0) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"server.learning_rate must be > 0, got {learning_rate}")
        self.learning_rate = learning_rate

    def step(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """Return ``global_vector + learning_rate * mean_update``."""
        if global_vector.shape != mean_update.shape:
            raise PayloadError(
                f"update has shape {mean_update.shape}, model has {global_vector.shape}"
            )
        return np.asarray(global_vector + self.learning_rate * mean_update)


def make_server_optimizer(name: str, *, learning_rate: float) -> ServerOptimizer:
    """Build the server optimizer named in the config."""
    if name == "fedavg":
        return FedAvg(learning_rate=learning_rate)
    raise ConfigError(f"server.optimizer {name!r} is not supported; allowed: 'fedavg'")
