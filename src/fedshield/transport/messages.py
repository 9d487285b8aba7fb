"""Wire messages between participants and the coordinator (JSON parts).

Every message is a frozen pydantic model with a ``v`` field; a meaning changes by adding
a type, never by editing a field. Tensors travel separately as safetensors bytes (see
:mod:`fedshield.tensors`). Metadata of an uploaded update travels in the
``X-Fedshield-Meta`` header as the JSON of :class:`FitMeta`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedshield.config import TaskConfig

__all__ = [
    "META_HEADER",
    "SECAGG_STAGES",
    "Decline",
    "ErrorBody",
    "EvaluationResult",
    "FitMeta",
    "LocalDP",
    "SecAggRefusal",
    "TaskMessage",
]

SecAggStage = Literal["advertise", "share", "masked", "consistency", "unmask"]
SECAGG_STAGES: tuple[SecAggStage, ...] = ("advertise", "share", "masked", "consistency", "unmask")
"""The SecAgg+ stages a participant answers after training, in order."""

META_HEADER = "x-fedshield-meta"
_SHA3 = r"^[0-9a-f]{64}$"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1


class LocalDP(_Message):
    """Participant-level DP with local noise: clip to ``clip_norm``, add noise at the site."""

    clip_norm: float = Field(gt=0.0, le=1e6, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0.0, le=1e6, allow_inf_nan=False)


class TaskMessage(_Message):
    """The coordinator's answer to a long-poll: work to do, or the end of the federation.

    ``secure_aggregation`` on a fit task means: train, report only the example count
    and metrics, then answer the ``secagg`` tasks of the same round; a ``secagg`` task
    names its ``stage`` and carries that stage's input (``secagg``, the JSON of
    :mod:`fedshield.secagg.wire` messages).
    """

    kind: Literal["fit", "evaluate", "secagg", "finished", "failed"]
    federation: str
    round: int | None = None
    attempt: int | None = None
    model_version: int | None = None
    model_sha3: str | None = Field(default=None, pattern=_SHA3)
    model_signature: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{86}$")
    """The coordinator's Ed25519 signature (base64url) over the
    :class:`~fedshield.transport.envelope.ModelStatement` of ``federation``, ``round``,
    ``model_sha3`` and ``model_version``: a participant trains on nothing else."""
    deadline: datetime | None = None
    task: TaskConfig | None = None
    reason: str | None = None
    secure_aggregation: bool = False
    local_dp: LocalDP | None = None
    stage: SecAggStage | None = None
    secagg: dict[str, Any] | None = None


class FitMeta(_Message):
    """Metadata that accompanies an uploaded update."""

    round: int = Field(ge=1)
    attempt: int = Field(ge=1)
    model_sha3: str = Field(pattern=_SHA3)
    num_examples: int = Field(ge=1, le=10**9)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    masking_policy_sha3: str | None = Field(default=None, pattern=_SHA3)
    """SHA3-256 of the canonical form of the masking policy the site applied to its data
    (:func:`fedshield.masking.policy_sha3`); None when it has none. Never the data."""


class EvaluationResult(_Message):
    """A participant's evaluation of the distributed model."""

    round: int = Field(ge=1)
    attempt: int = Field(ge=1)
    model_sha3: str = Field(pattern=_SHA3)
    num_examples: int = Field(ge=1, le=10**9)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)


class Decline(_Message):
    """A participant's refusal to take part in a round it was selected for, and why."""

    reason: str = Field(max_length=1000)


class SecAggRefusal(_Message):
    """A participant's refusal to go on with a SecAgg+ round, and why."""

    stage: SecAggStage
    reason: str = Field(max_length=1000)


class ErrorBody(_Message):
    """Body of every error reply: what was wrong and how to fix it."""

    error: str
    hint: str = ""
