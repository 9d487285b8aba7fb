"""The model registry: numbered global model versions, their lineage and the head.

Version 0 is the initial model; every later version names its parent, usually the
head at the time the round started. The *head* is the version participants train
from. It moves forward on each commit and can be moved back by :meth:`rollback`, which
never deletes anything: the rolled-back versions stay listed and loadable, and the
next commit simply names the rolled-back-to version as its parent (a branch).

Ordering of a commit, so that a crash at any point leaves a consistent registry:

1. the weights blob is written and ``fsync``-ed (a crash here leaves at most an
   unreferenced blob, which is harmless and reused if the same weights come again);
2. one database transaction inserts the version, moves the head and records an event
   (chained and signed into the audit log in that same transaction);
3. only then does :meth:`ModelRegistry.commit` return, so a caller that replies
   "committed" to anyone has a durable version behind it.
"""

from __future__ import annotations

import builtins
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fedshield.errors import NotFoundError, StorageError
from fedshield.storage.audit import chain_events
from fedshield.storage.blobs import BlobStore
from fedshield.storage.db import (
    Database,
    EventRow,
    HeadRow,
    ModelVersionRow,
    check_metrics,
    check_utc,
)
from fedshield.tensors import Weights

__all__ = ["ModelRegistry", "ModelVersion"]


@dataclass(frozen=True)
class ModelVersion:
    """One committed global model version (a value copied out of the database).

    Attributes
    ----------
    version
        The version number; 0 is the initial model.
    parent
        The version this one was derived from, or ``None`` for a root.
    round
        The round number that produced it, or ``None`` (initial model, imports).
    sha3
        The canonical weights hash (:func:`fedshield.tensors.weights_sha3`), which also
        names the blob.
    num_parameters
        The number of scalar parameters.
    metrics
        Validation metrics at commit time (name to value).
    created_at
        When it was committed (aware UTC).
    note
        Free text given at commit.
    """

    version: int
    parent: int | None
    round: int | None
    sha3: str
    num_parameters: int
    metrics: dict[str, float]
    created_at: datetime
    note: str

    @classmethod
    def from_row(cls, row: ModelVersionRow) -> ModelVersion:
        """Copy a database row into a value object."""
        return cls(
            version=row.version,
            parent=row.parent,
            round=row.round,
            sha3=row.sha3,
            num_parameters=row.num_parameters,
            metrics=dict(row.metrics),
            created_at=row.created_at,
            note=row.note,
        )

    def to_json(self) -> dict[str, object]:
        """Return the metadata as a JSON-ready dictionary."""
        return {
            "version": self.version,
            "parent": self.parent,
            "round": self.round,
            "sha3": self.sha3,
            "num_parameters": self.num_parameters,
            "metrics": dict(self.metrics),
            "created_at": self.created_at.isoformat(),
            "note": self.note,
        }


def _latest(session: Session) -> int | None:
    """Return the highest version number, or ``None`` if the registry is empty."""
    return session.scalar(select(func.max(ModelVersionRow.version)))


def _require(session: Session, version: int) -> ModelVersionRow:
    """Return the row of ``version`` or raise :class:`NotFoundError`."""
    row = session.get(ModelVersionRow, version)
    if row is None:
        latest = _latest(session)
        where = "the registry is empty" if latest is None else f"latest is {latest}"
        raise NotFoundError(f"model version {version} does not exist ({where})")
    return row


def _head_version(session: Session) -> int | None:
    """Return the version the newest head row points at, or ``None``."""
    return session.scalar(select(HeadRow.version).order_by(HeadRow.id.desc()).limit(1))


class ModelRegistry:
    """Numbered model versions in the database, their weights in a blob store.

    Parameters
    ----------
    db
        The database holding versions, heads and events.
    blobs
        The blob store holding the weights.
    """

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def commit(
        self,
        weights: Mapping[str, np.ndarray],
        *,
        parent: int | None,
        round: int | None,
        metrics: Mapping[str, float],
        now: datetime,
        actor: str = "coordinator",
        note: str = "",
    ) -> ModelVersion:
        """Durably add ``weights`` as the next version and make it the head.

        Parameters
        ----------
        weights
            The model's named tensors (stored as float32).
        parent
            The version these weights derive from (normally the current head), or
            ``None`` for a root such as the initial model.
        round
            The round number that produced the weights, or ``None``.
        metrics
            Finite validation metrics to keep with the version.
        now
            The commit time (timezone-aware).
        actor
            Who commits, for the head history and the event journal.
        note
            Free text kept with the version.

        Returns
        -------
        ModelVersion
            The new version: ``max + 1``, or 0 for the first one. It is durable (blob
            and database row both flushed to disk) when this returns.

        Raises
        ------
        NotFoundError
            If ``parent`` is given and does not exist.
        StorageError
            If the blob or the database cannot be written. Weights identical to an
            earlier version are a new version that shares that version's blob (a round
            whose updates cancel out is still a round in the lineage).
        PayloadError
            If a tensor contains NaN or Inf.
        ValueError
            If ``now`` is naive or a metric is not a finite number.
        """
        now = check_utc(now)
        clean_metrics = check_metrics(metrics)
        if parent is not None:
            with self._db.transaction() as session:
                _require(session, parent)
        num_parameters = int(sum(int(np.size(a)) for a in weights.values()))
        sha3 = self._blobs.put(weights)
        with self._db.transaction(write=True) as session:
            if parent is not None:
                _require(session, parent)
            latest = _latest(session)
            version = 0 if latest is None else latest + 1
            row = ModelVersionRow(
                version=version,
                parent=parent,
                round=round,
                sha3=sha3,
                num_parameters=num_parameters,
                metrics=clean_metrics,
                created_at=now,
                note=note,
            )
            session.add(row)
            session.flush()
            session.add(
                HeadRow(
                    version=version,
                    reason="initial" if version == 0 else "commit",
                    actor=actor,
                    created_at=now,
                )
            )
            event = EventRow(
                time=now,
                actor=actor,
                action="model.commit",
                resource=f"model/{version}",
                outcome="ok",
                details={
                    "version": version,
                    "parent": parent,
                    "round": round,
                    "sha3": sha3,
                    "num_parameters": num_parameters,
                },
            )
            session.add(event)
            session.flush()
            chain_events(session, self._db, [event])
        return ModelVersion.from_row(row)

    def head(self) -> ModelVersion | None:
        """Return the current head version, or ``None`` if nothing was committed."""
        with self._db.transaction() as session:
            version = _head_version(session)
            if version is None:
                return None
            return ModelVersion.from_row(_require(session, version))

    def get(self, version: int) -> ModelVersion:
        """Return the metadata of ``version``.

        Raises
        ------
        NotFoundError
            If it does not exist; the message names the latest version.
        """
        with self._db.transaction() as session:
            return ModelVersion.from_row(_require(session, version))

    def list(self) -> builtins.list[ModelVersion]:
        """Return every version, ordered by version number."""
        with self._db.transaction() as session:
            rows = session.scalars(select(ModelVersionRow).order_by(ModelVersionRow.version))
            return [ModelVersion.from_row(r) for r in rows]

    def head_history(self) -> builtins.list[tuple[int, str, str, datetime]]:
        """Return every head move, oldest first.

        Returns
        -------
        list of tuple
            ``(version, reason, actor, created_at)`` where reason is ``"initial"``,
            ``"commit"`` or ``"rollback"``.
        """
        with self._db.transaction() as session:
            rows = session.scalars(select(HeadRow).order_by(HeadRow.id))
            return [(r.version, r.reason, r.actor, r.created_at) for r in rows]

    def load(self, version: int, *, max_bytes: int = 2**34) -> Weights:
        """Return the verified weights of ``version``.

        Raises
        ------
        NotFoundError
            If the version or its blob does not exist.
        StorageError
            If the blob is corrupt (its weights do not hash to the recorded sha3).
        """
        return self._blobs.get(self.get(version).sha3, max_bytes=max_bytes)

    def rollback(self, version: int, *, actor: str, reason: str, now: datetime) -> ModelVersion:
        """Make an earlier (or any other) version the head again.

        Nothing is deleted. The blob of ``version`` is verified before the head moves,
        so the head never points at weights that cannot be loaded.

        Parameters
        ----------
        version
            The version to make the head.
        actor
            Who rolls back (recorded in the head history and the event journal).
        reason
            Why, in words (recorded in the event journal).
        now
            The time of the rollback (timezone-aware).

        Returns
        -------
        ModelVersion
            The new head.

        Raises
        ------
        NotFoundError
            If ``version`` (or its blob) does not exist.
        StorageError
            If ``version`` is already the head, or its blob is corrupt.
        ValueError
            If ``now`` is naive.
        """
        now = check_utc(now)
        target = self.get(version)
        self._blobs.get(target.sha3)
        with self._db.transaction(write=True) as session:
            _require(session, version)
            current = _head_version(session)
            if current == version:
                raise StorageError(
                    f"model version {version} is already the head; nothing to roll back",
                    hint="List versions with `fedshield models list` and pick another.",
                )
            session.add(HeadRow(version=version, reason="rollback", actor=actor, created_at=now))
            event = EventRow(
                time=now,
                actor=actor,
                action="model.rollback",
                resource=f"model/{version}",
                outcome="ok",
                details={"from": current, "to": version, "reason": reason},
            )
            session.add(event)
            session.flush()
            chain_events(session, self._db, [event])
        return target

    def export(self, version: int, dest: Path) -> Path:
        """Copy the verified weights of ``version`` out as a safetensors file.

        Parameters
        ----------
        version
            The version to export.
        dest
            A file path, or an existing directory, in which case the file is named
            ``model-v{version}-{sha3[:12]}.safetensors``.

        Returns
        -------
        Path
            The written safetensors file. Its metadata (version, parent, round, sha3,
            metrics, ...) is written next to it as ``<file>.json``.

        Raises
        ------
        NotFoundError
            If the version or its blob does not exist.
        StorageError
            If the blob is corrupt or the files cannot be written.
        """
        meta = self.get(version)
        data = self._blobs.get_bytes(meta.sha3)
        if dest.is_dir():
            dest = dest / f"model-v{version}-{meta.sha3[:12]}.safetensors"
        sidecar = dest.with_name(dest.name + ".json")
        document = {
            "format": "safetensors",
            "hash": "fedshield weights_sha3 v1 (SHA3-256 over names, dtypes, shapes, data)",
            **meta.to_json(),
        }
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_file(dest, data)
            _write_file(sidecar, (json.dumps(document, indent=2) + "\n").encode())
        except OSError as exc:
            raise StorageError(f"cannot export model version {version} to {dest}: {exc}") from exc
        return dest


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
