"""In-process simulation: the coordinator's round logic and every participant in one process.

The same :class:`~fedshield.federation.coordinator.Coordinator` (and so the same round
machine, registry and round log) as the networked federation, with participants called
directly instead of over HTTPS. Participant data and models are built lazily and kept,
so hundreds of simulated participants fit in memory for small tasks.

Two keyword-only hooks exist for evaluation (the red-team runner in
``fedshield.attacks.redteam`` uses them; this module never imports it). Both default to
``None``, and then the simulation is exactly the plain one:

* ``site_parts(name, parts) -> parts`` sees each participant's freshly built
  :class:`~fedshield.training.tasks.TaskParts` once, before its trainer is made, and may
  return different ones (a data-poisoning participant swaps its training loader).
* ``tamper_updates(opened, vectors) -> vectors`` sees, in every fit round, the flat
  float32 updates (layout order) of the participants whose training succeeded, keyed by
  name, and returns the vectors they submit instead: in the clear, or as SecAgg+ inputs
  when secure aggregation is on (so a tampered vector is masked and summed like any
  other). It must return the same names, each a finite ``(layout.size,)`` vector.

Differential privacy: every site trains under the federation's ``[privacy]`` table,
or under its own when ``site_privacy`` names it (in a real federation each site reads
its own ``participant.toml``). A site's privacy ledger is
``<workdir>/privacy/<site>.jsonl``, so a simulation resumed in the same workdir
remembers what each site spent. A site whose budget a round would exceed refuses it;
the refusal is a dropout, recorded with the round (its reason in the round log).

Masking (CSV data): each site masks its file with its own policy exactly as a networked
participant does; its pseudonym key is ``<workdir>/masking/<site>.key``. A column that
looks identifying and is not masked is a configuration error: it stops the run. Each
site's fit carries its policy hash to the coordinator's audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedshield.config import FederationConfig, PrivacyConfig
from fedshield.errors import ConfigError, FedshieldError, PayloadError, RoundFailedError, TaskError
from fedshield.federation.coordinator import (
    Committed,
    Coordinator,
    Report,
    data_spec,
    privacy_report,
    utcnow,
)
from fedshield.federation.participant import FitOutcome, LocalTrainer, train_config_of
from fedshield.federation.privacy_ledger import PrivacyLedgerFile, SitePrivacy
from fedshield.federation.round import (
    FederationFailed,
    FederationFinished,
    RoundEvaluated,
    RoundOpened,
    refusal_note,
)
from fedshield.federation.secure import secagg_params
from fedshield.privacy.distributed import DistributedEncoding
from fedshield.secagg import run_in_memory, system_random
from fedshield.secagg.driver import SecAggConfig
from fedshield.secagg.graph import split_groups
from fedshield.tensors import Layout, Weights, flatten, unflatten
from fedshield.training.tasks import TaskContext, TaskParts, call_task, resolve_task

__all__ = ["SimulationResult", "SitePartsHook", "TamperHook", "run_simulation"]

SitePartsHook = Callable[[str, TaskParts], TaskParts]
"""``(participant, parts) -> parts``: replace a participant's task parts (evaluation only)."""

TamperHook = Callable[[RoundOpened, dict[str, np.ndarray]], dict[str, np.ndarray]]
"""``(fit round, {participant: flat float32 update}) -> the updates actually submitted``."""


@dataclass(frozen=True)
class SimulationResult:
    """What a finished simulation reports."""

    rounds_completed: int
    model_version: int
    model_sha3: str
    final_accuracy: float | None
    per_participant_accuracy: dict[str, float]
    participants: int
    wall_s: float
    secure_aggregation: bool = False
    privacy: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per site, as it reported in its last committed round: ``dp``, ``epsilon``,
    ``delta``, ``budget`` (target epsilon) and ``rounds`` (see ``privacy_report``)."""


class _Sites:
    def __init__(
        self,
        config: FederationConfig,
        base_dir: Path,
        site_parts: SitePartsHook | None = None,
        *,
        workdir: Path,
        site_privacy: Mapping[str, PrivacyConfig] | None = None,
    ) -> None:
        self.config = config
        self.base_dir = base_dir
        self.workdir = workdir
        self.names = config.participants.resolved_names()
        self.factory = resolve_task(config.task.name)
        self.site_parts = site_parts
        self.site_privacy = dict(site_privacy or {})
        unknown = sorted(set(self.site_privacy) - set(self.names))
        if unknown:
            raise ConfigError(f"site_privacy names unknown participants {unknown}")
        self._trainers: dict[str, LocalTrainer] = {}
        self.masking_sha3: dict[str, str | None] = {}

    def privacy(self, name: str) -> SitePrivacy | None:
        """Return the site's DP settings and ledger, or None if it trains without DP."""
        settings = self.site_privacy.get(name, self.config.privacy)
        if not settings.enabled:
            return None
        return SitePrivacy(
            settings,
            ledger=PrivacyLedgerFile(self.workdir / "privacy" / f"{name}.jsonl"),
            batch_size=self.config.task.batch_size,
            planned_rounds=self.config.rounds.count,
        )

    def trainer(self, name: str) -> LocalTrainer:
        if name not in self._trainers:
            index = self.names.index(name)
            spec = data_spec(
                self.config.data,
                seed=self.config.federation.seed,
                batch_size=self.config.task.batch_size,
                participant=name,
                base_dir=self.base_dir,
                masking_key=self.workdir / "masking" / f"{name}.key",
            )
            self.masking_sha3[name] = spec.masking.policy_sha3 if spec.masking else None
            ctx = TaskContext(
                role="participant",
                name=name,
                partition_index=index,
                num_partitions=len(self.names),
                data=spec,
                seed=self.config.federation.seed,
            )
            parts = call_task(self.factory, ctx)
            if self.site_parts is not None:
                parts = self.site_parts(name, parts)
                if not isinstance(parts, TaskParts):
                    raise TaskError(
                        f"site_parts returned {type(parts).__name__} for {name!r}, "
                        "expected TaskParts"
                    )
            self._trainers[name] = LocalTrainer(
                parts,
                config=train_config_of(self.config.task),
                seed=self.config.federation.seed + index,
                privacy=self.privacy(name),
            )
        return self._trainers[name]


def run_simulation(
    config: FederationConfig,
    *,
    workdir: Path,
    base_dir: Path,
    on_report: Callable[[Report], None] | None = None,
    seed: int | None = None,
    site_parts: SitePartsHook | None = None,
    tamper_updates: TamperHook | None = None,
    site_privacy: Mapping[str, PrivacyConfig] | None = None,
) -> SimulationResult:
    """Run every round of ``config`` in this process and return the summary.

    ``site_parts`` and ``tamper_updates`` are evaluation hooks (see the module
    docstring); without them nothing about the run changes. ``site_privacy`` gives
    named sites their own ``[privacy]`` settings instead of the federation's.

    Raises
    ------
    RoundFailedError
        If a round fails after its retries.
    ConfigError
        If a site's settings are invalid for its data (e.g. ``target_delta`` not below
        ``1 / records``): a configuration error stops the run, it is no dropout.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(config.federation.seed if seed is None else seed)
    coordinator = Coordinator(config, workdir=workdir, base_dir=base_dir, now=utcnow(), rng=rng)
    sites = _Sites(config, base_dir, site_parts, workdir=workdir, site_privacy=site_privacy)
    everyone = sites.names
    final: RoundEvaluated | None = None
    committed: list[Committed] = []
    budget = (config.rounds.count + 1) * (config.rounds.max_retries + 1) * 4 + 8
    try:
        for _ in range(budget):
            reports = coordinator.step(utcnow(), everyone)
            done = False
            for report in reports:
                if on_report is not None:
                    on_report(report)
                if isinstance(report, RoundOpened):
                    _play_round(coordinator, sites, report, tamper_updates)
                elif isinstance(report, Committed):
                    committed.append(report)
                elif isinstance(report, RoundEvaluated):
                    final = report
                elif isinstance(report, FederationFailed):
                    raise RoundFailedError(report.reason)
                elif isinstance(report, FederationFinished):
                    done = True
            if done:
                break
        else:  # pragma: no cover - the budget is a safety net, not a code path
            raise RoundFailedError("the simulation did not finish within its step budget")
        head, _ = coordinator.head_weights()
        history = coordinator.registry.get(head.version)
        final_accuracy = history.metrics.get("server_accuracy")
        per_participant: dict[str, float] = {}
        if final is not None:
            per_participant = {
                p: m["accuracy"] for p, m in final.per_participant.items() if "accuracy" in m
            }
            if final_accuracy is None:
                final_accuracy = final.metrics.get("accuracy")
        return SimulationResult(
            rounds_completed=coordinator.machine.completed_rounds,
            model_version=head.version,
            model_sha3=head.sha3,
            final_accuracy=final_accuracy,
            per_participant_accuracy=per_participant,
            participants=len(everyone),
            wall_s=time.perf_counter() - started,
            secure_aggregation=config.secure_aggregation.enabled,
            privacy=privacy_report(coordinator.rounds.list()),
        )
    finally:
        coordinator.close()


def _play_round(
    coordinator: Coordinator, sites: _Sites, opened: RoundOpened, tamper: TamperHook | None
) -> None:
    head, weights = coordinator.head_weights()
    if opened.kind == "fit":
        _play_fit(coordinator, sites, opened, tamper)
        return
    for name in opened.selected:
        try:
            count, metrics = sites.trainer(name).evaluate(weights)
            coordinator.submit_evaluation(
                name,
                round=opened.round,
                attempt=opened.attempt,
                model_sha3=head.sha3,
                num_examples=count,
                metrics=metrics,
                now=utcnow(),
            )
        except FedshieldError as exc:
            # One participant's failure is its dropout, not the federation's.
            coordinator.reject(name, exc.message, round=opened.round, attempt=opened.attempt)


def _play_fit(
    coordinator: Coordinator, sites: _Sites, opened: RoundOpened, tamper: TamperHook | None
) -> None:
    head, weights = coordinator.head_weights()
    secure = sites.config.secure_aggregation.enabled
    layout = coordinator.layout
    outcomes: dict[str, FitOutcome] = {}
    refused: dict[str, str] = {}
    for name in opened.selected:
        try:
            trainer = sites.trainer(name)
            assignment = coordinator.assignment_for(name, utcnow())
            outcomes[name] = trainer.fit(
                weights,
                round=opened.round,
                attempt=opened.attempt,
                local_dp=assignment.local_dp if assignment is not None else None,
            )
        except ConfigError:
            raise  # the user's settings are wrong: stop and say so
        except FedshieldError as exc:
            # One participant's failure (or refusal: its privacy budget) is its dropout,
            # not the federation's; the reason is recorded with the round.
            refused[name] = exc.message
            coordinator.reject(name, exc.message, round=opened.round, attempt=opened.attempt)
    vectors: dict[str, np.ndarray] = {}
    if secure or tamper is not None:
        vectors = {n: flatten(o.update, layout, dtype=np.float32) for n, o in outcomes.items()}
    if tamper is not None:
        vectors = _tampered(tamper, opened, vectors, layout)
    masked_inputs: dict[str, tuple[np.ndarray, int]] = {}
    for name, outcome in outcomes.items():
        update: Weights | None = None
        if not secure:
            update = outcome.update if tamper is None else unflatten(vectors[name], layout)
        try:
            coordinator.submit_fit(
                name,
                round=opened.round,
                attempt=opened.attempt,
                model_sha3=head.sha3,
                num_examples=outcome.num_examples,
                update=update,
                metrics=outcome.metrics,
                now=utcnow(),
                masking_policy_sha3=sites.masking_sha3.get(name),
            )
        except FedshieldError as exc:
            refused[name] = exc.message
            coordinator.reject(name, exc.message, round=opened.round, attempt=opened.attempt)
            continue
        if secure:
            masked_inputs[name] = (vectors[name], outcome.num_examples)
    if secure and len(masked_inputs) >= 2:
        _secure_sum(coordinator, sites.config, opened, masked_inputs)
    elif secure:
        reason = (
            f"{len(masked_inputs)} participant(s) trained; secure aggregation needs 2"
            f"{refusal_note(refused)}"
        )
        coordinator.fail_secure(reason, round=opened.round, attempt=opened.attempt)


def _tampered(
    tamper: TamperHook, opened: RoundOpened, vectors: dict[str, np.ndarray], layout: Layout
) -> dict[str, np.ndarray]:
    """Call the hook on copies and check it kept every name and the layout's size."""
    result = tamper(opened, {n: v.copy() for n, v in vectors.items()})
    if set(result) != set(vectors):
        raise PayloadError(
            f"tamper_updates must return the updates of {sorted(vectors)}, got {sorted(result)}"
        )
    checked: dict[str, np.ndarray] = {}
    for name in vectors:
        vector = np.asarray(result[name], dtype=np.float32)
        if vector.shape != (layout.size,):
            raise PayloadError(
                f"tamper_updates returned shape {vector.shape} for {name!r}, "
                f"the model needs ({layout.size},)"
            )
        checked[name] = vector
    return checked


def _distributed_sum(
    coordinator: Coordinator,
    opened: RoundOpened,
    inputs: dict[str, tuple[np.ndarray, int]],
    params: SecAggConfig,
    encoding: DistributedEncoding,
) -> None:
    """Distributed DP: every site clips, rotates and noises its own integers, SecAgg sums."""
    names = sorted(inputs)
    rng = system_random()
    rows = [encoding.encode(inputs[n][0].astype(np.float64), rng=rng)[0] for n in names]
    try:
        result = run_in_memory(rows, params, integers=True)
        ids = result.setup.participants
        alive = [names[ids.index(i)] for i in result.survivors]
        assert result.signed_sum is not None
        mean = encoding.decode(result.signed_sum, denominator=len(alive))
    except (RoundFailedError, PayloadError) as exc:
        coordinator.fail_secure(exc.message, round=opened.round, attempt=opened.attempt)
        return
    coordinator.submit_secure_sum(
        round=opened.round,
        attempt=opened.attempt,
        mean_update=mean,
        survivors=alive,
        now=utcnow(),
        noise_shares=len(names),
    )


def _secure_sum(
    coordinator: Coordinator,
    config: FederationConfig,
    opened: RoundOpened,
    inputs: dict[str, tuple[np.ndarray, int]],
) -> None:
    """Run SecAgg+ over the participants' updates (per group); hand only sums over."""
    secure = config.secure_aggregation
    names = sorted(inputs)
    if secure.min_group_size is None:
        groups = [tuple(names)]
    else:
        try:
            groups = split_groups(names, min_size=secure.min_group_size, rng=system_random())
        except ConfigError as exc:
            coordinator.fail_secure(exc.message, round=opened.round, attempt=opened.attempt)
            return
    # Bound to the fit round and attempt: keys never repeat.
    params = secagg_params(secure, config.federation.name, opened.round, opened.attempt)
    encoding = coordinator.distributed_encoding(len(names), seed=system_random().bytes(32))
    if encoding is not None:
        _distributed_sum(coordinator, opened, inputs, params, encoding)
        return
    weight = {n: min(inputs[n][1], secure.max_weight) for n in names}
    sums: list[tuple[np.ndarray, int]] = []
    survivors: list[str] = []
    for group in groups:
        try:
            # The weight travels inside the secure sum; capped at max_weight.
            result = run_in_memory(
                [inputs[n][0] for n in group], params, weights=[weight[n] for n in group]
            )
        except RoundFailedError as exc:
            coordinator.fail_secure(exc.message, round=opened.round, attempt=opened.attempt)
            return
        ids = result.setup.participants  # row i of the updates is ids[i]
        alive = [group[ids.index(i)] for i in result.survivors]
        sums.append((result.aggregate, sum(weight[n] for n in alive)))
        survivors.extend(alive)
    total = sum(w for _, w in sums)
    mean = sum((m * (w / total) for m, w in sums), start=np.zeros_like(sums[0][0]))
    coordinator.submit_secure_sum(
        round=opened.round,
        attempt=opened.attempt,
        mean_update=mean,
        survivors=survivors,
        now=utcnow(),
        group_means=tuple(m for m, _ in sums),
    )
