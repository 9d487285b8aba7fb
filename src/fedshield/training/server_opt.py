"""Server-side optimizers: how the aggregated update moves the global model.

The coordinator averages the participants' updates (``delta = local - global``) with
:func:`weighted_mean`, then a :class:`ServerOptimizer` turns that mean into the next
global model. FedAvg (McMahan et al. 2017) is ``global + server_lr * mean_delta``;
adaptive optimizers (FedAdam, FedYogi; Reddi et al. 2021) plug in behind the same
protocol and keep their moments as explicit state.

Pure numpy, float64 throughout, no I/O.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedshield.errors import ConfigError, PayloadError

__all__ = ["FedAvg", "ServerOptimizer", "make_server_optimizer", "weighted_mean"]


def weighted_mean(updates: np.ndarray, *, weights: np.ndarray) -> np.ndarray:
    """Return the weighted mean of ``updates`` (n, d) with non-negative ``weights`` (n,).

    Computed in float64 as one BLAS matrix-vector product.
    """
    if updates.ndim != 2:
        raise PayloadError(f"updates must be a 2-D (n, d) array, got shape {updates.shape}")
    if weights.shape != (updates.shape[0],):
        raise PayloadError(f"weights have shape {weights.shape}, expected ({updates.shape[0]},)")
    w = weights.astype(np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise PayloadError("weights must be finite and >= 0")
    total = w.sum()
    if total <= 0:
        raise PayloadError("weights sum to 0: no participant reported any examples")
    return np.asarray((w / total) @ updates.astype(np.float64, copy=False))


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
