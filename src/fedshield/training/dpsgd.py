"""Sample-level differentially private local training: DP-SGD.

Abadi et al., 2016, "Deep Learning with Differential Privacy", CCS 2016. Every step:

1. **Poisson sampling**: each of the site's ``N`` records joins the batch independently
   with probability ``q`` (``sampling_rate``), drawn from a CSPRNG. The privacy
   amplification the accountant credits assumes exactly this sampling (a shuffled
   fixed-size batch would need a different analysis);
2. **per-sample gradients** with :mod:`torch.func` (``vmap`` over ``grad``), each clipped
   to L2 norm at most ``C`` (``max_grad_norm``) over all parameters together;
3. **Gaussian noise** ``N(0, (sigma * C)^2)`` added to the sum of the clipped gradients,
   drawn from the same CSPRNG (:mod:`fedshield.privacy.noise`), and the result divided
   by the *expected* batch size ``q * N`` (not the realized one, which would leak it);
4. an ordinary optimizer step (SGD with momentum and weight decay, and FedProx's proximal
   gradient, which depends on no record): post-processing, free of privacy cost.

One local epoch is ``round(1 / q)`` steps, so a round costs ``local_epochs * round(1/q)``
compositions of the Poisson-subsampled Gaussian mechanism with noise multiplier
``sigma``: that is what :attr:`DPTrainResult.steps` reports to the privacy ledger.

The model must not mix records inside a batch (no BatchNorm: use GroupNorm or
LayerNorm) and may not use random layers (``vmap`` runs with ``randomness="error"``);
both are refused with a :class:`~fedshield.errors.ConfigError` before training.

What misuse breaks: reporting the *training loss* (:attr:`DPTrainResult.mean_loss`)
outside the site spends privacy that no accountant counts; it is for local logs only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset

from fedshield.errors import ConfigError, TaskError
from fedshield.privacy.noise import gaussian
from fedshield.secagg.randomness import SecureRandom
from fedshield.training.local import TrainConfig

__all__ = ["DPSGDConfig", "DPTrainResult", "dataset_tensors", "train_dp_sgd"]

# Per-sample gradients are computed this many records at a time (memory: chunk * d floats).
_CHUNK = 256


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD's three knobs.

    Attributes
    ----------
    noise_multiplier : float
        ``sigma`` (> 0): the noise std is ``sigma * max_grad_norm``. Noise 0 is not DP
        and is refused; leave DP off instead.
    max_grad_norm : float
        ``C`` (> 0): the L2 bound of every record's gradient.
    sampling_rate : float
        ``q`` in ``(0, 1]``: each record's chance to be in a step's batch.
    """

    noise_multiplier: float
    max_grad_norm: float
    sampling_rate: float

    def __post_init__(self) -> None:
        """Validate every field; raise ConfigError naming the first bad one."""
        _positive("dp.noise_multiplier", self.noise_multiplier)
        _positive("dp.max_grad_norm", self.max_grad_norm)
        q = _positive("dp.sampling_rate", self.sampling_rate)
        if q > 1:
            raise ConfigError(f"dp.sampling_rate must be <= 1, got {q}")

    @property
    def steps_per_epoch(self) -> int:
        """``round(1 / q)``: the steps that make one expected pass over the data."""
        return max(1, round(1.0 / self.sampling_rate))

    def steps(self, train: TrainConfig) -> int:
        """Return one round's steps: ``local_epochs * steps_per_epoch``, capped by max_steps."""
        total = train.local_epochs * self.steps_per_epoch
        return total if train.max_steps is None else min(total, train.max_steps)


@dataclass(frozen=True)
class DPTrainResult:
    """What DP-SGD reports.

    Attributes
    ----------
    num_examples : int
        Records at the site (``N``); the weight of this update in FedAvg.
    mean_loss : float
        Mean loss over the sampled records (NaN if every batch was empty). **Not
        private**: keep it at the site.
    steps : int
        Noisy steps taken: the compositions the privacy ledger must record.
    sampled : int
        Records processed over all steps (for throughput figures).
    """

    num_examples: int
    mean_loss: float
    steps: int
    sampled: int


def dataset_tensors(data: Dataset[Any] | DataLoader[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return all of a dataset's (or a loader's dataset's) records as ``(x, y)`` tensors."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for batch in DataLoader(dataset, batch_size=1024, shuffle=False):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise TaskError("the training data must yield (x, y) pairs")
        xs.append(batch[0])
        ys.append(batch[1].long())
    if not xs:
        raise TaskError("the training data is empty", hint="Give the site at least one record.")
    return torch.cat(xs), torch.cat(ys)


def _check_model(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"DP-SGD cannot train a model with {type(module).__name__}: batch "
                "statistics mix records, so a per-record bound does not hold",
                hint="Replace BatchNorm with GroupNorm or LayerNorm.",
            )
        if isinstance(module, nn.modules.dropout._DropoutNd):
            raise ConfigError(
                f"DP-SGD cannot train a model with {type(module).__name__}: per-record "
                "gradients are computed without random layers",
                hint="Remove the dropout layers, or train without DP ([privacy] "
                "mode = 'off', insecure).",
            )


def _sample(rng: SecureRandom, n: int, q: float) -> torch.Tensor:
    """Return the indices of a Poisson sample: each of ``n`` records with chance ``q``."""
    if q >= 1.0:
        return torch.arange(n)
    bits = rng.uniform_u64(n) >> np.uint64(11)  # 53 uniform bits
    chosen = np.flatnonzero(bits < np.uint64(math.floor(q * 2.0**53)))
    return torch.from_numpy(chosen)


def train_dp_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: TrainConfig,
    dp: DPSGDConfig,
    rng: SecureRandom,
) -> DPTrainResult:
    """Train ``model`` in place on the records ``(x, y)`` with DP-SGD.

    Parameters
    ----------
    model : nn.Module
        The model as received; updated in place. No BatchNorm, no random layers.
    x, y : torch.Tensor
        All of the site's training records (``N`` rows) and their class ids.
    config : TrainConfig
        Learning rate, momentum, weight decay, FedProx mu, epochs and max steps.
    dp : DPSGDConfig
        Noise multiplier, clip norm and sampling rate.
    rng : SecureRandom
        The source of the sampling and the noise (``system_random()`` outside tests).

    Raises
    ------
    ConfigError
        If the model has BatchNorm.
    TaskError
        If there are no records, ``x`` and ``y`` disagree in length, or the update
        becomes NaN or infinite.
    """
    _check_model(model)
    n = int(x.shape[0])
    if n == 0 or y.shape[0] != n:
        raise TaskError(f"DP-SGD needs records with one label each, got {n} and {y.shape[0]}")
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    params = list(named.values())
    sizes = [p.numel() for p in params]
    optimizer = torch.optim.SGD(
        params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    anchor = [p.detach().clone() for p in params] if config.proximal_mu > 0 else []
    clip = float(dp.max_grad_norm)
    std = float(dp.noise_multiplier) * clip
    expected = dp.sampling_rate * n

    def record_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> Any:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_record = vmap(grad(record_loss), in_dims=(None, 0, 0))
    steps = dp.steps(config)
    loss_sum, sampled = 0.0, 0
    model.train()
    for step in range(steps):
        batch = _sample(rng, n, dp.sampling_rate)
        summed = [torch.zeros_like(p) for p in params]
        frozen = {k: p.detach() for k, p in named.items()}
        for start in range(0, int(batch.numel()), _CHUNK):
            index = batch[start : start + _CHUNK]
            xb, yb = x[index], y[index]
            grads = per_record(frozen, xb, yb)
            flat = [grads[k].reshape(index.numel(), -1) for k in named]
            norms = torch.sqrt(sum((g.pow(2).sum(dim=1) for g in flat), torch.zeros(())))
            factor = (clip / (norms + 1e-12)).clamp(max=1.0)
            for total, g in zip(summed, flat, strict=True):
                total += (factor @ g).reshape(total.shape)
            with torch.no_grad():
                loss_sum += float(F.cross_entropy(model(xb), yb, reduction="sum"))
            sampled += int(index.numel())
        noise = torch.from_numpy(gaussian(rng, sum(sizes), std=std))
        optimizer.zero_grad(set_to_none=True)
        for p, total, chunk in zip(params, summed, torch.split(noise, sizes), strict=True):
            p.grad = (total + chunk.reshape(p.shape).to(total.dtype)) / expected
        if anchor:  # FedProx's proximal gradient depends on no record
            for p, a in zip(params, anchor, strict=True):
                assert p.grad is not None
                p.grad += config.proximal_mu * (p.detach() - a)
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise TaskError(
                f"DP-SGD made the model NaN or infinite at step {step + 1}",
                hint="Lower the learning rate or the clip norm and try again.",
            )
    mean_loss = loss_sum / sampled if sampled else math.nan
    return DPTrainResult(num_examples=n, mean_loss=mean_loss, steps=steps, sampled=sampled)
