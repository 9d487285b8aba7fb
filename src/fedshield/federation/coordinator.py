"""The coordinator: the round machine wired to the registry, the round log and evaluation.

:class:`Coordinator` is the shell that both the in-process simulation and the networked
service drive. It owns the side effects the pure :class:`RoundMachine` must not have:

* on start it loads the registry head (or commits the initial model as version 0),
  marks rounds left running by a crash as aborted and resumes after the last
  committed round;
* on a :class:`CommitRequest` it evaluates the new model on the server's test set (if
  the task has one), commits it durably (blob fsynced, then one transaction) and only
  then tells the machine, so a round is never reported done before its model is safe;
* every round start and end is written to the round log, with the reasons of the
  participants that refused a round (a privacy budget spent, a declined task);
* every event is an audit entry (chained and signed, :mod:`fedshield.storage.audit`);
  a committed round adds a ``round.contribution`` entry per participant whose update
  it holds and then a signed tree head, from which each participant's receipt is cut;
* training without differential privacy leaves a ``security.no_dp`` event: once at
  start when the federation's ``[privacy]`` default is off, and once per participant
  that reports a fit without DP (each site decides; the coordinator keeps the record);
* the hash of the masking policy a participant reports with its fit (never the policy
  or the data) is written into its ``round.contribution`` entry, and a
  ``masking.policy`` event marks when a participant's hash first appears, changes or goes.

All methods are thread-safe: one lock serialises the machine and the database.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from fedshield.audit.entry import canonical_json
from fedshield.config import DataConfig, FederationConfig, participant_sampling_rate
from fedshield.errors import ConfigError, PayloadError
from fedshield.federation.participant import train_config_of
from fedshield.federation.round import (
    Assignment,
    CommitRequest,
    Event,
    FederationFailed,
    FederationFinished,
    Kind,
    ModelRef,
    Phase,
    RoundEvaluated,
    RoundMachine,
    RoundOpened,
    RoundPolicy,
    RoundRetried,
    SecureProgress,
)
from fedshield.masking.site import policy_path_for, site_masking
from fedshield.privacy.accounting import calibrate, compose, epsilon_of
from fedshield.privacy.clipping import AdaptiveClipping
from fedshield.privacy.distributed import DistributedEncoding, Rotation
from fedshield.privacy.dpfedavg import ParticipantDP, round_event
from fedshield.secagg.randomness import system_random
from fedshield.storage import (
    BlobStore,
    Database,
    EventLog,
    ModelRegistry,
    Participants,
    RoundLog,
    RoundRecord,
)
from fedshield.storage.audit import sign_tree_head
from fedshield.storage.identity import Revocations
from fedshield.storage.privacy import PARTICIPANTS, PrivacyEvents, participant_epsilon
from fedshield.tensors import Layout, Weights, flatten
from fedshield.training.datasets import DataSpec
from fedshield.training.local import evaluate, train_local
from fedshield.training.server_opt import make_server_optimizer
from fedshield.training.tasks import (
    TaskContext,
    TaskParts,
    call_task,
    load_weights,
    model_weights,
    resolve_task,
)

__all__ = [
    "SECURE_STAGES",
    "Committed",
    "Coordinator",
    "config_digest",
    "data_spec",
    "privacy_report",
    "round_entry",
    "security_settings",
    "utcnow",
]


def _split_root(
    loader: Any, count: int, *, seed: int, batch_size: int
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Split the server's held-out set into FLTrust's root dataset and the test set.

    ``count`` records of a seeded random order become the root dataset; the server
    evaluates on the others only, so the root data never scores its own model.
    """
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ConfigError(
            "robust.rule = 'fltrust' needs a root dataset, and this task has no server "
            "test set to take it from",
            hint="Set data.server_test_fraction > 0 (or data.server_csv).",
        )
    n = len(dataset)
    if count >= n:
        raise ConfigError(
            f"robust.root_examples = {count} leaves none of the server's {n} held-out "
            "records for testing",
            hint=f"Set robust.root_examples below {n}, or raise data.server_test_fraction.",
        )
    order = np.random.default_rng(seed).permutation(n).tolist()
    shuffle = torch.Generator().manual_seed(seed)
    root = DataLoader(
        Subset(dataset, order[:count]), batch_size=batch_size, shuffle=True, generator=shuffle
    )
    test = DataLoader(Subset(dataset, order[count:]), batch_size=batch_size, shuffle=False)
    return root, test


QUARANTINE_ACTIONS = ("participant.quarantine", "participant.release")
"""Events that put a participant in quarantine and take it out (admin only)."""

SECURE_STAGES = 5
"""SecAgg+ stages after training (advertise, share, masked, consistency, unmask)."""


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime (the shells' only clock)."""
    return datetime.now(UTC)


_SHA3_HEX = re.compile(r"^[0-9a-f]{64}$")

_CSV_HINT = (
    "data.csv_dir must hold one <participant>.csv per participant (and data.server_csv "
    "the coordinator's test set); for examples/breast_cancer.toml run "
    "`python examples/breast_cancer_sites.py`."
)


def data_spec(
    data: DataConfig,
    *,
    seed: int,
    batch_size: int,
    participant: str | None,
    base_dir: Path,
    masking_key: Path | None = None,
) -> DataSpec:
    """Build the training module's data spec for ``participant`` (None: the coordinator).

    A CSV participant also gets its masking (:func:`fedshield.masking.site_masking`):
    its policy from ``data.masking_policy`` or ``<csv_dir>/<participant>.masking.toml``,
    and its pseudonym key at ``masking_key`` (created on first use).
    """
    csv_path = None
    server_csv = None
    masking = None
    if data.dataset == "csv":
        assert data.csv_dir is not None
        root = (base_dir / data.csv_dir).resolve()
        if participant is not None:
            path = root / f"{participant}.csv"
            if not path.is_file():
                raise ConfigError(
                    f"participant {participant!r} has no data: {path} does not exist",
                    hint=_CSV_HINT,
                )
            csv_path = str(path)
            masking = site_masking(
                policy_path=policy_path_for(
                    participant=participant,
                    csv_dir=root,
                    configured=data.masking_policy,
                    base_dir=base_dir,
                ),
                key_path=masking_key,
                required=data.masking_policy is not None,
            )
    if data.server_csv:
        server_path = (base_dir / data.server_csv).resolve()
        if participant is None and not server_path.is_file():
            raise ConfigError(
                f"data.server_csv {server_path} does not exist",
                hint=_CSV_HINT,
            )
        server_csv = str(server_path)
    return DataSpec(
        dataset=data.dataset,
        partition=data.partition,
        dirichlet_alpha=data.dirichlet_alpha,
        shards_per_partition=data.shards_per_partition,
        test_fraction=data.test_fraction,
        server_test_fraction=data.server_test_fraction,
        csv_path=csv_path,
        label_column=data.label_column,
        server_csv_path=server_csv,
        batch_size=batch_size,
        seed=seed,
        masking=masking,
    )


@dataclass(frozen=True)
class Committed:
    """A fit round whose model is now durably stored."""

    round: int
    attempt: int
    version: int
    sha3: str
    answered: tuple[str, ...]
    dropped: tuple[str, ...]
    rejected: Mapping[str, str]
    metrics: Mapping[str, float]
    elapsed_s: float


Report = Event | Committed


def round_entry(record: RoundRecord) -> dict[str, Any]:
    """Return a round log record as the JSON-able dict the status API and CLI show."""
    elapsed = None
    if record.finished_at is not None:
        elapsed = round((record.finished_at - record.started_at).total_seconds(), 3)
    return {
        "round": record.number,
        "attempt": record.attempt,
        "kind": record.kind,
        "status": record.status,
        "base_version": record.base_version,
        "answered": list(record.answered),
        "dropped": list(record.dropped),
        "reason": record.reason,
        "model_version": record.model_version,
        "metrics": dict(record.metrics),
        "started_at": record.started_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "elapsed_s": elapsed,
    }


def participant_dp_policy(config: FederationConfig) -> ParticipantDP | None:
    """Return the round's participant-level DP settings, calibrating ``z`` if absent.

    Central noise is calibrated over ``rounds.count`` rounds at the planned sampling
    rate; local noise protects each site's own update, which the coordinator always
    sees, so it gets no amplification by sampling (rate 1).

    Raises
    ------
    ConfigError
        If the settings cannot be met (e.g. the clipped count's noise is too small).
    """
    dp = config.participant_dp
    if dp.noise == "off":
        return None
    rate = participant_sampling_rate(config)
    accounted_rate = 1.0 if dp.noise == "local" else rate
    sampling = "poisson" if accounted_rate >= 1.0 else dp.sampling
    z = dp.noise_multiplier
    if z is None:
        z = calibrate(
            target_epsilon=dp.target_epsilon,
            target_delta=dp.target_delta,
            sampling_rate=accounted_rate,
            rounds=config.rounds.count,
            accountant=dp.accountant,
            sampling=sampling,
        )
    adaptive = None
    if dp.clipping == "adaptive":
        expected = rate * len(config.participants.resolved_names())
        adaptive = AdaptiveClipping(
            target_quantile=dp.target_quantile,
            clip_learning_rate=dp.clip_learning_rate,
            count_noise_std=dp.clipped_count_stddev or expected / 20.0,
        )
    return ParticipantDP(
        noise=dp.noise,
        noise_multiplier=z,
        clip_norm=dp.clip_norm,
        sampling=dp.sampling,
        sampling_rate=rate,
        adaptive=adaptive,
    )


def _last_clip_norm(records: Sequence[RoundRecord]) -> float | None:
    """Return the adaptive clip bound the last committed fit round handed on, if any."""
    done = [r for r in records if r.kind == "fit" and r.status == "done"]
    for record in sorted(done, key=lambda r: r.number, reverse=True):
        value = record.metrics.get("dp_next_clip_norm")
        if value is not None:
            return float(value)
    return None


def privacy_report(records: Sequence[RoundRecord]) -> dict[str, dict[str, Any]]:
    """Return each site's privacy as it reported it, from the committed fit rounds.

    For every participant that answered a committed fit round with a ``dp`` metric:
    ``dp`` (whether its last round was trained with DP), ``epsilon`` and ``delta`` (what
    it had spent after its last committed round; ``None`` without DP), ``budget`` (its
    target epsilon) and ``rounds`` (committed rounds it trained in). A round a site
    trained in that was then retried is in its own ledger, not here: the ledger at the
    site is the authority.
    """
    report: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.kind != "fit" or record.status != "committed":
            continue
        for name in record.answered:
            dp = record.metrics.get(f"{name}.dp")
            if dp is None:
                continue
            entry = report.setdefault(name, {"rounds": 0})
            entry["rounds"] += 1
            entry["dp"] = bool(dp)
            for key, label in (
                ("epsilon", "epsilon"),
                ("delta", "delta"),
                ("target_epsilon", "budget"),
            ):
                value = record.metrics.get(f"{name}.{key}")
                entry[label] = None if value is None else float(value)
    return dict(sorted(report.items()))


def _refusals(rejected: Mapping[str, str]) -> str | None:
    """Return the round log's note of who refused (or was refused) and why."""
    if not rejected:
        return None
    return "; ".join(f"{name} refused: {why}" for name, why in sorted(rejected.items()))


@dataclass
class _Timing:
    opened_at: float = 0.0
    aggregate_s: float = 0.0


def config_digest(config: FederationConfig) -> str:
    """SHA3-256 (hex) of the validated config in canonical JSON (sorted keys).

    Recorded at every coordinator start, so an auditor can tell which settings a run
    used and whether they changed between restarts.
    """
    return hashlib.sha3_256(canonical_json(config.model_dump(mode="json"))).hexdigest()


def security_settings(config: FederationConfig) -> dict[str, Any]:
    """Return the settings that decide what is protected, as recorded in ``coordinator.start``.

    Metadata only (modes, bounds and budgets); the compliance report reads them back.
    """
    secure = config.secure_aggregation
    privacy = config.privacy
    pdp = config.participant_dp
    return {
        "secure_aggregation": secure.enabled,
        "secagg_min_group_size": secure.min_group_size,
        "privacy_mode": privacy.mode,
        "privacy_target_epsilon": privacy.target_epsilon if privacy.enabled else None,
        "privacy_target_delta": privacy.target_delta if privacy.enabled else None,
        "privacy_max_grad_norm": privacy.max_grad_norm if privacy.enabled else None,
        "participant_dp_noise": pdp.noise,
        "participant_dp_clipping": pdp.clipping if pdp.noise != "off" else None,
        "robust_rule": config.robust.rule,
        "rounds": config.rounds.count,
    }


class Coordinator:
    """Round orchestration with persistence, for one federation in one workdir."""

    def __init__(
        self,
        config: FederationConfig,
        *,
        workdir: Path,
        base_dir: Path,
        now: datetime,
        rng: np.random.Generator | None = None,
        actor: str = "coordinator",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self._clock = clock
        self.workdir = workdir
        self.actor = actor
        self._lock = threading.RLock()
        self.db = Database.for_workdir(workdir)
        # Binds a new audit log to this federation; refuses another federation's log.
        self.db.federation = config.federation.name
        self.registry = ModelRegistry(self.db, BlobStore(workdir / "models"))
        self.rounds = RoundLog(self.db)
        self.events = EventLog(self.db)
        self.participants = Participants(self.db)
        self.names = config.participants.resolved_names()
        self._timing = _Timing()
        spec = data_spec(
            config.data,
            seed=config.federation.seed,
            batch_size=config.task.batch_size,
            participant=None,
            base_dir=base_dir,
        )
        ctx = TaskContext(
            role="coordinator",
            name=actor,
            partition_index=0,
            num_partitions=len(self.names),
            data=spec,
            seed=config.federation.seed,
        )
        self.parts: TaskParts = call_task(resolve_task(config.task.name), ctx)
        self._root_loader: DataLoader[Any] | None = None
        if config.robust.rule == "fltrust":
            self._root_loader, test = _split_root(
                self.parts.test_loader,
                config.robust.root_examples,
                seed=config.federation.seed,
                batch_size=config.task.batch_size,
            )
            self.parts = dataclasses.replace(self.parts, test_loader=test)
        head = self.registry.head()
        if head is None:
            weights = model_weights(self.parts.model)
            head = self.registry.commit(
                weights,
                parent=None,
                round=None,
                metrics=self._server_metrics(weights),
                now=now,
                actor=actor,
                note="initial model",
            )
        else:
            weights = self.registry.load(head.version)
            try:
                load_weights(self.parts.model, weights)
            except PayloadError as exc:
                raise ConfigError(
                    f"workdir {workdir} holds a model that does not fit task "
                    f"{config.task.name!r}: {exc.message}",
                    hint="Use a fresh --workdir for a different task.",
                ) from exc
        self._head_weights = weights
        aborted = self.rounds.abort_running(reason="coordinator restarted", now=now)
        # The model commit and the round-log entry are two transactions: a crash between
        # them leaves the registry one round ahead, and the registry is the truth.
        completed = max(self.rounds.last_completed_number(), head.round or 0)
        # Finished means: the current head has had its final evaluation. More rounds
        # (a raised rounds.count) or a rollback need a new one.
        evaluated = any(
            r.kind == "evaluate" and r.status == "done" and r.base_version == head.version
            for r in self.rounds.list()
        )
        secure = config.secure_aggregation.enabled
        self.events.record(
            actor=actor,
            action="coordinator.start",
            resource=config.federation.name,
            outcome="ok",
            details={
                "head": head.version,
                "completed_rounds": completed,
                "aborted": aborted,
                "secure_aggregation": secure,
                "config_sha3": config_digest(config),
                "settings": security_settings(config),
            },
            now=now,
        )
        if not secure:
            # The insecure mode is a choice someone made: leave a trace of it.
            self.events.record(
                actor=actor,
                action="security.plain_aggregation",
                resource=config.federation.name,
                outcome="warn",
                details={"reason": "secure_aggregation.enabled is false: updates are seen"},
                now=now,
            )
        if not config.privacy.enabled:
            self.events.record(
                actor=actor,
                action="security.no_dp",
                resource=config.federation.name,
                outcome="warn",
                details={
                    "reason": "privacy.mode is 'off': sites train without differential "
                    "privacy unless their own [privacy] says otherwise",
                    "config": "privacy.mode",
                },
                now=now,
            )
        self._no_dp_seen: set[str] = set()
        # Each participant's last reported masking policy hash (None: no policy).
        self._masking: dict[str, str | None] = {}
        self.resumed_from = head.version if completed or aborted else None
        # Resume the numbering of the round that comes next; only attempts that failed
        # for lack of answers count against max_retries, not ones a restart cut short.
        records = self.rounds.list()
        next_kind = "fit" if completed < config.rounds.count else "evaluate"
        earlier = [
            r
            for r in records
            if r.kind == next_kind
            and r.base_version == head.version
            and r.status in ("failed", "aborted")
            and (next_kind == "evaluate" or r.number == completed + 1)
        ]
        self.machine = RoundMachine(
            federation=config.federation.name,
            policy=replace(
                RoundPolicy.from_config(
                    config.rounds,
                    secure=config.secure_aggregation.enabled,
                    secure_timeout_s=SECURE_STAGES * config.secure_aggregation.stage_timeout_s,
                    robust=config.robust,
                ),
                participant_dp=participant_dp_policy(config),
            ),
            head=ModelRef(head.version, head.sha3),
            head_weights=weights,
            completed_rounds=completed,
            optimizer=make_server_optimizer(
                config.server.optimizer, learning_rate=config.server.learning_rate
            ),
            rng=rng if rng is not None else np.random.default_rng(),
            evaluated=evaluated,
            attempt=1 + max((r.attempt for r in earlier), default=0),
            failures=sum(r.status == "failed" for r in earlier),
            quarantined=self._quarantined_now(),
            clip_norm=(
                _last_clip_norm(records) if config.participant_dp.clipping == "adaptive" else None
            ),
            noise_rng=system_random(),
        )
        for record in Revocations(self.db).list():
            if record.fingerprint_sha256 is None:
                self.machine.revoked.add(record.name)
        self._row_id: int | None = None
        self._check_participant_budget(completed)

    # -- reads -------------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        """Names and shapes every update must have."""
        return self.machine.layout

    def head_weights(self) -> tuple[ModelRef, Weights]:
        """Return the model the current round distributes, with its reference."""
        with self._lock:
            return self.machine.head, self._head_weights

    def weights_for(self, sha3: str) -> Weights | None:
        """Return the weights with hash ``sha3`` if they are the distributed model."""
        with self._lock:
            if sha3 == self.machine.head.sha3:
                return self._head_weights
        return None

    def assignment_for(self, participant: str, now: datetime) -> Assignment | None:
        """Return the open round's task for ``participant``, if any."""
        with self._lock:
            return self.machine.assignment_for(participant, now)

    @property
    def phase(self) -> Phase:
        """The machine's phase."""
        return self.machine.phase

    # -- writes ------------------------------------------------------------------------

    def participant_seen(
        self, name: str, *, organization: str, cert_sha256: str, now: datetime
    ) -> None:
        """Record that an enrolled participant made contact with this certificate."""
        with self._lock:
            self.participants.seen(
                name=name,
                organization=organization,
                role="participant",
                cert_sha256=cert_sha256,
                now=now,
            )

    def open_round(self) -> int | None:
        """Return the number of the open round, or None while no round is open.

        Lock-free (the machine replaces its open round in one assignment), so a request
        is never held up behind a round that is being closed and aggregated.
        """
        current = self.machine.current
        return current[0] if current is not None else None

    def expects(
        self, participant: str, *, kind: Kind, round: int, attempt: int, now: datetime
    ) -> None:
        """Raise unless ``participant`` owes this round a result (see the machine)."""
        with self._lock:
            self.machine.expects(participant, kind=kind, round=round, attempt=attempt, now=now)

    def submit_fit(
        self, participant: str, *, masking_policy_sha3: str | None = None, **kwargs: Any
    ) -> None:
        """Forward a fit result to the machine (see :meth:`RoundMachine.submit_fit`).

        A participant that reports training without DP (metric ``dp = 0``) is recorded
        as a ``security.no_dp`` event, once per participant and coordinator run. The
        hash of the masking policy it reports (``masking_policy_sha3``, 64 hex
        characters) goes into its ``round.contribution`` entry, and a
        ``masking.policy`` event is written when a participant's hash first appears,
        changes or disappears (per coordinator run).

        Raises
        ------
        PayloadError
            If ``masking_policy_sha3`` is not 64 lowercase hex characters.
        """
        if masking_policy_sha3 is not None and not _SHA3_HEX.match(masking_policy_sha3):
            raise PayloadError("masking_policy_sha3 must be 64 lowercase hex characters")
        with self._lock:
            self.machine.submit_fit(participant, **kwargs)
            self._record_masking(participant, masking_policy_sha3, kwargs.get("round"))
            metrics = kwargs.get("metrics") or {}
            if metrics.get("dp") == 0 and participant not in self._no_dp_seen:
                self._no_dp_seen.add(participant)
                self.events.record(
                    actor=self.actor,
                    action="security.no_dp",
                    resource=f"participant/{participant}",
                    outcome="warn",
                    details={
                        "round": kwargs.get("round"),
                        "reason": "the participant trained without differential privacy "
                        "(its [privacy] mode is 'off')",
                    },
                    now=self._clock(),
                )

    def _record_masking(self, participant: str, sha3: str | None, round: object) -> None:
        """Remember the participant's policy hash; log when it appears, changes or goes.

        Per coordinator run: after a restart a site's first report is logged again.
        """
        seen = participant in self._masking
        before = self._masking.get(participant)
        self._masking[participant] = sha3
        if sha3 == before or (sha3 is None and not seen):
            return
        self.events.record(
            actor=self.actor,
            action="masking.policy",
            resource=f"participant/{participant}",
            outcome="reported" if sha3 is not None else "removed",
            details={"round": round, "policy_sha3": sha3, "previous_sha3": before},
            now=self._clock(),
        )

    def distributed_encoding(self, participants: int, *, seed: bytes) -> DistributedEncoding | None:
        """Return this round's distributed-DP settings for ``participants`` inputs, or None.

        ``seed`` (32 fresh bytes) fixes the round's public rotation. Each participant adds
        ``1/participants`` of the noise variance; the clip bound is the machine's.

        Raises
        ------
        ConfigError
            If each participant's share of the noise would be too small to account.
        """
        dp = self.machine.policy.participant_dp
        if dp is None or dp.noise != "distributed":
            return None
        with self._lock:
            clip = self.machine.clip_norm
        assert clip is not None
        return DistributedEncoding(
            clip_norm=clip,
            noise_multiplier=dp.noise_multiplier,
            sensitivity_factor=2.0 if dp.sampling == "fixed" and dp.sampling_rate < 1 else 1.0,
            participants=participants,
            rotation=Rotation(seed=seed, dim=self.layout.size),
        )

    def submit_secure_sum(self, **kwargs: Any) -> None:
        """Forward a secure aggregate (see :meth:`RoundMachine.submit_secure_sum`)."""
        with self._lock:
            self.machine.submit_secure_sum(**kwargs)

    def submit_evaluation(self, participant: str, **kwargs: Any) -> None:
        """Forward an evaluation result (see :meth:`RoundMachine.submit_evaluation`)."""
        with self._lock:
            self.machine.submit_evaluation(participant, **kwargs)

    def secure_progress(self) -> SecureProgress | None:
        """Return the open secure fit round's progress (see the machine's method)."""
        with self._lock:
            return self.machine.secure_progress()

    def fail_secure(self, reason: str, *, round: int, attempt: int) -> None:
        """Fail the open round's secure aggregation (see :meth:`RoundMachine.fail_secure`)."""
        with self._lock:
            self.machine.fail_secure(reason, round=round, attempt=attempt)

    def reject(self, participant: str, reason: str, *, round: int, attempt: int) -> None:
        """Record a refused payload or a refusal (see :meth:`RoundMachine.reject`).

        The refusal is also an event (``round.refusal``), whatever becomes of the round.
        """
        with self._lock:
            self.machine.reject(participant, reason, round=round, attempt=attempt)
            self.events.record(
                actor=participant,
                action="round.refusal",
                resource=f"round/{round}",
                outcome="refused",
                details={"attempt": attempt, "reason": reason[:1000]},
                now=self._clock(),
            )

    def step(self, now: datetime, available: Collection[str]) -> list[Report]:
        """Advance the machine and carry out the side effects of what happened.

        Only one thread (the driver) calls this. The lock is held while the machine
        moves, not while the new model is evaluated and written: request handlers keep
        being answered during a commit (the machine is COMMITTING and accepts nothing).
        """
        with self._lock:
            if self.machine.phase is Phase.WAITING:
                self._follow_rollback()
                self._follow_releases()
            started = time.perf_counter()
            events = self.machine.tick(now, available)
            # Closing a fit round aggregates inside tick(); time it for the round log.
            self._timing.aggregate_s = time.perf_counter() - started
        reports: list[Report] = []
        for event in events:
            reports.extend(self._handle(event, now))
        return reports

    def _quarantined_now(self) -> set[str]:
        """Replay quarantine and release events (all of them, once, at start)."""
        jailed: set[str] = set()
        self._events_seen = 0
        for event in self.events.since(0, QUARANTINE_ACTIONS):
            name = event.resource.removeprefix("participant/")
            if event.action == "participant.quarantine":
                jailed.add(name)
            else:
                jailed.discard(name)
            self._events_seen = event.id
        return jailed

    def _follow_releases(self) -> None:
        """Apply quarantines and releases recorded since the last look (between rounds)."""
        for event in self.events.since(self._events_seen, QUARANTINE_ACTIONS):
            name = event.resource.removeprefix("participant/")
            if event.action == "participant.release":
                self.machine.release(name)
            else:
                self.machine.quarantine(name)
            self._events_seen = max(self._events_seen, event.id)

    def revoke(self, name: str, reason: str) -> None:
        """Take a participant whose certificate was revoked out of the federation now.

        It is never selected again and counts as a dropout of the open round (see
        :meth:`RoundMachine.revoke`). The revocation itself is stored and audited by
        whoever revoked it; this only tells the round.
        """
        with self._lock:
            self.machine.revoke(name, f"certificate revoked: {reason}"[:1000])

    def revoked(self) -> frozenset[str]:
        """Participants whose certificates were revoked (as far as the round knows)."""
        with self._lock:
            return frozenset(self.machine.revoked)

    def _follow_rollback(self) -> None:
        head = self.registry.head()
        if head is not None and head.sha3 != self.machine.head.sha3:
            weights = self.registry.load(head.version)
            self.machine.set_head(ModelRef(head.version, head.sha3), weights)
            self._head_weights = weights

    def _server_metrics(self, weights: Weights) -> dict[str, float]:
        if self.parts.test_loader is None:
            return {}
        load_weights(self.parts.model, weights)
        result = evaluate(self.parts.model, self.parts.test_loader)
        metrics = {"server_accuracy": result.accuracy}
        # A wrecked (but finite) model can overflow its logits: its loss is then not a
        # number. Record the accuracy, which shows the damage, and leave the loss out.
        if math.isfinite(result.loss):
            metrics["server_loss"] = result.loss
        return metrics

    def _root_update(self, event: RoundOpened) -> None:
        """FLTrust: train the round's model on the root dataset; hand the machine the update."""
        assert self._root_loader is not None
        _, head = self.head_weights()
        model = copy.deepcopy(self.parts.model)
        load_weights(model, head)
        train_local(
            model,
            self._root_loader,
            config=train_config_of(self.config.task),
            generator_seed=self.config.federation.seed * 1_000_003 + event.round,
        )
        layout = self.layout
        vector = flatten(model_weights(model), layout) - flatten(head, layout)
        self.machine.set_root_update(vector, round=event.round, attempt=event.attempt)

    def _handle(self, event: Event, now: datetime) -> list[Report]:
        if isinstance(event, RoundOpened):
            self._timing.opened_at = time.perf_counter()
            if event.kind == "fit" and self._root_loader is not None:
                self._root_update(event)
            self._row_id = self.rounds.start(
                number=event.round,
                attempt=event.attempt,
                kind=event.kind,
                base_version=event.model.version,
                selected=event.selected,
                now=now,
            )
            return [event]
        if isinstance(event, CommitRequest):
            return [self._commit(event, now)]
        if isinstance(event, RoundEvaluated):
            per = {f"{p}.{k}": v for p, m in event.per_participant.items() for k, v in m.items()}
            self._finish(
                "done",
                answered=event.answered,
                dropped=event.dropped,
                reason=None,
                version=event.model.version,
                metrics={**event.metrics, **per},
                now=now,
            )
            return [event]
        if isinstance(event, RoundRetried | FederationFailed):
            if self._row_id is None:
                # The round never opened (too few participants joined): log it anyway.
                self._row_id = self.rounds.start(
                    number=event.round,
                    attempt=event.attempt,
                    kind=event.kind,
                    base_version=self.machine.head.version,
                    selected=(),
                    now=now,
                )
            self._finish(
                "failed",
                answered=event.answered,
                dropped=event.dropped,
                reason=event.reason,
                version=None,
                metrics={},
                now=now,
            )
            self.events.record(
                actor=self.actor,
                action=f"round.{'retry' if isinstance(event, RoundRetried) else 'fail'}",
                resource=f"round/{event.round}",
                outcome="failed",
                details={"attempt": event.attempt, "reason": event.reason},
                now=now,
            )
            return [event]
        if isinstance(event, FederationFinished):
            self.events.record(
                actor=self.actor,
                action="federation.finish",
                resource=self.config.federation.name,
                outcome="ok",
                details={"model_version": event.model.version},
                now=now,
            )
            # Cover the log's tail too, so truncating it is caught against this head.
            sign_tree_head(self.db, round=self.machine.completed_rounds, now=now)
            return [event]
        raise AssertionError(f"unhandled event {event!r}")

    def _finish(
        self,
        status: str,
        *,
        answered: tuple[str, ...],
        dropped: tuple[str, ...],
        reason: str | None,
        version: int | None,
        metrics: Mapping[str, float],
        now: datetime,
    ) -> None:
        assert self._row_id is not None, "a round is finished only after it started"
        self.rounds.finish(
            self._row_id,
            status=status,
            answered=answered,
            dropped=dropped,
            reason=reason,
            model_version=version,
            metrics=metrics,
            now=now,
        )
        self._row_id = None

    def _check_participant_budget(self, completed: int) -> None:
        """Refuse to start when the recorded rounds plus those still planned overspend.

        Raises
        ------
        ConfigError
            If participant-level epsilon after ``rounds.count`` rounds (the recorded
            events, then the remaining rounds at the planned settings) would exceed
            ``participant_dp.target_epsilon``; for example after raising ``rounds.count``.
        """
        dp = self.machine.policy.participant_dp
        remaining = self.config.rounds.count - completed
        if dp is None or remaining <= 0:
            return
        settings = self.config.participant_dp
        recorded = [r.event() for r in PrivacyEvents(self.db).list(PARTICIPANTS)]
        planned = round_event(
            noise_multiplier=dp.noise_multiplier,
            sampling_rate=1.0 if dp.noise == "local" else dp.sampling_rate,
            sampling=dp.sampling,
        )
        total = epsilon_of(
            compose([*recorded, *([planned] * remaining)]),
            delta=settings.target_delta,
            accountant=settings.accountant,
        )
        if total > settings.target_epsilon * (1 + 1e-6):
            raise ConfigError(
                f"participant-level DP: {len(recorded)} recorded round(s) and the "
                f"{remaining} still planned would spend epsilon {total:.4g}, above "
                f"participant_dp.target_epsilon = {settings.target_epsilon:g}",
                hint="Lower rounds.count or raise participant_dp.target_epsilon (or use a "
                "fresh --workdir for a new federation).",
            )

    def _record_participant_dp(self, request: CommitRequest) -> dict[str, float]:
        """Record the round's participant-level DP event; return ``dp_epsilon`` after it.

        Durable before the model is committed (released): a crash after this forgets
        no spending. Epsilon is recomputed from every recorded event.
        """
        dp = self.config.participant_dp
        metrics = request.metrics
        if dp.noise == "off" or "dp_noise_multiplier" not in metrics:
            return {}
        local = dp.noise == "local"
        events = PrivacyEvents(self.db)
        events.record(
            round=request.round,
            attempt=request.attempt,
            scope=PARTICIPANTS,
            mechanism=f"dp-fedavg-{dp.noise}",
            noise_multiplier=metrics["dp_noise_multiplier"],
            # Local noise protects each update the coordinator sees: no amplification.
            sampling_rate=1.0 if local else metrics["dp_sampling_rate"],
            sampling=dp.sampling,
            steps=1,
            clip_norm=metrics["dp_clip_norm"],
            participants=int(metrics["dp_participants"]),
            delta=dp.target_delta,
            accountant=dp.accountant,
            now=self._clock(),
            target_epsilon=dp.target_epsilon,
        )
        spent = participant_epsilon(events.list(), delta=dp.target_delta, accountant=dp.accountant)
        if not spent:
            return {}
        epsilon = spent[-1][1]
        if epsilon > dp.target_epsilon * (1 + 1e-6):
            # Possible when dropouts took part of the distributed noise with them.
            self.events.record(
                actor=self.actor,
                action="privacy.budget_exceeded",
                resource=f"round/{request.round}",
                outcome="warn",
                details={"epsilon": epsilon, "target_epsilon": dp.target_epsilon},
                now=self._clock(),
            )
        return {"dp_epsilon": epsilon}

    def _commit(self, request: CommitRequest, now: datetime) -> Committed:
        started = time.perf_counter()
        metrics = {
            **request.metrics,
            **self._record_participant_dp(request),
            **self._server_metrics(request.weights),
        }
        # Stamp the commit when it happens, not when the tick that closed the round began.
        version = self.registry.commit(
            request.weights,
            parent=request.parent.version,
            round=request.round,
            metrics=metrics,
            now=self._clock(),
            actor=self.actor,
        )
        # Coordinator-side timings go to the round log only, not to the model's metrics.
        timings = {
            "coordinator_aggregate_s": self._timing.aggregate_s,
            "coordinator_commit_s": time.perf_counter() - started,
        }
        self._finish(
            "committed",
            answered=request.answered,
            dropped=request.dropped,
            reason=_refusals(request.rejected),
            version=version.version,
            metrics={**metrics, **timings},
            now=self._clock(),
        )
        for name in request.quarantined:
            score = request.scores[name]
            self.events.record(
                actor=self.actor,
                action="participant.quarantine",
                resource=f"participant/{name}",
                outcome="quarantined",
                details={
                    "round": request.round,
                    "trust": request.metrics.get(f"{name}.trust"),
                    "cosine": score.cosine,
                    "norm_z": score.norm_z,
                    "release": "fedshield participants release NAME --workdir W",
                },
                now=self._clock(),
            )
        for name in request.answered:
            # The entry each participant's receipt proves (fedshield audit receipt).
            masking = self._masking.get(name)
            self.events.record(
                actor=self.actor,
                action="round.contribution",
                resource=f"participant/{name}",
                outcome="included",
                details={
                    "round": request.round,
                    "attempt": request.attempt,
                    "model_version": version.version,
                    "model_sha3": version.sha3,
                    **({"masking_policy_sha3": masking} if masking is not None else {}),
                },
                now=self._clock(),
            )
        sign_tree_head(self.db, round=request.round, now=self._clock())
        ref = ModelRef(version.version, version.sha3)
        with self._lock:
            self.machine.committed(ref, request.weights)
            self._head_weights = request.weights
        return Committed(
            round=request.round,
            attempt=request.attempt,
            version=version.version,
            sha3=version.sha3,
            answered=request.answered,
            dropped=request.dropped,
            rejected=request.rejected,
            metrics=metrics,
            elapsed_s=time.perf_counter() - self._timing.opened_at,
        )

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return a JSON-able snapshot for the status endpoint and the CLI."""
        with self._lock:
            current = self.machine.current
            head = self.machine.head
            history = [round_entry(r) for r in self.rounds.list()]
            return {
                "federation": self.config.federation.name,
                "phase": str(self.machine.phase),
                "round": current[0] if current else None,
                "attempt": current[1] if current else None,
                "kind": current[2] if current else None,
                "selected": list(self.machine.selected),
                "answered": list(self.machine.answered),
                "completed_rounds": self.machine.completed_rounds,
                "total_rounds": self.config.rounds.count,
                "head": {"version": head.version, "sha3": head.sha3},
                "failure": self.machine.failure,
                "history": history,
            }

    def close(self) -> None:
        """Release the database."""
        self.db.close()
