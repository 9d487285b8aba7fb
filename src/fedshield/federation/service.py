"""The networked coordinator's runtime: drives a :class:`Coordinator` from asyncio.

The service keeps what only the network shell needs: which participants are reachable
(they long-poll; a participant seen within the liveness window counts as available),
the waiters of pending long-polls, the encoded bytes of the distributed model, and the
end of the federation (every participant is told ``finished`` or ``failed`` before the
coordinator exits, or the grace period runs out).

The service holds the coordinator's signing key (the one its certificate binds): it
signs every reply (:mod:`fedshield.transport.envelope`) and, in every fit or evaluate
task, a :class:`~fedshield.transport.envelope.ModelStatement` over (federation, round,
model SHA3, model version), which a participant checks before it trains on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.config import FederationConfig
from fedshield.federation.coordinator import Coordinator, Report, utcnow
from fedshield.federation.round import FederationFailed, FederationFinished
from fedshield.federation.secure import SecureAggregation
from fedshield.policy import Policy
from fedshield.secagg import system_random
from fedshield.storage.enrollment import EnrollmentCache, Enrollments
from fedshield.storage.identity import RevocationCache, Revocations
from fedshield.tensors import encode
from fedshield.transport.envelope import ModelStatement, sign_model
from fedshield.transport.messages import LocalDP, TaskMessage

__all__ = ["CoordinatorService"]


class CoordinatorService:
    """Long-poll task distribution and the round driver loop."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        config: FederationConfig,
        signing_key: Ed25519PrivateKey,
        name: str = "coordinator",
        on_report: Callable[[Report], None] | None = None,
        tick_s: float = 0.2,
        end_grace_s: float = 30.0,
        policy: Policy | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.config = config
        #: Roles and permissions the API enforces (built-in roles unless given).
        self.policy = policy if policy is not None else Policy()
        #: The revocation list as every request sees it (re-read every
        #: ``access.revocation_refresh_s`` seconds at most).
        self.revocations = RevocationCache(
            Revocations(coordinator.db), refresh_s=config.access.revocation_refresh_s
        )
        self.revocations.refresh()
        self.signing_key = signing_key
        self.name = name
        self._model_signature: tuple[ModelStatement, str] | None = None
        self._listed = frozenset(config.participants.resolved_names())
        #: Participants enrolled since provisioning (``fedshield participants enroll``),
        #: re-read as often as the revocation list.
        self.enrollments = EnrollmentCache(
            Enrollments(coordinator.db), refresh_s=config.access.revocation_refresh_s
        )
        self.enrollments.refresh()
        self.on_report = on_report
        self.tick_s = tick_s
        self.end_grace_s = end_grace_s
        self.liveness_s = config.coordinator.long_poll_s + 30.0
        self._seen: dict[str, float] = {}
        self._polling: dict[str, int] = {}
        self._told_end: set[str] = set()
        self._recorded: dict[str, float] = {}
        self._end: TaskMessage | None = None
        self._end_since = 0.0
        self._changed: asyncio.Event | None = None
        self._model_cache: tuple[str, bytes] | None = None
        self._wake: asyncio.Event | None = None
        self.secure: SecureAggregation | None = None
        if config.secure_aggregation.enabled:
            self.secure = SecureAggregation(coordinator, rng=system_random)

    @property
    def names(self) -> frozenset[str]:
        """Every enrolled participant: the config's and those enrolled since (cached)."""
        return self._listed | self.enrollments.names

    def is_enrolled(self, name: str, *, refresh: bool = True) -> bool:
        """Whether ``name`` is enrolled; an unknown name re-reads the roster if due.

        With ``refresh`` (the default) this may read the database: call it off the
        event loop, or with ``refresh=False`` for the cached answer.
        """
        if name in self._listed or name in self.enrollments.names:
            return True
        if not refresh:
            return False
        self.enrollments.refresh()  # at most every refresh_s, whoever asks
        return name in self.enrollments.names

    @property
    def end(self) -> TaskMessage | None:
        """The final message once the federation finished or failed."""
        return self._end

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        event = self._event()
        self._changed = asyncio.Event()
        event.set()

    def touch(self, name: str) -> None:
        """Record that ``name`` is alive."""
        self._seen[name] = time.monotonic()

    def record_contact(self, name: str, *, organization: str, cert_sha256: str) -> None:
        """Persist a participant's contact; at most once a minute per participant."""
        now = time.monotonic()
        if now - self._recorded.get(name, -1e9) < 60.0:
            return
        self._recorded[name] = now
        record = functools.partial(
            self.coordinator.participant_seen,
            name,
            organization=organization,
            cert_sha256=cert_sha256,
            now=utcnow(),
        )
        # A durable SQLite write: off the event loop, so no request waits for it.
        asyncio.get_running_loop().run_in_executor(None, record)

    def available(self) -> set[str]:
        """Participants polling now or seen within the liveness window."""
        now = time.monotonic()
        # Copies first: status() calls this from a worker thread while the loop writes.
        seen, polling = dict(self._seen), dict(self._polling)
        alive = {n for n, t in seen.items() if now - t <= self.liveness_s}
        return (alive | {n for n, c in polling.items() if c > 0}) - self.revocations.names

    # -- revocation -------------------------------------------------------------------

    def revoked_seen(self, name: str) -> None:
        """Make sure the round knows of ``name``'s revocation (its request was refused)."""
        if name in self.names and name not in self.coordinator.revoked():
            self._revoke(name)
            self.wake()

    def apply_revocations(self, now: bool = False) -> None:
        """Take participants revoked since the last look out of the round.

        ``now`` forces a re-read of the list (this process just revoked someone);
        otherwise the list is re-read at most every ``access.revocation_refresh_s``.
        """
        if now:
            self.revocations.invalidate()
        self.revocations.refresh()
        self.enrollments.refresh()  # a name enrolled by another process, revoked since
        for name in sorted((self.revocations.names & self.names) - self.coordinator.revoked()):
            self._revoke(name)

    def _revoke(self, name: str) -> None:
        reason = next(
            (r.reason for r in reversed(self.revocations.records) if r.name == name),
            "revoked",
        )
        self.coordinator.revoke(name, reason)
        self._seen.pop(name, None)
        relay = self.secure.relay if self.secure is not None else None
        if relay is not None:
            # Out of the secure aggregation from the stage it owes now: a dropout.
            task = relay.task_for(name)
            if task is not None:
                relay.refuse(name, task[0], f"certificate revoked: {reason}")

    def open_round(self) -> int | None:
        """Return the number of the round the coordinator has open, or None."""
        return self.coordinator.open_round()

    def record_rejection(
        self, actor: str, resource: str, reason: str, details: dict[str, Any]
    ) -> None:
        """Audit a refused message (``message.rejected``); a durable write, so blocking."""
        self.coordinator.events.record(
            actor=actor,
            action="message.rejected",
            resource=resource,
            outcome="refused",
            details={**details, "reason": reason},
            now=utcnow(),
        )

    def model_signature(self, statement: ModelStatement) -> str:
        """Sign ``statement`` (the last signature is kept: every poll asks again)."""
        cached = self._model_signature
        if cached is not None and cached[0] == statement:
            return cached[1]
        signature = sign_model(statement, self.signing_key)
        self._model_signature = (statement, signature)
        return signature

    # -- long-poll ------------------------------------------------------------------

    def _task_now(self, name: str) -> TaskMessage | None:
        assignment = self.coordinator.assignment_for(name, utcnow())
        if assignment is not None:
            statement = ModelStatement(
                federation=assignment.federation,
                round=assignment.round,
                model_sha3=assignment.model.sha3,
                model_version=assignment.model.version,
            )
            return TaskMessage(
                kind=assignment.kind,
                federation=assignment.federation,
                round=assignment.round,
                attempt=assignment.attempt,
                model_version=assignment.model.version,
                model_sha3=assignment.model.sha3,
                model_signature=self.model_signature(statement),
                deadline=assignment.deadline,
                task=self.config.task,
                secure_aggregation=self.secure is not None and assignment.kind == "fit",
                local_dp=(
                    LocalDP(
                        clip_norm=assignment.local_dp[0],
                        noise_multiplier=assignment.local_dp[1],
                    )
                    if assignment.local_dp is not None
                    else None
                ),
            )
        secure = self.secure.task_for(name) if self.secure is not None else None
        if secure is not None:
            round_number, attempt, stage, payload = secure
            return TaskMessage(
                kind="secagg",
                federation=self.config.federation.name,
                round=round_number,
                attempt=attempt,
                stage=stage,
                secagg=payload,
            )
        if self._end is not None:
            self._told_end.add(name)
            return self._end
        return None

    async def next_task(self, name: str, *, wait_s: float) -> TaskMessage | None:
        """Wait up to ``wait_s`` for work for ``name``; None if there is none yet."""
        self.touch(name)
        self._polling[name] = self._polling.get(name, 0) + 1
        try:
            deadline = time.monotonic() + wait_s
            while True:
                if name in self.revocations.names:
                    return None  # revoked while it waited: its next request is refused
                task = self._task_now(name)
                if task is not None:
                    return task
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._event().wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
        finally:
            self._polling[name] -= 1
            self.touch(name)

    def model_bytes(self, sha3: str) -> bytes | None:
        """Return the safetensors encoding of the distributed model, if ``sha3`` names it."""
        cached = self._model_cache
        if cached is not None and cached[0] == sha3:
            return cached[1]
        weights = self.coordinator.weights_for(sha3)
        if weights is None:
            return None
        data = encode(weights)
        self._model_cache = (sha3, data)
        return data

    # -- driver ---------------------------------------------------------------------

    def wake(self) -> None:
        """Make the driver step now (a result arrived), instead of at its next tick."""
        if self._wake is not None:
            self._wake.set()

    async def drive(self, should_exit: Callable[[], Any]) -> None:
        """Tick the coordinator until the federation ends and everyone was told.

        The driver steps when a result arrives (:meth:`wake`), again at once after
        anything happened (a commit may open the next round), and otherwise every
        ``tick_s`` for deadlines and joins.
        """
        self._wake = asyncio.Event()
        while True:
            # A revocation another process wrote (the CLI) reaches the round here too.
            await asyncio.to_thread(self.apply_revocations)
            reports = await asyncio.to_thread(self.coordinator.step, utcnow(), self.available())
            for report in reports:
                if self.on_report is not None:
                    self.on_report(report)
                if isinstance(report, FederationFinished):
                    self._set_end(
                        TaskMessage(kind="finished", federation=self.config.federation.name)
                    )
                elif isinstance(report, FederationFailed):
                    self._set_end(
                        TaskMessage(
                            kind="failed",
                            federation=self.config.federation.name,
                            reason=report.reason,
                        )
                    )
            moved = False
            if self.secure is not None:
                moved = await asyncio.to_thread(self.secure.step, utcnow())
            if reports or moved:
                self._notify()
            if self._end is not None:
                # Every enrolled site should hear the end, also one that is reconnecting
                # after a coordinator restart; a site that is gone costs end_grace_s.
                everyone_told = self._told_end >= self.names
                if everyone_told or time.monotonic() - self._end_since > self.end_grace_s:
                    should_exit()
                    return
            if reports or moved:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)
            self._wake.clear()

    def _set_end(self, message: TaskMessage) -> None:
        if self._end is None:
            self._end = message
            self._end_since = time.monotonic()

    def status(self) -> dict[str, Any]:
        """Return the coordinator's status plus who is reachable."""
        status = self.coordinator.status()
        status["available"] = sorted(self.available())
        status["ended"] = self._end.kind if self._end else None
        return status
