"""A synthetic fedshield task whose model has exactly ``d`` float32 parameters.

Used by ``benchmarks/round_overhead.py``: the coordinator subprocess imports it as the
user task ``synthetic_task:factory`` (``benchmarks/`` must be on ``PYTHONPATH``).

``d`` comes from the environment variable ``FEDSHIELD_BENCH_D`` (default 100000). The
model is a single flat ``nn.Parameter`` named ``weight``, so its federated state is one
float32 tensor of shape ``(d,)`` and its raw size is exactly ``4 * d`` bytes.

For the coordinator role no loaders are returned (no server evaluation). For the
participant role a tiny synthetic two-class problem (8 features) is returned, so a real
``fedshield participant`` can run this task too; the model then uses only the first 16
parameters (``x @ weight[:16].view(8, 2)``) and every other parameter gets a zero
gradient.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from fedshield.errors import ConfigError
from fedshield.training.datasets import ArrayDataset
from fedshield.training.tasks import TaskContext, TaskParts, make_loader

__all__ = ["ENV_D", "FlatModel", "factory", "parameter_count"]

ENV_D = "FEDSHIELD_BENCH_D"
DEFAULT_D = 100_000
_FEATURES = 8
_SAMPLES = 64


def parameter_count() -> int:
    """Return ``d`` from ``FEDSHIELD_BENCH_D`` (default 100000)."""
    raw = os.environ.get(ENV_D, str(DEFAULT_D)).strip()
    try:
        # Accept "100000", "1e6" and "1_000_000".
        value = float(raw.replace("_", ""))
    except ValueError as exc:
        raise ConfigError(f"{ENV_D}={raw!r} is not a number") from exc
    if not value.is_integer() or value < 1:
        raise ConfigError(f"{ENV_D} must be a positive integer, got {raw!r}")
    return int(value)


class FlatModel(nn.Module):
    """One flat float32 parameter vector of length ``d``."""

    def __init__(self, d: int, *, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(0.01 * torch.randn(d, generator=generator, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-class logits from the first ``2 * features`` parameters."""
        features = x.shape[1]
        return x @ self.weight[: 2 * features].view(features, 2)


def factory(ctx: TaskContext) -> TaskParts:
    """Build the synthetic task (see the module docstring)."""
    d = parameter_count()
    model = FlatModel(d, seed=ctx.seed)
    if ctx.role == "coordinator":
        return TaskParts(model=model, train_loader=None, test_loader=None)
    if d < 2 * _FEATURES:
        raise ConfigError(f"the participant role needs {ENV_D} >= {2 * _FEATURES}, got {d}")
    rng = np.random.default_rng([ctx.seed, ctx.partition_index])
    x = rng.standard_normal((_SAMPLES, _FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    train = ArrayDataset(x[:48], y[:48], num_classes=2)
    held_out = ArrayDataset(x[48:], y[48:], num_classes=2)
    batch = ctx.data.batch_size
    return TaskParts(
        model=model,
        train_loader=make_loader(train, batch_size=batch, shuffle_seed=ctx.seed),
        test_loader=make_loader(held_out, batch_size=batch, shuffle_seed=None),
    )
