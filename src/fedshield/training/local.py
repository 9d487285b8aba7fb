"""Local training and evaluation on one participant's data.

:func:`train_local` runs SGD with momentum on the cross-entropy loss. With
``proximal_mu > 0`` it is FedProx (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020): the local objective gains ``(mu / 2) * ||w - w_global||^2``,
where ``w_global`` is the model as it arrived, which keeps local models from drifting
far on non-IID data. With ``proximal_mu = 0`` it is FedAvg's local step (McMahan et al.
2017).

Neither function changes global torch settings (threads, default dtype); any random
layer (dropout) draws from a generator seeded by ``generator_seed`` inside a forked RNG
state, so the caller's global RNG is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedshield.errors import ConfigError, TaskError

__all__ = ["EvalResult", "TrainConfig", "TrainResult", "evaluate", "train_local"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one participant's local training in a round.

    Attributes
    ----------
    local_epochs : int, default 1
        Passes over the local training data (>= 1).
    learning_rate : float, default 0.05
        SGD step size (> 0).
    momentum : float, default 0.9
        SGD momentum, in ``[0, 1)``.
    weight_decay : float, default 0.0
        L2 penalty (>= 0).
    proximal_mu : float, default 0.0
        FedProx proximal coefficient (>= 0); 0 is plain FedAvg.
    max_steps : int or None, default None
        Stop after this many optimizer steps (>= 1), whatever the epochs.
    """

    local_epochs: int = 1
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        """Validate every field; raise ConfigError naming the first bad one."""
        if isinstance(self.local_epochs, bool) or self.local_epochs < 1:
            raise ConfigError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not math.isfinite(self.proximal_mu) or self.proximal_mu < 0:
            raise ConfigError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")


@dataclass(frozen=True)
class TrainResult:
    """What local training reports.

    Attributes
    ----------
    num_examples : int
        Distinct training examples used (those seen in the first epoch); the weight of
        this update in FedAvg.
    mean_loss : float
        Mean cross-entropy over every example processed (without the proximal term).
    steps : int
        Optimizer steps taken.
    """

    num_examples: int
    mean_loss: float
    steps: int


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of a model on a data set.

    Attributes
    ----------
    num_examples : int
        Examples evaluated (0 for an empty loader, then loss and accuracy are 0.0).
    loss : float
        Mean cross-entropy.
    accuracy : float
        Fraction of examples whose arg-max prediction equals the label, in ``[0, 1]``.
    """

    num_examples: int
    loss: float
    accuracy: float


def _batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if (
        not isinstance(batch, tuple | list)
        or len(batch) != 2
        or not all(isinstance(t, torch.Tensor) for t in batch)
    ):
        raise TaskError(
            f"the data loader must yield (x, y) tensor pairs, got {type(batch).__name__}"
        )
    x, y = batch
    return x, y.long()


def train_local(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    config: TrainConfig,
    generator_seed: int,
) -> TrainResult:
    """Train ``model`` in place on ``loader`` with SGD (FedAvg, or FedProx if mu > 0).

    Parameters
    ----------
    model : nn.Module
        The model as received from the coordinator; updated in place.
    loader : iterable of (x, y)
        Training batches; ``y`` holds class ids.
    config : TrainConfig
        Hyper-parameters.
    generator_seed : int
        Seed for random layers (dropout) during training; the global torch RNG is
        restored afterwards.

    Returns
    -------
    TrainResult
        Examples used, mean loss and steps taken.

    Raises
    ------
    TaskError
        If the loader yields no batches or not ``(x, y)`` pairs, or the loss becomes
        NaN or infinite (the model is then left partly trained).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    anchor = [p.detach().clone() for p in params] if config.proximal_mu > 0 else []
    loss_sum, seen, num_examples, steps = 0.0, 0, 0, 0
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for epoch in range(config.local_epochs):
            for raw in loader:
                x, y = _batch(raw)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                objective = loss
                if anchor:
                    drift = torch.stack(
                        [(p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)]
                    ).sum()
                    objective = loss + 0.5 * config.proximal_mu * drift
                if not torch.isfinite(objective):
                    raise TaskError(
                        f"training loss became {objective.item()} at step {steps + 1}",
                        hint="Lower the learning rate (or clip gradients) and try again.",
                    )
                torch.autograd.backward(objective)
                optimizer.step()
                steps += 1
                loss_sum += float(loss.item()) * y.shape[0]
                seen += int(y.shape[0])
                if epoch == 0:
                    num_examples += int(y.shape[0])
                if config.max_steps is not None and steps >= config.max_steps:
                    break
            if config.max_steps is not None and steps >= config.max_steps:
                break
            if steps == 0:
                raise TaskError("the training data loader yielded no batches")
    return TrainResult(num_examples=num_examples, mean_loss=loss_sum / seen, steps=steps)


def evaluate(model: nn.Module, loader: Iterable[Any]) -> EvalResult:
    """Return the mean cross-entropy and accuracy of ``model`` on ``loader``.

    Runs under ``torch.no_grad()`` in eval mode; the model's previous train/eval mode
    is restored afterwards.

    Parameters
    ----------
    model : nn.Module
        The model to score.
    loader : iterable of (x, y)
        Evaluation batches.

    Returns
    -------
    EvalResult
        Examples evaluated, mean loss and accuracy (0.0 and 0.0 when empty).

    Raises
    ------
    TaskError
        If the loader yields something other than ``(x, y)`` pairs.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    try:
        with torch.no_grad():
            for raw in loader:
                x, y = _batch(raw)
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum").item())
                correct += int((logits.argmax(dim=1) == y).sum().item())
                total += int(y.shape[0])
    finally:
        model.train(was_training)
    if total == 0:
        return EvalResult(num_examples=0, loss=0.0, accuracy=0.0)
    return EvalResult(num_examples=total, loss=loss_sum / total, accuracy=correct / total)
