"""Entry signatures of a long audit log checked in worker processes, on every core.

Verifying a log costs one Ed25519 verification per entry (about 150 us on this
machine: it dominates), and the chain itself is one SHA3 pass that cannot be split.
:class:`SignaturePool` is the :class:`~fedshield.audit.verify.SignatureBatch` that
:meth:`~fedshield.storage.audit.AuditLog.verify` uses: the verifier streams the log
once, recomputing the chain and the tree heads in this process, and hands the
signatures over in chunks to worker processes that run
:func:`~fedshield.audit.verify.first_bad_signature`, so both run at once.

A log shorter than one chunk is checked in this process: starting workers would cost
more. Workers are forked when this process runs a single thread (instant: the code is
already imported) and spawned otherwise (forking a threaded process can deadlock the
child on a lock another thread held).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Final

from fedshield.audit.verify import first_bad_signature

__all__ = ["DEFAULT_CHUNK", "SignaturePool", "process_pool"]

DEFAULT_CHUNK: Final = 4096
"""Signatures per task: large enough to amortize the hand-over, small enough to balance."""


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Return ``workers`` worker processes: forked if this process runs one thread, else spawned.

    Forking is instant (the code is already imported); forking a threaded process can
    deadlock the child on a lock another thread held, so then they are spawned.
    """
    method = "fork" if threading.active_count() == 1 else "spawn"
    if method not in multiprocessing.get_all_start_methods():
        method = "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


class SignaturePool:
    """Check entry signatures in ``workers`` processes (see the module docstring).

    Parameters
    ----------
    public_key
        The trusted audit public key, 32 raw bytes.
    federation
        The log's federation.
    workers
        Worker processes (>= 1).
    chunk
        Signatures per task (>= 1).
    executor
        Worker processes to use (shared with other work; the caller shuts them down).
        ``None``: start ``workers`` of its own when first needed.
    """

    def __init__(
        self,
        public_key: bytes,
        federation: str,
        *,
        workers: int,
        chunk: int = DEFAULT_CHUNK,
        executor: ProcessPoolExecutor | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self._public_key = public_key
        self._federation = federation
        self._workers = workers
        self._chunk = chunk
        self._pool: ProcessPoolExecutor | None = executor
        self._owns_pool = executor is None
        self._buffer: list[tuple[int, bytes, bytes]] = []
        self._tasks: list[tuple[int, Future[int | None]]] = []
        self._queued = 0

    def add(self, seq: int, signature: bytes, entry_hash: bytes) -> None:
        """Queue the signature of entry ``seq``."""
        self._buffer.append((seq, signature, entry_hash))
        if len(self._buffer) >= self._chunk:
            self._submit()

    def _submit(self) -> None:
        if self._pool is None:
            self._pool = process_pool(self._workers)
        future = self._pool.submit(
            first_bad_signature, self._public_key, self._federation, self._buffer
        )
        self._tasks.append((self._queued, future))
        self._queued += len(self._buffer)
        self._buffer = []

    def first_bad(self) -> int | None:
        """Wait for every queued signature; return the position of the first bad one."""
        try:
            tail = self._queued
            local = (
                first_bad_signature(self._public_key, self._federation, self._buffer)
                if self._buffer
                else None
            )
            for start, future in self._tasks:
                bad = future.result()
                if bad is not None:
                    return start + bad
            return None if local is None else tail + local
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (idempotent); queued work not yet started is dropped."""
        if self._pool is not None and self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._buffer = []
        self._tasks = []
