"""Typed federation configuration, loaded from TOML.

A federation file has one table per concern; every key is optional except where noted
and unknown keys are errors (a typo must not silently fall back to a default)::

    [federation]   name, seed
    [task]         name, algorithm, proximal_mu, local_epochs, learning_rate, momentum,
                   batch_size
    [data]         dataset, partition, dirichlet_alpha, shards_per_partition,
                   test_fraction, server_test_fraction, csv_dir, server_csv, label_column,
                   masking_policy
    [participants] count, name_prefix, names
    [rounds]       count, fraction, per_round, min_participants, min_available, fit_timeout_s,
                   evaluate_timeout_s, join_timeout_s, max_retries, final_evaluation
    [server]       optimizer, learning_rate
    [secure_aggregation] enabled, clip_range, max_weight, ring_bits, neighbours,
                   threshold, dropout, corruption, stage_timeout_s, min_group_size
    [robust]       rule, num_byzantine, params, quarantine_after
    [privacy]      mode, target_epsilon, target_delta, max_grad_norm, noise_multiplier,
                   sampling_rate, accountant, planned_rounds
    [coordinator]  host, port, hosts, long_poll_s
    [transport]    max_payload_bytes, request_timeout_s, max_retries, backoff_base_s,
                   backoff_max_s, reconnect_timeout_s, envelope_window_s,
                   refusals_per_minute, refusal_burst, refusal_summary_s,
                   refusal_max_actors
    [access]       policy (custom roles, TOML; relative to this file), kits (extra kits:
                   [{name, role, organization}]), revocation_refresh_s

Validation errors become :class:`~fedshield.errors.ConfigError` naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedshield.errors import ConfigError, FedshieldError, PayloadError

__all__ = [
    "AccessConfig",
    "AccessKit",
    "CoordinatorConfig",
    "DataConfig",
    "FederationConfig",
    "FederationSection",
    "ParticipantDPConfig",
    "ParticipantsConfig",
    "PrivacyConfig",
    "RoundsConfig",
    "SecureAggregationConfig",
    "ServerConfig",
    "TaskConfig",
    "TransportConfig",
    "load_config",
    "parse_config",
    "participant_sampling_rate",
]

_HOUR_S = 3600.0
_WEEK_S = 7 * 24 * 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederationSection(_Section):
    """Identity of the federation and its master seed."""

    name: str = "fedshield-demo"
    seed: int = Field(default=7, ge=0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
        return value


class TaskConfig(_Section):
    """What each participant trains, and how."""

    name: str = "digits"
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(default=0.0, ge=0.0)
    local_epochs: int = Field(default=3, ge=1, le=1000)
    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    batch_size: int = Field(default=32, ge=1, le=65536)

    @model_validator(mode="after")
    def _check_prox(self) -> TaskConfig:
        if self.algorithm == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("task.proximal_mu must be > 0 when task.algorithm = 'fedprox'")
        if self.algorithm == "fedavg" and self.proximal_mu != 0:
            raise ValueError("task.proximal_mu is only used with task.algorithm = 'fedprox'")
        return self


class DataConfig(_Section):
    """Where each participant's data comes from and how built-in data is split."""

    dataset: Literal["digits", "mnist", "breast_cancer", "csv"] = "digits"
    partition: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    dirichlet_alpha: float = Field(default=0.5, gt=0.0)
    shards_per_partition: int = Field(default=2, ge=1)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    server_test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    csv_dir: str | None = None
    server_csv: str | None = None
    label_column: str = "target"
    masking_policy: str | None = Field(default=None, min_length=1, max_length=4096)
    """The participant's masking policy file (``{participant}`` is replaced by its
    name; relative to the file naming it). Unset: ``<csv_dir>/<participant>.masking.toml``
    if that file exists. Read by the participant only (docs/masking.md)."""

    @model_validator(mode="after")
    def _check_csv(self) -> DataConfig:
        if self.dataset == "csv" and not self.csv_dir:
            raise ValueError(
                "data.csv_dir is required when data.dataset = 'csv' "
                "(each participant reads <csv_dir>/<participant>.csv)"
            )
        if self.masking_policy is not None and self.dataset != "csv":
            raise ValueError("data.masking_policy applies to data.dataset = 'csv' only")
        return self


class ParticipantsConfig(_Section):
    """Which organizations take part."""

    count: int = Field(default=5, ge=1, le=10_000)
    name_prefix: str = "site"
    names: tuple[str, ...] = ()

    @field_validator("names")
    @classmethod
    def _check_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _NAME.match(name) or name in ("coordinator", "admin"):
                raise ValueError(f"participant name {name!r} is not allowed")
        if len(set(value)) != len(value):
            raise ValueError("participant names must be unique")
        return value

    def resolved_names(self) -> tuple[str, ...]:
        """Return the explicit names, or ``count`` names made from the prefix."""
        if self.names:
            return self.names
        width = len(str(self.count))
        return tuple(f"{self.name_prefix}-{i:0{width}d}" for i in range(1, self.count + 1))


class RoundsConfig(_Section):
    """How many rounds, who is selected, and the deadlines of each stage."""

    count: int = Field(default=10, ge=1, le=100_000)
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    per_round: int | None = Field(default=None, ge=1)
    min_participants: int = Field(default=2, ge=1)
    min_available: int | None = Field(default=None, ge=1)
    fit_timeout_s: float = Field(default=120.0, gt=0.0, le=_WEEK_S)
    evaluate_timeout_s: float = Field(default=60.0, gt=0.0, le=_WEEK_S)
    join_timeout_s: float = Field(default=120.0, gt=0.0, le=_WEEK_S)
    max_retries: int = Field(default=2, ge=0, le=100)
    final_evaluation: bool = True


class ServerConfig(_Section):
    """The server-side optimizer applied to the aggregated update."""

    optimizer: Literal["fedavg"] = "fedavg"
    learning_rate: float = Field(default=1.0, gt=0.0, le=100.0)


RobustRule = Literal[
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "norm_bounding",
    "fltrust",
    "foolsgold",
]


class RobustConfig(_Section):
    """How the round's updates are combined (see docs/robust.md).

    ``mean`` is FedAvg's weighted mean. Every other rule bounds what ``num_byzantine``
    arbitrary updates can do (each rule states its assumption, e.g. Krum needs
    ``n >= 2f + 3``) and gets no weights: the example count a site claims would
    otherwise be a poisoner's lever. With secure aggregation
    the rule runs over the group means (``secure_aggregation.min_group_size``): the
    coordinator never sees one update, and one malicious site spoils at most its group.
    ``params`` are the rule's own knobs (``beta``, ``m``, ``max_norm``, ``tau``...).
    With a robust rule and secure aggregation off, every site's update is scored each
    round (cosine to the aggregate, norm z-score; ``fedshield.robust.trust``); a site
    whose trust stays low for ``quarantine_after`` rounds is quarantined until an admin
    releases it (``None`` turns quarantine off).

    Two rules keep state the coordinator supplies: ``fltrust`` compares every input
    with the update the coordinator computes on a clean *root dataset*, the first
    ``root_examples`` records of its held-out server set (the rest stays its test set);
    ``foolsgold`` compares participants' update histories across rounds, so it needs
    individual updates (secure aggregation off).
    """

    rule: RobustRule = "mean"
    num_byzantine: int = Field(default=0, ge=0, le=10_000)
    params: dict[str, float] = Field(default_factory=dict, max_length=8)
    quarantine_after: int | None = Field(default=2, ge=1, le=1000)
    root_examples: int = Field(default=100, ge=1, le=1_000_000)


class SecureAggregationConfig(_Section):
    """SecAgg+ for every fit round (see docs/secagg.md); on unless ``enabled = false``.

    The coordinator then only ever holds the weighted sum of the survivors' updates.
    Turning it off lets the coordinator see every update: the coordinator warns and
    records a ``security.plain_aggregation`` event at every start.
    Every coordinate is clipped to ``[-clip_range, clip_range]`` and quantized; a
    participant's weight (its example count) is capped at ``max_weight``. Over the
    network each of the five protocol stages waits at most ``stage_timeout_s`` for the
    participants' messages; who has not answered by then has dropped out. With
    ``min_group_size`` the round's participants are split at random into groups of at
    least that many, SecAgg+ runs in each, and the coordinator sees only group sums.
    """

    enabled: bool = True
    clip_range: float = Field(default=1.0, gt=0.0, le=1e6)
    max_weight: int = Field(default=1000, ge=1, le=2**20)
    ring_bits: Literal[32, 64] = 32
    neighbours: int | None = Field(default=None, ge=1)
    threshold: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    corruption: float = Field(default=0.0, ge=0.0, lt=1.0)
    stage_timeout_s: float = Field(default=30.0, gt=0.0, le=_HOUR_S)
    min_group_size: int | None = Field(default=None, ge=2)


class PrivacyConfig(_Section):
    """Sample-level differential privacy at each site: DP-SGD with a privacy ledger.

    With ``mode = "sample"`` (the default: secure by default) every site trains with
    DP-SGD (:mod:`fedshield.training.dpsgd`): Poisson sampling of its records at
    ``sampling_rate`` (default ``batch_size / records``), each record's gradient clipped
    to ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``. When
    ``noise_multiplier`` is absent a site calibrates it so that ``planned_rounds``
    (default ``rounds.count``) rounds meet ``(target_epsilon, target_delta)``. Each site
    keeps a ledger of the rounds it trained and refuses a round that would take it over
    ``target_epsilon``; the coordinator counts the refusal as a dropout.

    The budget is the site's decision: in a networked federation each site reads this
    table from its own kit's ``participant.toml`` (``fedshield provision`` writes the
    federation's values there as defaults). ``mode = "off"`` trains without DP: it is
    insecure (an update can reveal records), warned about and recorded as a
    ``security.no_dp`` event.
    """

    mode: Literal["off", "sample"] = "sample"
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    sampling_rate: float | None = None
    accountant: Literal["pld", "rdp"] = "pld"
    planned_rounds: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("target_epsilon")
    @classmethod
    def _check_epsilon(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(
                "must be finite: an infinite epsilon promises nothing (mode = 'off' "
                "trains without DP, explicitly)"
            )
        if value <= 0:
            raise ValueError("must be > 0: no round can be trained within epsilon <= 0")
        return value

    @field_validator("target_delta")
    @classmethod
    def _check_delta(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(
                "must be in (0, 1), and well below 1/records at every site (e.g. 1e-5): "
                "delta is the chance the epsilon guarantee fails outright"
            )
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _check_clip(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a finite number > 0: it bounds each record's gradient (L2)")
        return value

    @field_validator("noise_multiplier")
    @classmethod
    def _check_noise(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError("must be a finite number > 0 (noise std / max_grad_norm)")
        return value

    @field_validator("sampling_rate")
    @classmethod
    def _check_rate(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError("must be in (0, 1]: each record's chance to be in a batch")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> PrivacyConfig:
        if self.mode == "sample" and self.noise_multiplier == 0:
            raise ValueError(
                "noise_multiplier is 0 with mode = 'sample': no noise is "
                "no differential privacy (give noise_multiplier > 0, leave it out to "
                "calibrate it to target_epsilon, or set mode = 'off', which is insecure)"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether the sites train with DP (``mode`` is not ``"off"``)."""
        return self.mode != "off"


class ParticipantDPConfig(_Section):
    """Participant-level DP-FedAvg: whole updates clipped, Gaussian noise on their sum.

    Off unless ``noise`` names where the noise is added (see docs/privacy.md):
    ``central`` (the coordinator clips every update and noises the sum; it sees the
    updates, so secure aggregation must be off), ``local`` (each site clips and noises
    its own update before it leaves, with standard deviation ``noise_multiplier * 2 *
    clip_norm``) or ``distributed`` (each site adds ``1/n`` of the noise variance as
    discrete Gaussian integers inside secure aggregation, which needs ``ring_bits = 64``
    and no groups). The round's updates are summed with equal weight and
    divided by the number of participants (``sampling = "poisson"``: the expected
    number). ``clipping = "adaptive"`` tracks the ``target_quantile`` of the update norms
    (Andrew et al. 2021), starting at ``clip_norm``. ``noise_multiplier`` is calibrated
    to ``(target_epsilon, target_delta)`` over ``rounds.count`` rounds when absent.
    ``sampling`` is how the round selects participants: ``fixed`` (``rounds.fraction``
    / ``per_round`` of them; replace-one neighbours, RDP only unless everyone takes
    part) or ``poisson`` (each independently with probability ``rounds.fraction``).
    """

    noise: Literal["off", "central", "local", "distributed"] = "off"
    clipping: Literal["fixed", "adaptive"] = "fixed"
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    sampling: Literal["fixed", "poisson"] = "fixed"
    accountant: Literal["pld", "rdp"] = "pld"
    target_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)
    clip_learning_rate: float = Field(default=0.2, gt=0.0, le=10.0)
    clipped_count_stddev: float | None = None

    @field_validator("clip_norm")
    @classmethod
    def _check_clip(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a finite number > 0: it bounds each update's L2 norm")
        return value

    @field_validator("noise_multiplier", "clipped_count_stddev")
    @classmethod
    def _check_noise(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ValueError(
                "must be a finite number > 0: noise 0 is no differential privacy "
                "(leave noise_multiplier out to calibrate it, or set noise = 'off')"
            )
        return value

    @field_validator("target_epsilon")
    @classmethod
    def _check_epsilon(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a finite number > 0")
        return value

    @field_validator("target_delta")
    @classmethod
    def _check_delta(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("must be in (0, 1), well below 1/participants (e.g. 1e-5)")
        return value

    @property
    def enabled(self) -> bool:
        """Whether participant-level DP is on."""
        return self.noise != "off"


class CoordinatorConfig(_Section):
    """Where the coordinator listens and under which names it is reached."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    hosts: tuple[str, ...] = ()
    long_poll_s: float = Field(default=20.0, gt=0.0, le=300.0)


class TransportConfig(_Section):
    """Limits, timeouts and retry policy of the HTTPS transport."""

    max_payload_bytes: int = Field(default=256 * 2**20, ge=1024)
    request_timeout_s: float = Field(default=60.0, gt=0.0, le=_HOUR_S)
    max_retries: int = Field(default=6, ge=0, le=100)
    backoff_base_s: float = Field(default=0.25, gt=0.0, le=_HOUR_S)
    backoff_max_s: float = Field(default=10.0, gt=0.0, le=_HOUR_S)
    reconnect_timeout_s: float = Field(default=300.0, gt=0.0, le=_WEEK_S)
    envelope_window_s: float = Field(default=120.0, ge=5.0, le=_HOUR_S)
    """How far a signed message's timestamp may be from the coordinator's clock, either
    way; nonces are remembered this long (see docs/messages.md)."""
    refusals_per_minute: float = Field(default=60.0, gt=0.0, le=60_000.0)
    """How fast a caller's refusal budget refills: refused requests (access denials,
    refused envelopes) per minute that are audited one by one (see docs/access.md)."""
    refusal_burst: int = Field(default=60, ge=1, le=10_000)
    """Refused requests of one caller audited back to back before the rest are only
    counted (answered 429) and summarized."""
    refusal_summary_s: float = Field(default=60.0, ge=1.0, le=_HOUR_S)
    """Longest time a caller's suppressed refusals wait for their summary audit entry."""
    refusal_max_actors: int = Field(default=4096, ge=16, le=1_000_000)
    """Most callers whose refusals are limited each on its own; past it, new callers
    share one budget (memory stays bounded; minting callers does not evade the limit)."""


class AccessKit(_Section):
    """One extra kit that ``fedshield provision`` makes: an auditor, observer or custom role."""

    name: str
    role: str
    organization: str | None = None

    @field_validator("name")
    @classmethod
    def _check_kit_name(cls, value: str) -> str:
        if not _NAME.match(value) or value.casefold() in ("coordinator", "admin"):
            raise ValueError(f"kit name {value!r} is not allowed")
        return value

    @field_validator("role")
    @classmethod
    def _check_kit_role(cls, value: str) -> str:
        if not _ROLE.match(value):
            raise ValueError(
                f"role {value!r} must be 1 to 32 characters of a-z 0-9 _ - starting with a letter"
            )
        if value in ("coordinator", "participant", "admin"):
            raise ValueError(
                f"role {value!r} kits come from [federation] and [participants]; "
                "[access] kits are for auditors, observers and custom roles"
            )
        return value


class AccessConfig(_Section):
    """Access control: the policy file, extra kits, how fast revocations take effect."""

    policy: str | None = None
    kits: tuple[AccessKit, ...] = ()
    revocation_refresh_s: float = Field(default=1.0, ge=0.0, le=60.0)

    @field_validator("kits")
    @classmethod
    def _check_unique(cls, value: tuple[AccessKit, ...]) -> tuple[AccessKit, ...]:
        names = [k.name.casefold() for k in value]
        if len(set(names)) != len(names):
            raise ValueError("[access] kit names must be unique")
        return value


class FederationConfig(_Section):
    """The whole federation file."""

    federation: FederationSection = FederationSection()
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    participants: ParticipantsConfig = ParticipantsConfig()
    rounds: RoundsConfig = RoundsConfig()
    server: ServerConfig = ServerConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    robust: RobustConfig = RobustConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    participant_dp: ParticipantDPConfig = ParticipantDPConfig()
    coordinator: CoordinatorConfig = CoordinatorConfig()
    transport: TransportConfig = TransportConfig()
    access: AccessConfig = AccessConfig()

    @model_validator(mode="after")
    def _check_counts(self) -> FederationConfig:
        n = len(self.participants.resolved_names())
        clash = {k.name.casefold() for k in self.access.kits} & {
            p.casefold() for p in self.participants.resolved_names()
        }
        if clash:
            raise ValueError(f"[access] kit names {sorted(clash)} are also participant names")
        if self.rounds.min_participants > n:
            raise ValueError(
                f"rounds.min_participants is {self.rounds.min_participants} but the "
                f"federation has only {n} participants"
            )
        if self.rounds.min_available is not None and self.rounds.min_available > n:
            raise ValueError(
                f"rounds.min_available is {self.rounds.min_available} but the federation "
                f"has only {n} participants"
            )
        if self.rounds.per_round is not None and self.rounds.per_round > n:
            raise ValueError(
                f"rounds.per_round is {self.rounds.per_round} but the federation has only "
                f"{n} participants"
            )
        secure = self.secure_aggregation
        if secure.enabled:
            if n < 2:
                raise ValueError("secure_aggregation needs at least 2 participants")
            if secure.min_group_size is not None and secure.min_group_size > n:
                raise ValueError(
                    f"secure_aggregation.min_group_size is {secure.min_group_size} but the "
                    f"federation has only {n} participants"
                )
            # The ring must hold the sum of n weighted, quantized updates: check now, with
            # the numbers, rather than wrap silently in round 1.
            from fedshield.secagg.quantize import Quantizer

            try:
                Quantizer.for_budget(
                    n,
                    max_weight=secure.max_weight,
                    clip_range=secure.clip_range,
                    ring_bits=secure.ring_bits,
                )
            except ConfigError as exc:
                raise ValueError(f"secure_aggregation: {exc.message}") from exc
        self._check_robust()
        self._check_participant_dp(n)
        return self

    def _check_participant_dp(self, n: int) -> None:
        dp = self.participant_dp
        if not dp.enabled:
            return
        secure = self.secure_aggregation.enabled
        if dp.noise == "distributed":
            table = self.secure_aggregation
            if not secure:
                raise ValueError(
                    "participant_dp.noise = 'distributed' adds the noise inside secure "
                    "aggregation: turn secure_aggregation on (or use 'central' / 'local')"
                )
            if table.ring_bits != 64:
                raise ValueError(
                    "participant_dp.noise = 'distributed' sums signed 64-bit integers: "
                    "set secure_aggregation.ring_bits = 64"
                )
            if table.min_group_size is not None:
                raise ValueError(
                    "participant_dp.noise = 'distributed' splits the noise over the whole "
                    "round: remove secure_aggregation.min_group_size (a group's sum would "
                    "carry only its share of the noise)"
                )
            if dp.clipping == "adaptive":
                raise ValueError(
                    "participant_dp.clipping = 'adaptive' with distributed noise is not "
                    "built (the clipped count would need its own share inside SecAgg); "
                    "use clipping = 'fixed'"
                )
        elif secure:
            raise ValueError(
                f"participant_dp.noise = {dp.noise!r} needs each clipped model delta at "
                "the coordinator: turn secure aggregation off (secure_aggregation.enabled "
                "= false)"
            )
        if self.robust.rule != "mean" or self.robust.params:
            raise ValueError(
                "participant-level DP sums clipped updates with equal weight: it needs "
                f"robust.rule = 'mean' without params, not {self.robust.rule!r}"
            )
        if dp.noise == "local" and dp.clipping == "adaptive":
            raise ValueError(
                "participant_dp.clipping = 'adaptive' needs the clipped count summed with "
                "noise by the aggregator; with local noise use clipping = 'fixed'"
            )
        if dp.sampling == "poisson" and self.rounds.per_round is not None:
            raise ValueError(
                "participant_dp.sampling = 'poisson' samples each participant with "
                "probability rounds.fraction: remove rounds.per_round"
            )
        rate = participant_sampling_rate(self)
        if dp.sampling == "fixed" and rate < 1.0 and dp.accountant != "rdp":
            raise ValueError(
                f"fixed-size participant sampling (rate {rate:.4g}) is accounted with "
                "RDP only: set participant_dp.accountant = 'rdp', select everyone "
                "(rounds.fraction = 1), or use participant_dp.sampling = 'poisson'"
            )

    def _check_robust(self) -> None:
        robust = self.robust
        if robust.rule == "mean" and not robust.params and robust.num_byzantine == 0:
            return
        # The fewest inputs the rule will ever see: the round's quorum, or with secure
        # aggregation the fewest groups that quorum can form.
        inputs = self.rounds.min_participants
        secure = self.secure_aggregation
        if secure.enabled and robust.rule == "foolsgold":
            raise ValueError(
                "robust.rule = 'foolsgold' compares each participant's update history, "
                "which secure aggregation hides (groups are redrawn every round); use "
                "another rule with secure aggregation, or turn it off"
            )
        if robust.rule == "fltrust" and not (
            self.data.server_test_fraction > 0 or self.data.server_csv
        ):
            raise ValueError(
                "robust.rule = 'fltrust' needs a root dataset at the coordinator, taken "
                "from its held-out server set: set data.server_test_fraction > 0 (or "
                "data.server_csv)"
            )
        if secure.enabled and robust.rule != "mean":
            if secure.min_group_size is None:
                raise ValueError(
                    f"robust.rule = {robust.rule!r} with secure aggregation needs "
                    "secure_aggregation.min_group_size: the rule runs over group means "
                    "(one group would leave it a single input)"
                )
            inputs = self.rounds.min_participants // secure.min_group_size
        from fedshield.robust import aggregate

        try:
            # The rule checks its own assumption and parameters on a dummy input.
            dummy = np.zeros((max(inputs, 1), 2))
            state: dict[str, Any] = {}  # what the coordinator supplies each round
            if robust.rule == "fltrust":
                state["root_update"] = np.zeros(2)
            elif robust.rule == "foolsgold":
                state["history"] = dummy
            aggregate(
                robust.rule,
                dummy,
                num_byzantine=robust.num_byzantine,
                **robust.params,
                **state,
            )
        except (ConfigError, PayloadError, TypeError) as exc:
            message = exc.message if isinstance(exc, FedshieldError) else str(exc)
            raise ValueError(
                f"robust: {message} (checked with {inputs} input(s): rounds.min_participants"
                f"{' // secure_aggregation.min_group_size' if secure.enabled else ''})"
            ) from exc

    def with_participants(self, count: int) -> FederationConfig:
        """Return a copy with ``count`` generated participant names (validated again)."""
        if count < 1:
            raise ConfigError(f"--participants must be >= 1, got {count}")
        data = self.model_dump()
        data["participants"].update(count=count, names=())
        rounds = data["rounds"]
        rounds["min_participants"] = min(rounds["min_participants"], count)
        if rounds["per_round"] is not None:
            rounds["per_round"] = min(rounds["per_round"], count)
        if rounds["min_available"] is not None:
            rounds["min_available"] = min(rounds["min_available"], count)
        return parse_config(data, source="--participants")

    def with_rounds(self, count: int) -> FederationConfig:
        """Return a copy with ``count`` rounds (validated again)."""
        data = self.model_dump()
        data["rounds"]["count"] = count
        return parse_config(data, source="--rounds")


def participant_sampling_rate(config: FederationConfig) -> float:
    """Each participant's chance to be in a round, as the accountant needs it."""
    n = len(config.participants.resolved_names())
    rounds = config.rounds
    if config.participant_dp.sampling == "poisson":
        return rounds.fraction
    # As RoundPolicy.selection_size picks them when everyone is reachable.
    wanted = rounds.per_round or math.ceil(round(rounds.fraction * n, 9))
    return min(n, max(wanted, rounds.min_participants)) / n


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()))
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a check across keys: its message names them itself
        return msg
    if error.get("type") == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling; see examples/digits.toml)"
    if "input" in error and error.get("type") != "missing" and not isinstance(error["input"], dict):
        return f"{loc or 'config'}: {msg} (got {error['input']!r})"
    return f"{loc or 'config'}: {msg}"


def parse_config(data: dict[str, Any], *, source: str = "config") -> FederationConfig:
    """Validate a parsed TOML document into a :class:`FederationConfig`."""
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"{source}: {problems}") from exc


def load_config(path: Path) -> FederationConfig:
    """Read and validate a federation TOML file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_config(data, source=str(path))
