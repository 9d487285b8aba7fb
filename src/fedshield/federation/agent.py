"""The participant agent: long-poll the coordinator, train or evaluate, push the result.

A participant connects outbound only. It runs the task its own ``participant.toml``
names (the coordinator cannot make a site run other code: a task message for another
task is refused) on data only it can read. Hyperparameters come from the coordinator's
task message, validated like the federation file.

The agent survives a coordinator restart: its client keeps retrying with backoff until
the coordinator is back (or ``reconnect_timeout_s`` passes), then it polls again.

Differential privacy is the site's decision, in its own ``participant.toml``
(``[privacy]``, see :class:`~fedshield.config.PrivacyConfig`); nothing the coordinator
sends changes it. With DP on (the default) the site trains with DP-SGD and keeps its
privacy ledger in the kit (``privacy-ledger.jsonl``). A fit round that would take the
site over its budget is declined with the reason (the coordinator counts a dropout);
the agent says so, stays connected (it may still be asked to evaluate, which costs
no training privacy) and ends with the federation like any other site.

After each committed round it contributed to, the site fetches its audit receipt,
verifies it offline under the pinned audit key and keeps it in ``<kit>/receipts/``
(:mod:`fedshield.federation.receipts`); a receipt that fails is reported, never kept,
and never stops training.

Masking is the site's decision too (docs/masking.md): its CSV is masked with its own
policy (``[data] masking_policy`` or ``<csv_dir>/<name>.masking.toml``) and its
pseudonym key (``masking.key`` in the kit, created 0600 on first use) before the task
sees it; a column that looks identifying and is neither masked nor allowed stops the
agent before it connects. Each fit report carries the policy's hash, never the policy.

Every reply from the coordinator is verified before it is used (see
:mod:`fedshield.transport.envelope`), and the agent trains on or evaluates a model only
if the coordinator signed its (federation, round, SHA3, version) and the downloaded
bytes hash to that SHA3. A fit round whose model fails is declined with the reason (the
coordinator counts a dropout and audits the refusal); an evaluation of such a model
ends the agent with the error, since an evaluation cannot be declined.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedshield.config import DataConfig, PrivacyConfig, TransportConfig
from fedshield.errors import (
    BudgetExhaustedError,
    ConfigError,
    FedshieldError,
    ProtocolError,
    RoundFailedError,
    TaskError,
)
from fedshield.federation.coordinator import data_spec, utcnow
from fedshield.federation.participant import LocalTrainer, train_config_of
from fedshield.federation.privacy_ledger import LEDGER_FILE, PrivacyLedgerFile, SitePrivacy
from fedshield.federation.receipts import (
    RECEIPTS_DIR,
    ReceiptCollector,
    ReceiptStore,
    parse_audit_key,
)
from fedshield.federation.secure_agent import SecureSession, SpentLedger
from fedshield.identity import Kit, client_ssl_context, load_certificate
from fedshield.masking.site import KIT_KEY_FILE
from fedshield.tensors import Layout, flatten
from fedshield.training.datasets import DataSpec
from fedshield.training.dpsgd import dataset_tensors
from fedshield.training.tasks import (
    TaskContext,
    TaskParts,
    call_task,
    model_weights,
    resolve_task,
)
from fedshield.transport.client import CoordinatorClient, Credentials, RejectedError
from fedshield.transport.envelope import UntrustedModelError
from fedshield.transport.messages import EvaluationResult, FitMeta, SecAggRefusal, TaskMessage

__all__ = [
    "AgentResult",
    "ParticipantFile",
    "ParticipantSection",
    "load_participant_file",
    "run_agent",
]

PARTICIPANT_FILE = "participant.toml"
SPENT_FILE = "secagg-spent.txt"
"""In the kit: model versions this site already masked an update of (SpentLedger)."""


class ParticipantSection(BaseModel):
    """Who this site is and what it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    federation: str
    coordinator: str = "https://127.0.0.1:8443"
    task: str = "digits"
    seed: int = Field(default=7, ge=0)
    partition_index: int = Field(default=0, ge=0)
    num_partitions: int = Field(default=1, ge=1)
    long_poll_s: float = Field(default=20.0, gt=0, le=300)
    batch_size: int = Field(default=32, ge=1, le=65536)
    require_secure_aggregation: bool = False
    secure_min_participants: int = Field(default=3, ge=2, le=10_000)
    min_participant_noise: float | None = Field(default=None, gt=0.0, le=1e6)
    """Participant-level DP with local or distributed noise: the smallest noise
    multiplier this site adds (a coordinator that asks for less is refused)."""
    audit_public_key: str | None = None
    """The coordinator's audit public key (64 hex characters, its ``audit.pub``) that
    this site's receipts must verify under; unset: pinned on first use
    (:mod:`fedshield.federation.receipts`)."""

    @field_validator("audit_public_key")
    @classmethod
    def _audit_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_audit_key(value, source="audit_public_key")
            except ConfigError as exc:
                raise ValueError(exc.message) from exc
        return value


class ParticipantFile(BaseModel):
    """The whole ``participant.toml`` of a kit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    participant: ParticipantSection
    data: DataConfig = DataConfig()
    transport: TransportConfig = TransportConfig()
    privacy: PrivacyConfig = PrivacyConfig()


def load_participant_file(kit_dir: Path) -> ParticipantFile:
    """Read and validate ``<kit_dir>/participant.toml``."""
    path = kit_dir / PARTICIPANT_FILE
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} does not exist", hint="Use a participant kit from `fedshield provision`."
        ) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return ParticipantFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']}") from exc


@dataclass(frozen=True)
class AgentResult:
    """How a participant's run ended."""

    rounds_trained: int
    rounds_evaluated: int
    end: str
    rounds_refused: int = 0
    """Fit rounds declined because they would have exceeded the privacy budget."""


def run_agent(
    kit: Kit,
    settings: ParticipantFile,
    *,
    coordinator_url: str | None = None,
    on_message: Callable[[str], None] | None = None,
    max_polls: int = 1_000_000,
) -> AgentResult:
    """Take part in the federation until the coordinator says it is over."""
    say = on_message or (lambda _msg: None)
    me = settings.participant
    if kit.name != me.name or kit.role != "participant":
        raise ConfigError(
            f"kit certificate is for {kit.role} {kit.name!r} but participant.toml names {me.name!r}"
        )
    spec = data_spec(
        settings.data,
        seed=me.seed,
        batch_size=me.batch_size,
        participant=me.name,
        base_dir=kit.dir,
        masking_key=kit.dir / KIT_KEY_FILE,
    )
    masking_sha3 = _announce_masking(spec, say)
    factory = resolve_task(me.task)
    ctx = TaskContext(
        role="participant",
        name=me.name,
        partition_index=me.partition_index,
        num_partitions=me.num_partitions,
        data=spec,
        seed=me.seed,
    )
    parts = call_task(factory, ctx)  # masks the site's CSV; refuses unmasked PII
    layout = Layout.of(model_weights(parts.model))
    privacy = _site_privacy(kit.dir, settings, parts, say)
    transport = settings.transport
    client = CoordinatorClient(
        coordinator_url or me.coordinator,
        ssl_context=client_ssl_context(kit),
        credentials=Credentials.from_kit(kit),
        timeout_s=transport.request_timeout_s,
        max_retries=transport.max_retries,
        backoff_base_s=transport.backoff_base_s,
        backoff_max_s=transport.backoff_max_s,
        reconnect_timeout_s=transport.reconnect_timeout_s,
        max_payload_bytes=transport.max_payload_bytes,
    )
    trained = evaluated = refused = 0
    session: SecureSession | None = None
    signing_key = kit.signing_key()
    ca_cert = load_certificate(kit.ca_path)
    spent = SpentLedger(kit.dir / SPENT_FILE)
    receipts = ReceiptCollector(
        ReceiptStore(
            kit.dir / RECEIPTS_DIR,
            participant=me.name,
            federation=me.federation,
            pinned_key=me.audit_public_key,
        ),
        # Few retries: a receipt is never worth holding up a round (it is asked again).
        lambda number: client.receipt(number, max_retries=2),
        say,
    )
    with client:
        for _ in range(max_polls):
            task = client.next_task(wait_s=me.long_poll_s)
            if task is None:
                continue
            if task.federation != me.federation:
                raise ProtocolError(
                    f"coordinator speaks for federation {task.federation!r}, "
                    f"this kit belongs to {me.federation!r}"
                )
            if task.kind in ("finished", "failed"):
                receipts.collect(before=None)
            elif task.round is not None:
                # A task of round R means every earlier round committed.
                receipts.collect(before=task.round)
            if task.kind == "finished":
                say("federation finished")
                return AgentResult(trained, evaluated, "finished", refused)
            if task.kind == "failed":
                raise RoundFailedError(f"the coordinator reports: {task.reason}")
            if task.kind == "fit" and me.require_secure_aggregation and not task.secure_aggregation:
                raise ProtocolError(
                    "the coordinator asks for an update in the clear, but this site requires "
                    "secure aggregation (require_secure_aggregation in participant.toml)",
                    hint="Turn on [secure_aggregation] in the federation, or ask the admin "
                    "why it is off.",
                )
            try:
                if task.kind == "secagg":
                    session = _secure_stage(client, session, spent, task, say)
                    continue
                sha3 = task.model_sha3 or ""
                if task.kind == "fit" and task.secure_aggregation and sha3 in spent:
                    assert task.round is not None and task.attempt is not None
                    reason = (
                        f"this site already masked an update of model {sha3[:12]} "
                        "into a secure sum; a second one could reveal it"
                    )
                    say(f"round {task.round}: sitting out: {reason}")
                    client.decline(task.round, task.attempt, reason)
                    continue
                floor = me.min_participant_noise
                local = task.local_dp
                if local is not None and floor is not None and local.noise_multiplier < floor:
                    assert task.round is not None and task.attempt is not None
                    reason = (
                        f"the coordinator asks for local noise multiplier "
                        f"{local.noise_multiplier:g}, below this site's minimum {floor:g} "
                        "(min_participant_noise)"
                    )
                    say(f"round {task.round}: declining: {reason}")
                    client.decline(task.round, task.attempt, reason)
                    continue
                try:
                    outcome = _work(client, parts, layout, task, me, say, privacy, masking_sha3)
                except UntrustedModelError as exc:
                    # Refused before training: the model is not the coordinator's.
                    assert task.round is not None and task.attempt is not None
                    if task.kind != "fit":
                        raise
                    say(f"round {task.round}: declining: {exc.message}")
                    client.decline(task.round, task.attempt, exc.message[:1000])
                    refused += 1
                    continue
                except BudgetExhaustedError as exc:
                    # Refused before training: nothing was computed on the data.
                    assert task.round is not None and task.attempt is not None
                    say(f"round {task.round}: declining: {exc.message}")
                    client.decline(task.round, task.attempt, exc.message[:1000])
                    refused += 1
                    continue
                if isinstance(outcome, SecureUpdate):
                    session = SecureSession(
                        min_noise_multiplier=me.min_participant_noise,
                        name=me.name,
                        federation=me.federation,
                        round=outcome.round,
                        attempt=outcome.attempt,
                        update=outcome.vector,
                        num_examples=outcome.num_examples,
                        signing_key=signing_key,
                        ca_cert=ca_cert,
                        clock=utcnow,
                        min_participants=me.secure_min_participants,
                        model_sha3=outcome.model_sha3,
                    )
                if task.kind == "fit" and task.round is not None:
                    receipts.contributed(task.round)
                trained += task.kind == "fit"
                evaluated += task.kind == "evaluate"
            except RejectedError as exc:
                # A round that closed under us (deadline, restart, a commit between the
                # task and the download: 404) is not our failure: poll again.
                if exc.status not in (404, 409):
                    raise
                say(f"round {task.round}: result not accepted ({exc.message})")
    raise TaskError(f"participant stopped after {max_polls} polls without the federation ending")


@dataclass(frozen=True)
class SecureUpdate:
    """A trained update that leaves this site only inside SecAgg+."""

    round: int
    attempt: int
    vector: np.ndarray
    num_examples: int
    model_sha3: str


def _secure_stage(
    client: CoordinatorClient,
    session: SecureSession | None,
    spent: SpentLedger,
    task: TaskMessage,
    say: Callable[[str], None],
) -> SecureSession | None:
    """Answer one SecAgg+ stage; return the session if it goes on.

    Whatever goes wrong in a stage (a refused setup, a bad signature, a rejected
    upload) ends this site's part in the round with the reason told to the
    coordinator; the update stays here and the agent goes on polling.
    """
    assert task.round is not None and task.attempt is not None and task.stage is not None
    if session is None or not session.matches(task.round, task.attempt):
        reason = "this site holds no update for that round (it restarted or did not train)"
        client.refuse_secagg(
            task.round, task.attempt, SecAggRefusal(stage=task.stage, reason=reason)
        )
        return session
    try:
        body, content_type = session.answer(task.stage, task.secagg)
        if task.stage == "masked":
            spent.spend(session.model_sha3)  # durable before the masked input leaves
        client.push_secagg(task.round, task.attempt, task.stage, body, content_type)
    except RejectedError as exc:
        say(f"round {task.round}: the coordinator refused the {task.stage} answer: {exc.message}")
        return None
    except FedshieldError as exc:
        say(f"round {task.round}: leaving secure aggregation at {task.stage}: {exc.message}")
        refusal = SecAggRefusal(stage=task.stage, reason=exc.message[:1000])
        client.refuse_secagg(task.round, task.attempt, refusal)
        return None
    if session.done:
        say(f"round {task.round}: secure aggregation done")
        return None
    return session


def _announce_masking(spec: DataSpec, say: Callable[[str], None]) -> str | None:
    """Say which masking policy this site applies; return its hash (None: no policy)."""
    masking = spec.masking
    if masking is None:
        return None
    if masking.policy is None:
        say(
            f"masking: no policy at {masking.policy_path}; the data is scanned for "
            "identifying columns and refused if it has any"
        )
        return None
    say(f"masking: policy {masking.policy_path} (sha3 {masking.policy_sha3})")
    return masking.policy_sha3


def _site_privacy(
    kit_dir: Path, settings: ParticipantFile, parts: TaskParts, say: Callable[[str], None]
) -> SitePrivacy | None:
    """Resolve this site's ``[privacy]``: check it against the data and load the ledger."""
    config = settings.privacy
    if not config.enabled:
        say(
            "WARNING: differential privacy is OFF at this site ([privacy] mode = 'off' in "
            "participant.toml): its updates can reveal its training records"
        )
        return None
    ledger_path = kit_dir / LEDGER_FILE
    privacy = SitePrivacy(
        config,
        ledger=PrivacyLedgerFile(ledger_path),
        batch_size=settings.participant.batch_size,
        planned_rounds=None,
    )
    if parts.train_loader is None:
        raise TaskError("the task returned no training data for this participant")
    records = int(dataset_tensors(parts.train_loader)[0].shape[0])
    privacy.check_records(records)  # fail at start, not in round 1
    entries = privacy.ledger.entries
    say(
        f"differential privacy: sample-level DP-SGD on {records} records, budget epsilon "
        f"{config.target_epsilon:g} at delta {config.target_delta:g} ({config.accountant}); "
        f"spent so far epsilon {privacy.spent():.4g} in {len(entries)} round(s) "
        f"(ledger {ledger_path})"
    )
    return privacy


def _work(
    client: CoordinatorClient,
    parts: TaskParts,
    layout: Layout,
    task: TaskMessage,
    me: ParticipantSection,
    say: Callable[[str], None],
    privacy: SitePrivacy | None = None,
    masking_sha3: str | None = None,
) -> SecureUpdate | None:
    assert task.round is not None and task.attempt is not None and task.model_sha3 is not None
    if task.task is None or task.task.name != me.task:
        got = task.task.name if task.task else None
        raise ProtocolError(
            f"coordinator asks for task {got!r} but this site runs {me.task!r}",
            hint="A site only runs the task named in its own participant.toml.",
        )
    weights = client.fetch_task_model(task, layout=layout)
    trainer = LocalTrainer(
        parts,
        config=train_config_of(task.task),
        seed=me.seed + me.partition_index,
        privacy=privacy if task.kind == "fit" else None,
    )
    if task.kind == "fit":
        local = task.local_dp
        outcome = trainer.fit(
            weights,
            round=task.round,
            attempt=task.attempt,
            local_dp=(local.clip_norm, local.noise_multiplier) if local is not None else None,
        )
        meta = FitMeta(
            round=task.round,
            attempt=task.attempt,
            model_sha3=task.model_sha3,
            num_examples=outcome.num_examples,
            metrics=outcome.metrics,
            masking_policy_sha3=masking_sha3,
        )
        if "epsilon" in outcome.metrics:
            say(
                f"round {task.round}: trained with DP-SGD on {outcome.num_examples} "
                f"examples; privacy spent epsilon {outcome.metrics['epsilon']:.4g} of "
                f"{outcome.metrics['target_epsilon']:g} (delta {outcome.metrics['delta']:g})"
            )
        else:
            say(
                f"round {task.round}: trained on {outcome.num_examples} examples, "
                f"loss {outcome.metrics['train_loss']:.4f}"
            )
        if task.secure_aggregation:
            # Only the count and metrics go out now; the update only inside SecAgg+.
            client.push_fit_report(meta)
            vector = flatten(outcome.update, layout, dtype=np.float32)
            return SecureUpdate(
                task.round, task.attempt, vector, outcome.num_examples, task.model_sha3
            )
        client.push_update(meta, outcome.update)
        return None
    count, metrics = trainer.evaluate(weights)
    client.push_evaluation(
        EvaluationResult(
            round=task.round,
            attempt=task.attempt,
            model_sha3=task.model_sha3,
            num_examples=count,
            metrics=metrics,
        )
    )
    say(f"final evaluation: accuracy {metrics['accuracy']:.4f} on {count} examples")
    return None
