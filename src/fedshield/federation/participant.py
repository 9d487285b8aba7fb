"""What a participant does with a model it is given: evaluate it, train on it, report.

:class:`LocalTrainer` is the participant's side of a round without any transport: the
networked agent and the in-process simulation both call it. It loads the global weights
into the site's model, evaluates them on the site's held-out data, trains with the
configured local algorithm (FedAvg or FedProx) and returns the update
``local - global`` with the number of training examples as its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedshield.config import TaskConfig
from fedshield.errors import TaskError
from fedshield.tensors import Weights
from fedshield.training.local import TrainConfig, evaluate, train_local
from fedshield.training.tasks import TaskParts, load_weights, model_weights

__all__ = ["FitOutcome", "LocalTrainer", "train_config_of"]


@dataclass(frozen=True)
class FitOutcome:
    """A participant's answer to a fit round."""

    update: Weights
    num_examples: int
    metrics: dict[str, float]


def train_config_of(task: TaskConfig) -> TrainConfig:
    """Translate the ``[task]`` table into the local training config."""
    return TrainConfig(
        local_epochs=task.local_epochs,
        learning_rate=task.learning_rate,
        momentum=task.momentum,
        proximal_mu=task.proximal_mu if task.algorithm == "fedprox" else 0.0,
    )


class LocalTrainer:
    """Train and evaluate one site's model on its own data."""

    def __init__(self, parts: TaskParts, *, config: TrainConfig, seed: int) -> None:
        if parts.train_loader is None:
            raise TaskError("the task returned no training data for this participant")
        self.parts = parts
        self.config = config
        self.seed = seed

    def _evaluate(self) -> tuple[int, dict[str, float]]:
        if self.parts.test_loader is None:
            return 0, {}
        result = evaluate(self.parts.model, self.parts.test_loader)
        return result.num_examples, {"accuracy": result.accuracy, "loss": result.loss}

    def fit(self, global_weights: Weights, *, round: int) -> FitOutcome:
        """Evaluate ``global_weights`` locally, train from them and return the update."""
        load_weights(self.parts.model, global_weights)
        eval_examples, eval_metrics = self._evaluate()
        assert self.parts.train_loader is not None
        result = train_local(
            self.parts.model,
            self.parts.train_loader,
            config=self.config,
            generator_seed=self.seed * 1_000_003 + round,
        )
        local = model_weights(self.parts.model)
        update = {
            name: (local[name] - global_weights[name]).astype(np.float32) for name in global_weights
        }
        metrics = {"train_loss": result.mean_loss}
        if eval_examples:
            metrics["eval_accuracy"] = eval_metrics["accuracy"]
            metrics["eval_loss"] = eval_metrics["loss"]
        return FitOutcome(update=update, num_examples=result.num_examples, metrics=metrics)

    def evaluate(self, global_weights: Weights) -> tuple[int, dict[str, float]]:
        """Return ``(num_examples, {"accuracy", "loss"})`` of ``global_weights`` here."""
        load_weights(self.parts.model, global_weights)
        count, metrics = self._evaluate()
        if count == 0:
            raise TaskError("this participant has no held-out data to evaluate on")
        return count, metrics
