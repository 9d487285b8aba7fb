r"""The federated round as a sans-I/O state machine.

One :class:`RoundMachine` drives a whole federation::

    WAITING --enough participants--> FIT --all answered or deadline--> COMMITTING
       ^   \--join deadline, too few: retry or FAILED                    |
       |                                                   shell persists, calls committed()
       +------------------------------------------------------------------+
    after the last fit round: WAITING -> EVALUATE (final model) -> FINISHED

It never reads a clock, opens a socket or touches a file: time (``now``), the set of
reachable participants and randomness (``rng``) are parameters, and its outputs are
frozen event objects. The in-process simulation and the networked coordinator run the
same machine; only the shell around it differs. The shell must persist a
:class:`CommitRequest` durably and then call :meth:`RoundMachine.committed`; until it
does, the machine stays in COMMITTING and opens no new round.

Invariants: a participant answers a round at most once, only if it was selected, only
before the deadline and only for the model the round distributed (checked by SHA3
hash). A round with fewer than ``min_participants`` answers is retried up to
``max_retries`` times and then fails with a recorded reason.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from fedshield.config import RobustConfig, RoundsConfig
from fedshield.errors import ConfigError, PayloadError, ProtocolError
from fedshield.privacy.dpfedavg import ParticipantDP, central_mean, sum_sensitivity
from fedshield.privacy.noise import standard_normal
from fedshield.robust import aggregate as robust_aggregate
from fedshield.robust.trust import Score, TrustPolicy, TrustState, round_scores, update_trust
from fedshield.secagg.randomness import SecureRandom
from fedshield.tensors import Layout, Weights, flatten, unflatten, weights_sha3
from fedshield.training.server_opt import ServerOptimizer, weighted_mean

__all__ = [
    "Assignment",
    "CommitRequest",
    "Event",
    "FederationFailed",
    "FederationFinished",
    "Kind",
    "ModelRef",
    "Phase",
    "RoundEvaluated",
    "RoundMachine",
    "RoundOpened",
    "RoundPolicy",
    "RoundRetried",
    "SecureProgress",
    "refusal_note",
]

MAX_EXAMPLES = 10**9
MAX_METRICS = 32
SITE_METRICS = frozenset({"dp", "epsilon", "delta", "target_epsilon"})
"""Metrics that describe one site, not the round (its privacy spending): recorded as
``<site>.<metric>`` and never averaged. ``epsilon_max`` is the round's largest epsilon."""

Kind = Literal["fit", "evaluate"]


class Phase(StrEnum):
    """Where the federation stands."""

    WAITING = "waiting"
    FIT = "fit"
    EVALUATE = "evaluate"
    COMMITTING = "committing"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class RoundPolicy:
    """Selection, quorum and deadlines (see :class:`~fedshield.config.RoundsConfig`)."""

    rounds: int
    fraction: float = 1.0
    per_round: int | None = None
    min_participants: int = 2
    min_available: int | None = None
    fit_timeout_s: float = 120.0
    evaluate_timeout_s: float = 60.0
    join_timeout_s: float = 120.0
    max_retries: int = 2
    final_evaluation: bool = True
    secure: bool = False
    secure_timeout_s: float = 0.0
    robust_rule: str = "mean"
    num_byzantine: int = 0
    robust_params: Mapping[str, float] = field(default_factory=dict)
    trust: TrustPolicy | None = None
    participant_dp: ParticipantDP | None = None

    @classmethod
    def from_config(
        cls,
        rounds: RoundsConfig,
        *,
        secure: bool = False,
        secure_timeout_s: float = 0.0,
        robust: RobustConfig | None = None,
    ) -> RoundPolicy:
        """Build the policy from the ``[rounds]`` (and ``[robust]``) tables.

        ``secure``: SecAgg+ is on; its stages get ``secure_timeout_s`` on top of
        ``fit_timeout_s`` (the training time) in every fit round.
        """
        robust = robust or RobustConfig()
        return cls(
            rounds=rounds.count,
            fraction=rounds.fraction,
            per_round=rounds.per_round,
            min_participants=rounds.min_participants,
            min_available=rounds.min_available,
            fit_timeout_s=rounds.fit_timeout_s,
            evaluate_timeout_s=rounds.evaluate_timeout_s,
            join_timeout_s=rounds.join_timeout_s,
            max_retries=rounds.max_retries,
            final_evaluation=rounds.final_evaluation,
            secure=secure,
            secure_timeout_s=secure_timeout_s if secure else 0.0,
            robust_rule=robust.rule,
            num_byzantine=robust.num_byzantine,
            robust_params=dict(robust.params),
            # Scores need individual updates: a robust rule on, secure aggregation off.
            trust=(
                TrustPolicy(patience=robust.quarantine_after)
                if robust.rule != "mean" and robust.quarantine_after and not secure
                else None
            ),
        )

    def selection_size(self, available: int) -> int:
        """How many of ``available`` participants a fit round selects."""
        # round() first: 0.07 * 100 is 7.000000000000001 in floating point, not 8 people.
        wanted = self.per_round or math.ceil(round(self.fraction * available, 9))
        return min(available, max(wanted, self.min_participants))


@dataclass(frozen=True)
class SecureProgress:
    """An open secure fit round: who reported its training, and its deadlines."""

    round: int
    attempt: int
    selected: tuple[str, ...]
    reported: Mapping[str, int]
    refused: frozenset[str]
    training_deadline: datetime
    deadline: datetime


@dataclass(frozen=True)
class ModelRef:
    """A committed model version and its canonical SHA3-256 hash."""

    version: int
    sha3: str


@dataclass(frozen=True)
class Assignment:
    """What a selected participant is asked to do."""

    federation: str
    round: int
    attempt: int
    kind: Kind
    model: ModelRef
    deadline: datetime
    local_dp: tuple[float, float] | None = None
    """Local participant-level DP: ``(clip_norm, noise_multiplier)`` the site applies."""


@dataclass(frozen=True)
class RoundOpened:
    """A round was opened and participants were selected."""

    round: int
    attempt: int
    kind: Kind
    model: ModelRef
    selected: tuple[str, ...]
    deadline: datetime


@dataclass(frozen=True)
class CommitRequest:
    """A fit round closed with a quorum; the shell must persist ``weights``."""

    round: int
    attempt: int
    parent: ModelRef
    weights: Weights
    sha3: str
    answered: tuple[str, ...]
    dropped: tuple[str, ...]
    rejected: Mapping[str, str]
    metrics: Mapping[str, float]
    scores: Mapping[str, Score] = field(default_factory=dict)
    quarantined: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoundEvaluated:
    """The final evaluation round closed with a quorum."""

    round: int
    attempt: int
    model: ModelRef
    answered: tuple[str, ...]
    dropped: tuple[str, ...]
    metrics: Mapping[str, float]
    per_participant: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class RoundRetried:
    """An attempt ended without a quorum and will be repeated."""

    round: int
    attempt: int
    kind: Kind
    reason: str
    answered: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class FederationFailed:
    """A round failed after its retries; the federation stops."""

    round: int
    attempt: int
    kind: Kind
    reason: str
    answered: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class FederationFinished:
    """All rounds (and the final evaluation) are done."""

    model: ModelRef


Event = (
    RoundOpened
    | CommitRequest
    | RoundEvaluated
    | RoundRetried
    | FederationFailed
    | FederationFinished
)


@dataclass
class _Open:
    round: int
    attempt: int
    kind: Kind
    selected: tuple[str, ...]
    deadline: datetime
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    secure_sum: tuple[np.ndarray, tuple[str, ...]] | None = None
    group_means: tuple[np.ndarray, ...] = ()
    secure_failure: str | None = None
    root_update: np.ndarray | None = None
    pool: int = 0  # participants the round was drawn from
    noise_shares: int = 0  # distributed DP: participants that each added 1/n of the noise


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise PayloadError(f"{len(metrics)} metrics reported, at most {MAX_METRICS} allowed")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise PayloadError("metric names must be strings of 1-64 characters")
        number = float(value)
        if not math.isfinite(number):
            raise PayloadError(f"metric {key!r} is not finite: {value!r}")
        out[key] = number
    return out


def refusal_note(rejected: Mapping[str, str]) -> str:
    """Return ``"; refused: NAME: REASON and N more"`` for a failure reason, or ``""``.

    Says why a round lacks answers (a spent privacy budget, a refused payload...).
    """
    if not rejected:
        return ""
    first, why = sorted(rejected.items())[0]
    others = f" and {len(rejected) - 1} more" if len(rejected) > 1 else ""
    return f"; refused: {first}: {why}{others}"


def _round_metrics(op: _Open, answered: tuple[str, ...]) -> dict[str, float]:
    """Average the answers' metrics by example count; keep site metrics per site."""
    shared = {
        p: {k: v for k, v in op.metrics[p].items() if k not in SITE_METRICS} for p in answered
    }
    metrics = _weighted_metrics(shared, {p: op.examples[p] for p in answered})
    epsilons = []
    for p in answered:
        for key in sorted(SITE_METRICS & set(op.metrics[p])):
            metrics[f"{p}.{key}"] = op.metrics[p][key]
        if "epsilon" in op.metrics[p]:
            epsilons.append(op.metrics[p]["epsilon"])
    if epsilons:
        metrics["epsilon_max"] = max(epsilons)
    return metrics


def _weighted_metrics(
    metrics: Mapping[str, Mapping[str, float]], examples: Mapping[str, int]
) -> dict[str, float]:
    keys = sorted({k for m in metrics.values() for k in m})
    out: dict[str, float] = {}
    for key in keys:
        pairs = [(m[key], examples[p]) for p, m in metrics.items() if key in m]
        total = sum(w for _, w in pairs)
        if total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out


class RoundMachine:
    """Select, distribute, collect, aggregate and hand over for commit; round after round.

    Parameters
    ----------
    federation
        Federation id; it is part of every assignment.
    policy
        Selection, quorum and deadlines.
    head, head_weights
        The model the next round starts from (normally the registry head).
    completed_rounds
        How many fit rounds are already committed (after a restart: from the registry).
    optimizer
        The server optimizer applied to the weighted mean update.
    rng
        Randomness for participant selection.
    evaluated
        Whether the final evaluation already happened (restart after the end).
    attempt, failures
        Where the next round resumes after a restart: its attempt number (attempts that
        a restart interrupted count here) and how many of its attempts failed for lack
        of answers (only these count against ``max_retries``).
    """

    def __init__(
        self,
        *,
        federation: str,
        policy: RoundPolicy,
        head: ModelRef,
        head_weights: Weights,
        completed_rounds: int,
        optimizer: ServerOptimizer,
        rng: np.random.Generator,
        evaluated: bool = False,
        attempt: int = 1,
        failures: int = 0,
        quarantined: Collection[str] = (),
        clip_norm: float | None = None,
        noise_rng: SecureRandom | None = None,
    ) -> None:
        if completed_rounds < 0:
            raise ValueError(f"completed_rounds must be >= 0, got {completed_rounds}")
        if attempt < 1 or not 0 <= failures < attempt:
            raise ValueError(
                f"need attempt >= 1 and 0 <= failures < attempt, got {attempt}, {failures}"
            )
        dp = policy.participant_dp
        if dp is not None and dp.noise == "central" and noise_rng is None:
            raise ValueError("central participant-level DP needs a noise_rng (a CSPRNG)")
        self.federation = federation
        self.policy = policy
        self._noise_rng = noise_rng
        # Participant-level DP: the bound the next round's updates are clipped to.
        self.clip_norm = clip_norm if clip_norm is not None else (dp.clip_norm if dp else None)
        self._pending_clip: float | None = None
        self.optimizer = optimizer
        self._rng = rng
        self._layout = Layout.of(head_weights)
        self._head = head
        self._head_vector = flatten(head_weights, self._layout)
        # The previous round's aggregated update (centered clipping's center).
        self._last_update = np.zeros(self._layout.size, dtype=np.float64)
        self._trust: dict[str, TrustState] = {}
        # FoolsGold: each participant's updates summed over the rounds it took part in.
        # Kept in memory only: a coordinator restart starts every history afresh.
        self._history: dict[str, np.ndarray] = {}
        self.quarantined: set[str] = set(quarantined)
        # Revoked certificates: never selected again, and out of the open round.
        self.revoked: set[str] = set()
        self.completed_rounds = completed_rounds
        self._evaluated = evaluated
        self._attempt = attempt
        self._failures = failures
        self._open: _Open | None = None
        self._waiting_since: datetime | None = None
        self._phase = Phase.WAITING
        self.failure: str | None = None

    # -- read-only views ------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def head(self) -> ModelRef:
        """The model the current or next round distributes."""
        return self._head

    @property
    def layout(self) -> Layout:
        """Names and shapes every update must have."""
        return self._layout

    @property
    def current(self) -> tuple[int, int, Kind] | None:
        """``(round, attempt, kind)`` of the open round, if one is open."""
        op = self._open  # read once: safe to call while another thread moves the machine
        if op is None:
            return None
        return op.round, op.attempt, op.kind

    @property
    def selected(self) -> tuple[str, ...]:
        """Participants selected for the open round."""
        return self._open.selected if self._open else ()

    @property
    def answered(self) -> tuple[str, ...]:
        """Participants that answered the open round."""
        return tuple(sorted(self._open.examples)) if self._open else ()

    def secure_progress(self) -> SecureProgress | None:
        """Where the open fit round's training stands, when SecAgg+ is on.

        ``None`` unless a secure fit round is open and still waits for its sum.
        """
        op = self._open
        if not self.policy.secure or op is None or op.kind != "fit":
            return None
        if op.secure_sum is not None or op.secure_failure is not None:
            return None
        return SecureProgress(
            round=op.round,
            attempt=op.attempt,
            selected=op.selected,
            reported=dict(op.examples),
            refused=frozenset(op.rejected),
            training_deadline=op.deadline - timedelta(seconds=self.policy.secure_timeout_s),
            deadline=op.deadline,
        )

    # -- driving ----------------------------------------------------------------------

    def set_head(self, head: ModelRef, weights: Weights) -> None:
        """Replace the head while no round is open (after an admin rollback)."""
        if self._phase is not Phase.WAITING:
            raise ProtocolError(f"cannot change the head model while the phase is {self._phase}")
        if Layout.of(weights) != self._layout:
            raise PayloadError("the new head model has a different layout")
        self._head = head
        self._head_vector = flatten(weights, self._layout)

    def tick(self, now: datetime, available: Collection[str]) -> list[Event]:
        """Advance on time and availability; return what happened."""
        if self._phase in (Phase.FIT, Phase.EVALUATE):
            assert self._open is not None
            op = self._open
            settled = len(op.examples) + len(op.rejected) >= len(op.selected)
            if self.policy.secure and op.kind == "fit":
                # The sum is the round's only result (or the protocol failed for good).
                settled = op.secure_sum is not None or op.secure_failure is not None
            if settled or now >= op.deadline:
                return self._close(now)
            return []
        if self._phase is not Phase.WAITING:
            return []
        kind: Kind
        if self.completed_rounds < self.policy.rounds:
            kind = "fit"
        elif self.policy.final_evaluation and not self._evaluated:
            kind = "evaluate"
        else:
            self._phase = Phase.FINISHED
            return [FederationFinished(model=self._head)]
        if self._waiting_since is None:
            self._waiting_since = now
        pool = sorted(set(available) - self.quarantined - self.revoked)
        wanted = max(self.policy.min_participants, self.policy.min_available or 0)
        waited = now - self._waiting_since >= timedelta(seconds=self.policy.join_timeout_s)
        if len(pool) >= wanted or (waited and len(pool) >= self.policy.min_participants):
            return [self._open_round(kind, pool, now)]
        if waited:
            reason = (
                f"only {len(pool)} of the required {self.policy.min_participants} "
                f"participants were reachable within {self.policy.join_timeout_s:g} s"
            )
            return [self._give_up(kind, reason, answered=(), dropped=())]
        return []

    def _round_number(self, kind: Kind) -> int:
        if kind == "fit":
            return self.completed_rounds + 1
        # After the last fit round (which may exceed a since-lowered rounds.count).
        return max(self.policy.rounds, self.completed_rounds) + 1

    def _open_round(self, kind: Kind, pool: list[str], now: datetime) -> RoundOpened:
        dp = self.policy.participant_dp
        if kind == "fit" and dp is not None and dp.sampling == "poisson":
            # Each participant independently, as the accountant assumes.
            draws = self._rng.random(len(pool))
            selected = tuple(
                sorted(p for p, u in zip(pool, draws, strict=True) if u < dp.sampling_rate)
            )
            timeout = self.policy.fit_timeout_s + self.policy.secure_timeout_s
        elif kind == "fit":
            k = self.policy.selection_size(len(pool))
            chosen = self._rng.choice(len(pool), size=k, replace=False)
            selected = tuple(sorted(pool[i] for i in chosen))
            timeout = self.policy.fit_timeout_s + self.policy.secure_timeout_s
        else:
            selected = tuple(pool)
            timeout = self.policy.evaluate_timeout_s
        deadline = now + timedelta(seconds=timeout)
        number = self._round_number(kind)
        self._open = _Open(number, self._attempt, kind, selected, deadline, pool=len(pool))
        self._phase = Phase.FIT if kind == "fit" else Phase.EVALUATE
        self._waiting_since = None
        return RoundOpened(number, self._attempt, kind, self._head, selected, deadline)

    def _give_up(
        self, kind: Kind, reason: str, *, answered: tuple[str, ...], dropped: tuple[str, ...]
    ) -> RoundRetried | FederationFailed:
        number, attempt = self._round_number(kind), self._attempt
        self._open = None
        self._pending_clip = None  # an adaptive bound from a round that is not committed
        self._waiting_since = None
        self._failures += 1
        self._attempt += 1
        if self._failures <= self.policy.max_retries:
            self._phase = Phase.WAITING
            return RoundRetried(number, attempt, kind, reason, answered, dropped)
        self._phase = Phase.FAILED
        self.failure = f"round {number} failed after {self._failures} attempt(s): {reason}"
        return FederationFailed(number, attempt, kind, self.failure, answered, dropped)

    def _close(self, now: datetime) -> list[Event]:
        assert self._open is not None
        op = self._open
        secure = self.policy.secure and op.kind == "fit"
        counted = set(op.examples)
        if secure:
            # Only participants whose input is in the secure sum answered the round.
            counted &= set(op.secure_sum[1]) if op.secure_sum is not None else set()
        answered = tuple(sorted(counted))
        dropped = tuple(p for p in op.selected if p not in counted)
        if secure and op.secure_sum is None:
            reason = op.secure_failure or "secure aggregation produced no sum before the deadline"
            return [self._give_up(op.kind, reason, answered=(), dropped=op.selected)]
        if len(answered) < self.policy.min_participants:
            reason = (
                f"{len(answered)} of {len(op.selected)} selected participants answered "
                f"before the deadline; at least {self.policy.min_participants} are required"
            )
            reason += refusal_note(op.rejected)
            return [self._give_up(op.kind, reason, answered=answered, dropped=dropped)]
        metrics = _round_metrics(op, answered)
        if op.kind == "evaluate":
            self._open = None
            self._evaluated = True
            self._phase = Phase.FINISHED
            evaluated = RoundEvaluated(
                op.round,
                op.attempt,
                self._head,
                answered,
                dropped,
                metrics,
                {p: dict(op.metrics[p]) for p in answered},
            )
            return [evaluated, FederationFinished(model=self._head)]
        try:
            if op.secure_sum is not None:
                mean_update = self._combine_secure(op, metrics)
            else:
                # Sorted order, not arrival order: the same updates give the same model.
                mean_update = self._combine(
                    [op.vectors[p] for p in answered], op, answered, metrics
                )
        except (ConfigError, PayloadError) as exc:
            reason = f"{self.policy.robust_rule} aggregation refused the round: {exc.message}"
            return [self._give_up(op.kind, reason, answered=answered, dropped=dropped)]
        new_vector = self.optimizer.step(self._head_vector, mean_update)
        if not np.all(np.abs(new_vector) <= np.finfo(np.float32).max):  # NaN fails too
            # Finite float64 updates can still overflow the float32 model: committing it
            # would hand every participant a model that trains to NaN.
            reason = (
                "the aggregated model overflows float32 (an update was far too large); "
                "the previous model stays"
            )
            return [self._give_up(op.kind, reason, answered=answered, dropped=dropped)]
        self._last_update = mean_update
        scores: dict[str, Score] = {}
        newly: list[str] = []
        if self.policy.trust is not None and op.vectors:
            scores = round_scores(
                {p: op.vectors[p] for p in answered}, mean_update, policy=self.policy.trust
            )
            self._trust, newly = update_trust(self._trust, scores, policy=self.policy.trust)
            self.quarantined.update(newly)
            for p, score in scores.items():
                metrics[f"{p}.trust_score"] = score.score
                metrics[f"{p}.trust"] = self._trust[p].trust
        new_weights = unflatten(new_vector, self._layout)
        self._open = None  # closed: nothing more is assigned or accepted for it
        self._phase = Phase.COMMITTING
        return [
            CommitRequest(
                round=op.round,
                attempt=op.attempt,
                parent=self._head,
                weights=new_weights,
                sha3=weights_sha3(new_weights),
                answered=answered,
                dropped=dropped,
                rejected=dict(op.rejected),
                metrics=metrics,
                scores=scores,
                quarantined=tuple(newly),
            )
        ]

    def release(self, participant: str) -> None:
        """Let a quarantined participant be selected again (an admin decided)."""
        self.quarantined.discard(participant)
        self._trust.pop(participant, None)

    def quarantine(self, participant: str) -> None:
        """Keep ``participant`` out of the rounds that open from now on (an admin decided)."""
        self.quarantined.add(participant)

    def revoke(self, participant: str, reason: str) -> None:
        """Take a participant whose certificate was revoked out of the federation.

        It is never selected again. In the open round it counts as a dropout: a result
        it already sent is thrown away (it was not yet aggregated), except under
        secure aggregation, where a site that already reported is in the protocol and
        leaves it as a SecAgg+ dropout at the next stage (the relay's business; its
        input can only be in the sum if it sent its masked input before the revocation).
        """
        self.revoked.add(participant)
        op = self._open
        if op is None or participant not in op.selected:
            return
        if participant in op.examples:
            if self.policy.secure and op.kind == "fit":
                return
            del op.examples[participant]
            op.vectors.pop(participant, None)
            op.metrics.pop(participant, None)
        op.rejected.setdefault(participant, reason)

    def _combine(
        self,
        vectors: list[np.ndarray],
        op: _Open,
        answered: tuple[str, ...],
        metrics: dict[str, float],
    ) -> np.ndarray:
        """Aggregate plain updates with the configured rule (FedAvg's weighted mean)."""
        if self.policy.participant_dp is not None:
            return self._combine_dp(np.stack(vectors), op, metrics)
        if self.policy.robust_rule == "mean" and not self.policy.robust_params:
            weights = np.array([op.examples[p] for p in answered], dtype=np.float64)
            return weighted_mean(vectors, weights=weights)
        return self._robust(np.stack(vectors), op, answered)

    def _combine_dp(self, rows: np.ndarray, op: _Open, metrics: dict[str, float]) -> np.ndarray:
        """Participant-level DP-FedAvg: equal weights, clipped, noised (see privacy.dpfedavg).

        Records what the accountant needs in ``metrics`` (``dp_*``). With adaptive
        clipping the next round's bound is computed *after* this round's noise, which
        uses this round's bound.
        """
        dp = self.policy.participant_dp
        assert dp is not None and self.clip_norm is not None
        answered = rows.shape[0]
        poisson = dp.sampling == "poisson"
        # Poisson: divide by the expected count (a public number), not the drawn one.
        denominator = dp.sampling_rate * op.pool if poisson else float(answered)
        rate = dp.sampling_rate if poisson else len(op.selected) / max(op.pool, 1)
        clip = self.clip_norm
        metrics["dp_clip_norm"] = clip
        metrics["dp_sampling_rate"] = rate
        metrics["dp_participants"] = float(answered)
        if dp.noise == "local":
            # Each site clipped and noised its own update; clipping again here would cut
            # the noise. The mean is the plain equal-weight mean.
            metrics["dp_noise_multiplier"] = dp.noise_multiplier
            metrics["dp_noise_std"] = dp.noise_multiplier * 2.0 * clip
            metrics["dp_next_clip_norm"] = clip
            return np.asarray(rows.sum(axis=0, dtype=np.float64) / denominator)
        assert self._noise_rng is not None
        result = central_mean(
            rows,
            clip_norm=clip,
            noise_multiplier=dp.update_noise_multiplier,
            sensitivity=sum_sensitivity(clip, sampling=dp.sampling, sampling_rate=rate),
            denominator=denominator,
            rng=self._noise_rng,
        )
        following = clip
        if dp.adaptive is not None:
            following = dp.adaptive.next_clip_norm(
                clip,
                within_count=result.within,
                count_noise=float(standard_normal(self._noise_rng, 1)[0]),
                participants=denominator,
            )
        metrics["dp_noise_multiplier"] = dp.noise_multiplier
        metrics["dp_noise_std"] = result.noise_std
        metrics["dp_next_clip_norm"] = following
        self._pending_clip = following
        return result.mean

    def _combine_secure(self, op: _Open, metrics: dict[str, float]) -> np.ndarray:
        """Return the secure sum's mean, or the robust rule over the group means.

        With distributed participant-level DP the mean already holds the survivors'
        discrete Gaussian noise; the round is accounted at ``z * sqrt(m / n)`` (``m``
        survivors of the ``n`` that each added ``1/n`` of the variance).
        """
        assert op.secure_sum is not None
        dp = self.policy.participant_dp
        if dp is not None and dp.noise == "distributed":
            assert self.clip_norm is not None
            survivors = len(op.secure_sum[1])
            shares = max(op.noise_shares, survivors)
            rate = len(op.selected) / max(op.pool, 1)
            z = dp.noise_multiplier * math.sqrt(survivors / shares)
            metrics["dp_clip_norm"] = self.clip_norm
            metrics["dp_sampling_rate"] = rate
            metrics["dp_participants"] = float(survivors)
            metrics["dp_noise_multiplier"] = z
            metrics["dp_noise_std"] = z * sum_sensitivity(
                self.clip_norm, sampling=dp.sampling, sampling_rate=rate
            )
            metrics["dp_next_clip_norm"] = self.clip_norm
            return op.secure_sum[0]
        if self.policy.robust_rule == "mean" or not op.group_means:
            return op.secure_sum[0]
        return self._robust(np.stack(op.group_means), op, ())

    def _robust(self, inputs: np.ndarray, op: _Open, answered: tuple[str, ...]) -> np.ndarray:
        """Apply the rule to ``inputs`` (one row per name in ``answered``, or group means)."""
        rule = self.policy.robust_rule
        params: dict[str, Any] = dict(self.policy.robust_params)
        if rule == "centered_clipping":
            # Karimireddy et al. clip around the previous aggregate (their momentum).
            params.setdefault("center", self._last_update)
        elif rule == "fltrust":
            if op.root_update is None:
                raise ConfigError("fltrust has no root update for this round")
            params["root_update"] = op.root_update
        elif rule == "foolsgold":
            # The history includes this round's update (Fung et al.); it is kept only
            # once the rule has accepted the round.
            history = np.stack(
                [self._history.get(p, 0.0) + row for p, row in zip(answered, inputs, strict=True)]
            )
            params["history"] = history
        result = robust_aggregate(
            rule,
            inputs,
            num_byzantine=self.policy.num_byzantine,
            **params,
        )
        if rule == "foolsgold":
            self._history.update(zip(answered, params["history"], strict=True))
        return result

    def committed(self, ref: ModelRef, weights: Weights) -> None:
        """Tell the machine the shell durably committed the pending model as ``ref``."""
        if self._phase is not Phase.COMMITTING:
            raise ProtocolError(f"nothing to commit: the phase is {self._phase}")
        self._head = ref
        self._head_vector = flatten(weights, self._layout)
        if self._pending_clip is not None:
            self.clip_norm = self._pending_clip
            self._pending_clip = None
        self.completed_rounds += 1
        self._attempt = 1
        self._failures = 0
        self._open = None
        self._phase = Phase.WAITING

    # -- participants -----------------------------------------------------------------

    def assignment_for(self, participant: str, now: datetime) -> Assignment | None:
        """Return the open round's task for ``participant``, if it still owes one."""
        op = self._open
        if op is None or participant not in op.selected:
            return None
        if participant in op.examples or participant in op.rejected:
            return None
        if now >= op.deadline:
            return None
        dp = self.policy.participant_dp
        local = None
        if op.kind == "fit" and dp is not None and dp.noise == "local":
            assert self.clip_norm is not None
            local = (self.clip_norm, dp.noise_multiplier)
        return Assignment(
            self.federation, op.round, op.attempt, op.kind, self._head, op.deadline, local
        )

    def expects(
        self, participant: str, *, kind: Kind, round: int, attempt: int, now: datetime
    ) -> None:
        """Raise :class:`ProtocolError` unless ``participant`` owes this round a result.

        The network shell asks this before it reads an upload's body, so a site that
        is not expected cannot make the coordinator buffer anything.
        """
        op = self._open
        if op is None or op.kind != kind:
            raise ProtocolError(f"no {kind} round is open (phase: {self._phase})")
        if (round, attempt) != (op.round, op.attempt):
            raise ProtocolError(
                f"result is for round {round} attempt {attempt}, "
                f"but round {op.round} attempt {op.attempt} is open"
            )
        if participant not in op.selected:
            raise ProtocolError(f"participant {participant!r} was not selected for round {round}")
        if participant in op.examples or participant in op.rejected:
            raise ProtocolError(f"participant {participant!r} already answered round {round}")
        if now >= op.deadline:
            raise ProtocolError(f"the deadline of round {round} has passed")

    def _check_submission(
        self,
        participant: str,
        *,
        kind: Kind,
        round: int,
        attempt: int,
        model_sha3: str,
        num_examples: int,
        now: datetime,
    ) -> _Open:
        self.expects(participant, kind=kind, round=round, attempt=attempt, now=now)
        op = self._open
        assert op is not None
        if model_sha3 != self._head.sha3:
            raise ProtocolError(
                f"result was computed from model {model_sha3[:12]}, but round {round} "
                f"distributes {self._head.sha3[:12]}"
            )
        if not 0 < num_examples <= MAX_EXAMPLES:
            raise PayloadError(f"num_examples must be in 1..{MAX_EXAMPLES}, got {num_examples}")
        return op

    def submit_fit(
        self,
        participant: str,
        *,
        round: int,
        attempt: int,
        model_sha3: str,
        num_examples: int,
        update: Mapping[str, np.ndarray] | None,
        metrics: Mapping[str, float],
        now: datetime,
    ) -> None:
        """Accept a participant's update (``local - global``) for the open fit round.

        With secure aggregation on, ``update`` must be ``None``: the participant reports
        only its example count and metrics, and its update reaches the coordinator
        inside the secure sum (:meth:`submit_secure_sum`), never alone.

        Raises
        ------
        ProtocolError
            Wrong round, attempt, participant, model or timing. Nothing is recorded.
        PayloadError
            Wrong tensor names or shapes, non-finite values or metrics. The rejection is
            recorded with the round; the participant may not resubmit.
        """
        op = self._check_submission(
            participant,
            kind="fit",
            round=round,
            attempt=attempt,
            model_sha3=model_sha3,
            num_examples=num_examples,
            now=now,
        )
        if self.policy.secure != (update is None):
            raise ProtocolError(
                "secure aggregation is on: send the masked input, not the update"
                if self.policy.secure
                else "secure aggregation is off: the update is missing"
            )
        try:
            if update is not None:
                if Layout.of(update) != self._layout:
                    raise PayloadError("update tensor names or shapes do not match the model")
                vector = flatten(update, self._layout, dtype=np.float32)
                if not np.isfinite(vector).all():
                    raise PayloadError("update contains NaN or Inf values")
                op.vectors[participant] = vector
            clean = _check_metrics(metrics)
        except PayloadError as exc:
            op.rejected[participant] = exc.message
            raise
        op.metrics[participant] = clean
        op.examples[participant] = num_examples

    def submit_secure_sum(
        self,
        *,
        round: int,
        attempt: int,
        mean_update: np.ndarray,
        survivors: Collection[str],
        now: datetime,
        group_means: Sequence[np.ndarray] = (),
        noise_shares: int = 0,
    ) -> None:
        """Accept the secure aggregate of the open fit round (SecAgg+ is on).

        ``mean_update`` is the weighted mean of the ``survivors``' updates, flat, in
        layout order, as the SecAgg+ server decoded it; the machine never sees an
        individual update. Survivors that did not report their metrics do not count.
        ``group_means`` (group-wise mode) are the per-group means a robust rule
        combines instead. ``noise_shares`` (distributed DP): how many participants each
        added ``1/n`` of the noise, survivors or not.
        """
        op = self._open
        if not self.policy.secure:
            raise ProtocolError("secure aggregation is off for this federation")
        if op is None or op.kind != "fit" or (op.round, op.attempt) != (round, attempt):
            raise ProtocolError(f"round {round} attempt {attempt} is not the open fit round")
        if op.secure_sum is not None:
            raise ProtocolError(f"round {round} already has its secure sum")
        if now >= op.deadline:
            raise ProtocolError(f"the deadline of round {round} has passed")
        if mean_update.shape != (self._layout.size,):
            raise PayloadError(
                f"secure sum has shape {mean_update.shape}, the model needs ({self._layout.size},)"
            )
        if not np.isfinite(mean_update).all():
            raise PayloadError("secure sum contains NaN or Inf values")
        unknown = set(survivors) - set(op.selected)
        if unknown:
            raise ProtocolError(f"survivors {sorted(unknown)} were not selected")
        means = tuple(np.asarray(m, dtype=np.float64) for m in group_means)
        if any(m.shape != (self._layout.size,) or not np.isfinite(m).all() for m in means):
            raise PayloadError("a group mean has the wrong shape or non-finite values")
        op.secure_sum = (np.asarray(mean_update, dtype=np.float64), tuple(sorted(survivors)))
        op.group_means = means
        op.noise_shares = int(noise_shares)

    def set_root_update(self, vector: np.ndarray, *, round: int, attempt: int) -> None:
        """Hand the machine FLTrust's root update for the open fit round.

        The shell computes it by training the round's global model on the root dataset.

        Raises
        ------
        ProtocolError
            If ``round``/``attempt`` is not the open fit round.
        PayloadError
            If the vector has the wrong shape or non-finite values.
        """
        op = self._open
        if op is None or op.kind != "fit" or (op.round, op.attempt) != (round, attempt):
            raise ProtocolError(f"round {round} attempt {attempt} is not the open fit round")
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self._layout.size,) or not np.isfinite(vector).all():
            raise PayloadError("the root update has the wrong shape or non-finite values")
        op.root_update = vector

    def fail_secure(self, reason: str, *, round: int, attempt: int) -> None:
        """Record that the open fit round's secure aggregation failed for good.

        The round then closes at the next tick with ``reason`` (and is retried like any
        round without a quorum); a call for another round or attempt is ignored.
        """
        op = self._open
        if op is None or op.kind != "fit" or (op.round, op.attempt) != (round, attempt):
            return
        if op.secure_sum is None and op.secure_failure is None:
            op.secure_failure = reason

    def reject(self, participant: str, reason: str, *, round: int, attempt: int) -> None:
        """Record that ``participant``'s payload for round ``round`` was refused.

        Only a payload meant for the open round and attempt counts against it.
        """
        op = self._open
        if op is None or (op.round, op.attempt) != (round, attempt):
            return
        if participant in op.selected and participant not in op.examples:
            op.rejected.setdefault(participant, reason)

    def submit_evaluation(
        self,
        participant: str,
        *,
        round: int,
        attempt: int,
        model_sha3: str,
        num_examples: int,
        metrics: Mapping[str, float],
        now: datetime,
    ) -> None:
        """Accept a participant's evaluation of the distributed model."""
        op = self._check_submission(
            participant,
            kind="evaluate",
            round=round,
            attempt=attempt,
            model_sha3=model_sha3,
            num_examples=num_examples,
            now=now,
        )
        try:
            clean = _check_metrics(metrics)
        except PayloadError as exc:
            op.rejected[participant] = exc.message
            raise
        op.metrics[participant] = clean
        op.examples[participant] = num_examples
