"""What a participant does with a model it is given: evaluate it, train on it, report.

:class:`LocalTrainer` is the participant's side of a round without any transport: the
networked agent and the in-process simulation both call it. It loads the global weights
into the site's model, evaluates them on the site's held-out data, trains with the
configured local algorithm (FedAvg or FedProx) and returns the update
``local - global`` with the number of training examples as its weight.

With a :class:`~fedshield.federation.privacy_ledger.SitePrivacy` the site trains with
DP-SGD (sample-level DP). Before it touches the data it checks the round against its
privacy ledger and refuses with :class:`~fedshield.errors.BudgetExhaustedError` if the
round would take it over budget; otherwise it trains, records the round in the ledger
(fsynced) and only then returns the update. Its metrics then carry ``epsilon`` (spent
after this round), ``delta``, ``target_epsilon`` and ``dp = 1``, and not the training
loss, which no accountant covers. Without DP they carry ``dp = 0`` and ``train_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedshield.config import TaskConfig
from fedshield.errors import TaskError
from fedshield.federation.privacy_ledger import SitePrivacy
from fedshield.privacy.dpfedavg import local_update
from fedshield.privacy.ledger import LedgerEntry
from fedshield.secagg.randomness import system_random
from fedshield.tensors import Layout, Weights, flatten, unflatten
from fedshield.training.dpsgd import DPSGDConfig, dataset_tensors, train_dp_sgd
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
    """Train and evaluate one site's model on its own data.

    ``privacy`` (``None``: no DP) makes every fit DP-SGD under the site's ledger.
    """

    def __init__(
        self,
        parts: TaskParts,
        *,
        config: TrainConfig,
        seed: int,
        privacy: SitePrivacy | None = None,
    ) -> None:
        if parts.train_loader is None:
            raise TaskError("the task returned no training data for this participant")
        self.parts = parts
        self.config = config
        self.seed = seed
        self.privacy = privacy
        self._records: tuple[torch.Tensor, torch.Tensor] | None = None
        if privacy is not None:
            privacy.check_records(self.num_records)

    @property
    def num_records(self) -> int:
        """The site's training records (``N``)."""
        return int(self._training_records()[0].shape[0])

    def _training_records(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._records is None:
            assert self.parts.train_loader is not None
            self._records = dataset_tensors(self.parts.train_loader)
        return self._records

    def _evaluate(self) -> tuple[int, dict[str, float]]:
        if self.parts.test_loader is None:
            return 0, {}
        result = evaluate(self.parts.model, self.parts.test_loader)
        return result.num_examples, {"accuracy": result.accuracy, "loss": result.loss}

    def fit(
        self,
        global_weights: Weights,
        *,
        round: int,
        attempt: int = 1,
        local_dp: tuple[float, float] | None = None,
    ) -> FitOutcome:
        """Evaluate ``global_weights`` locally, train from them and return the update.

        ``local_dp = (clip_norm, noise_multiplier)``: participant-level DP with local
        noise. The update is clipped to ``clip_norm`` and noised here, with this site's
        CSPRNG, before it is returned (:func:`fedshield.privacy.dpfedavg.local_update`).

        Raises
        ------
        BudgetExhaustedError
            With DP, if this round would exceed the site's budget. Nothing was trained
            or recorded; the caller refuses the round (a dropout, not a crash).
        """
        plan = self._plan(round, attempt) if self.privacy is not None else None
        load_weights(self.parts.model, global_weights)
        eval_examples, eval_metrics = self._evaluate()
        metrics: dict[str, float]
        if plan is not None:
            num_examples, metrics = self._fit_dp(*plan)
        else:
            assert self.parts.train_loader is not None
            plain = train_local(
                self.parts.model,
                self.parts.train_loader,
                config=self.config,
                generator_seed=self.seed * 1_000_003 + round,
            )
            num_examples = plain.num_examples
            metrics = {"dp": 0.0, "train_loss": plain.mean_loss}
        local = model_weights(self.parts.model)
        update = {
            name: (local[name] - global_weights[name]).astype(np.float32) for name in global_weights
        }
        if local_dp is not None:
            layout = Layout.of(update)
            clip_norm, noise_multiplier = local_dp
            noised, _ = local_update(
                flatten(update, layout),
                clip_norm=clip_norm,
                noise_multiplier=noise_multiplier,
                rng=system_random(),
            )
            update = unflatten(noised.astype(np.float32), layout)
            metrics["local_dp"] = 1.0
        if eval_examples:
            metrics["eval_accuracy"] = eval_metrics["accuracy"]
            metrics["eval_loss"] = eval_metrics["loss"]
        return FitOutcome(update=update, num_examples=num_examples, metrics=metrics)

    def _plan(self, round: int, attempt: int) -> tuple[DPSGDConfig, LedgerEntry, float]:
        """Return this round's DP-SGD settings, its ledger entry and the epsilon after it.

        Raises BudgetExhaustedError before the data is touched if the round does not fit.
        """
        assert self.privacy is not None
        dp = self.privacy.dp_config(self.config, records=self.num_records, round=round)
        entry = LedgerEntry(
            round=round,
            attempt=attempt,
            noise_multiplier=dp.noise_multiplier,
            sampling_rate=dp.sampling_rate,
            steps=dp.steps(self.config),
        )
        return dp, entry, self.privacy.admit(entry)

    def _fit_dp(
        self, dp: DPSGDConfig, entry: LedgerEntry, epsilon_after: float
    ) -> tuple[int, dict[str, float]]:
        assert self.privacy is not None
        x, y = self._training_records()
        result = train_dp_sgd(
            self.parts.model, x, y, config=self.config, dp=dp, rng=self.privacy.rng()
        )
        # Durable before the update can leave: a crash after this forgets no spending.
        self.privacy.record(entry)
        budget = self.privacy.budget
        return result.num_examples, {
            "dp": 1.0,
            "epsilon": epsilon_after,  # recomputed from the ledger with this entry in it
            "delta": budget.target_delta,
            "target_epsilon": budget.target_epsilon,
        }

    def evaluate(self, global_weights: Weights) -> tuple[int, dict[str, float]]:
        """Return ``(num_examples, {"accuracy", "loss"})`` of ``global_weights`` here."""
        load_weights(self.parts.model, global_weights)
        count, metrics = self._evaluate()
        if count == 0:
            raise TaskError("this participant has no held-out data to evaluate on")
        return count, metrics
