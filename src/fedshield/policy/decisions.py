"""Which access decisions go to the audit log.

Every decision *could* be an audit entry, but a participant long-polls ``/v1/task``
every few seconds for the whole federation: auditing each allowed poll would flood the
log with entries that say nothing new, and cost a durable write per request. The rule:

* every **deny** is recorded;
* every **allow** of an admin operation (:data:`~fedshield.policy.rbac.ADMIN_OPERATIONS`),
  of a read of the audit log, compliance evidence, the privacy ledger, the participant
  list or the config, and of a model read by a role other than ``participant``;
* every other allow (routine traffic: health, status, tasks, model downloads,
  updates and evaluations) is recorded **the first time** per ``(caller, endpoint,
  round)``: the log shows who used which endpoint in which round, not how often.

Denials are not deduplicated: a flood of denied requests is itself worth seeing.
Updates are separately recorded by the round (``round.contribution``).

This module is pure: it keeps the deduplication set and answers yes or no.
"""

from __future__ import annotations

import threading

from fedshield.policy.rbac import ADMIN_OPERATIONS, Decision

__all__ = ["ALWAYS_AUDITED_RESOURCES", "DecisionLog"]

ALWAYS_AUDITED_RESOURCES = frozenset(
    {"audit", "compliance", "privacy_ledger", "participants", "config"}
)
"""Resources whose every allowed access is audited."""


class DecisionLog:
    """Decide which access decisions are audit entries (see the module docstring).

    Only the current round's ``(caller, endpoint)`` pairs are remembered, so memory is
    bounded by callers x endpoints.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._round: int | None = None
        self._seen: set[tuple[str, str]] = set()

    def should_record(
        self, decision: Decision, *, caller: str, endpoint: str, round: int | None
    ) -> bool:
        """Return whether ``decision`` by ``caller`` at ``endpoint`` must be audited."""
        if not decision.allowed:
            return True
        permission = decision.permission
        if permission in ADMIN_OPERATIONS or permission.resource in ALWAYS_AUDITED_RESOURCES:
            return True
        if permission.resource == "models" and decision.role != "participant":
            return True
        with self._lock:
            if round != self._round:
                self._round = round
                self._seen = set()
            key = (caller, endpoint)
            if key in self._seen:
                return False
            self._seen.add(key)
            return True
