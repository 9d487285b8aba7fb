"""Persistence: the database, the model blob store, the model registry and records.

One :class:`Database` (SQLite in the workdir by default, or any SQLAlchemy URL such as
PostgreSQL) holds participants, round attempts, model versions, head moves, a plain
event journal and the privacy events that epsilon is recomputed from
(:class:`PrivacyEvents`). Model weights live beside it in a content-addressed
:class:`BlobStore` of safetensors files named by their canonical SHA3-256 hash,
verified on every read.

Typical use::

    db = Database.for_workdir(workdir)
    registry = ModelRegistry(db, BlobStore(workdir / "models"))
    v0 = registry.commit(weights, parent=None, round=None, metrics={}, now=now)

Writes that must survive a crash are on disk when the call returns: blobs are fsynced
and renamed atomically before the database transaction that refers to them commits,
and SQLite runs with ``journal_mode=WAL`` and ``synchronous=FULL``.
"""

from __future__ import annotations

from fedshield.storage.blobs import BlobStore
from fedshield.storage.db import (
    Base,
    Database,
    EventRow,
    HeadRow,
    ModelVersionRow,
    ParticipantRow,
    PrivacyEventRow,
    RoundRow,
)
from fedshield.storage.privacy import PrivacyEventRecord, PrivacyEvents
from fedshield.storage.records import (
    EventLog,
    EventRecord,
    ParticipantRecord,
    Participants,
    RoundLog,
    RoundRecord,
)
from fedshield.storage.registry import ModelRegistry, ModelVersion

__all__ = [
    "Base",
    "BlobStore",
    "Database",
    "EventLog",
    "EventRecord",
    "EventRow",
    "HeadRow",
    "ModelRegistry",
    "ModelVersion",
    "ModelVersionRow",
    "ParticipantRecord",
    "ParticipantRow",
    "Participants",
    "PrivacyEventRecord",
    "PrivacyEventRow",
    "PrivacyEvents",
    "RoundLog",
    "RoundRecord",
    "RoundRow",
]
