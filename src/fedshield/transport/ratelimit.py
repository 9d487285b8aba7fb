"""A bounded limit on how many refusals per caller become audit entries.

Every refused request (an access denial, a refused envelope) is a durable, fsynced audit
entry. Unbounded, any TLS peer could make the coordinator write one per bad request:
a cheap way to fill the disk and to slow everyone's appends. :class:`RefusalLimiter`
decides, per refusal, whether it is audited on its own or only counted:

* Each actor (a certificate name, or the peer address when there is no certificate
  identity) has a token bucket of ``burst`` tokens refilled at ``per_minute``. A
  refusal that finds a token is audited as before (:attr:`Verdict.AUDIT`).
* A refusal that finds none opens a *window* for that actor and is reported once
  (:attr:`Verdict.LIMIT_FIRST`: the caller writes one marker entry, so the switch to
  summarizing is visible); every further refusal in the window is only counted
  (:attr:`Verdict.SUPPRESS`). While a window is open no refusal of that actor takes a
  token: the bucket refills, so after the window a caller that came back to its senses
  is audited one by one again.
* A window closes ``summary_s`` after it opened, or earlier once the actor has been
  quiet long enough to refill its whole bucket. :meth:`RefusalLimiter.due` returns a
  :class:`SuppressedSummary` (count, first/last time, the reason codes seen) for every
  closed window; :meth:`RefusalLimiter.drain` returns every open one (at shutdown).
  Counts are conserved: refusals audited one by one plus the counts of all summaries
  equal the refusals seen.

Memory is bounded by ``max_actors`` tracked actors (plus one shared bucket). At the cap,
a new actor is not tracked on its own: it shares the bucket of :data:`OVERFLOW_ACTOR`
with every other untracked actor, so minting identities or addresses cannot evade the
limit (together they get one budget), and it cannot push a tracked, limited actor out
either. A tracked actor is forgotten only when that loses nothing: its window is closed
and its bucket is full again (:meth:`RefusalLimiter.due` sweeps them).

Pure: no clock, no I/O. Times are parameters (``now_s``, seconds; any monotonic-enough
origin, the caller's choice). A clock that steps back is treated as no time passing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "OVERFLOW_ACTOR",
    "RefusalLimiter",
    "RefusalLimits",
    "SuppressedSummary",
    "Verdict",
]

OVERFLOW_ACTOR = "(untracked actors)"
"""The actor of the one bucket every actor past the ``max_actors`` cap shares."""
_MAX_REASONS = 16
_OTHER_REASON = "other"
_MAX_REASON_CHARS = 64


@dataclass(frozen=True)
class RefusalLimits:
    """How many refusals per actor are audited one by one.

    Parameters
    ----------
    per_minute : float
        Bucket refill rate, refusals per minute (> 0).
    burst : int
        Bucket size: refusals audited back to back before limiting (>= 1).
    summary_s : float
        Longest window before its summary is due, seconds (> 0).
    max_actors : int
        Most actors tracked on their own (>= 1); the rest share one bucket.
    """

    per_minute: float = 60.0
    burst: int = 60
    summary_s: float = 60.0
    max_actors: int = 4096

    def __post_init__(self) -> None:
        if not self.per_minute > 0:
            raise ValueError(f"per_minute must be > 0, got {self.per_minute!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst!r}")
        if not self.summary_s > 0:
            raise ValueError(f"summary_s must be > 0, got {self.summary_s!r}")
        if self.max_actors < 1:
            raise ValueError(f"max_actors must be >= 1, got {self.max_actors!r}")

    @property
    def refill_s(self) -> float:
        """Seconds for an empty bucket to fill up again."""
        return self.burst * 60.0 / self.per_minute


class Verdict(enum.Enum):
    """What to do with one refusal."""

    AUDIT = "audit"
    """Under the limit: audit it as always."""
    LIMIT_FIRST = "limit_first"
    """The first refusal over the limit in a window: write one marker, answer 429."""
    SUPPRESS = "suppress"
    """Over the limit: answer 429, only count it (it is in the window's summary)."""


@dataclass(frozen=True)
class SuppressedSummary:
    """The refusals of one actor that were counted instead of audited, in one window.

    ``reasons`` are ``(code, count)`` pairs, most frequent first; at most 16 distinct
    codes are kept, the rest are counted under ``"other"``.
    """

    actor: str
    count: int
    first_s: float
    last_s: float
    opened_s: float
    closed_s: float
    reasons: tuple[tuple[str, int], ...]


@dataclass
class _Bucket:
    tokens: float
    updated_s: float
    opened_s: float | None = None
    count: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def refill(self, now_s: float, limits: RefusalLimits) -> None:
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(float(limits.burst), self.tokens + elapsed * limits.per_minute / 60.0)
        self.updated_s = max(self.updated_s, now_s)

    def count_one(self, reason: str, now_s: float) -> None:
        if self.count == 0:
            self.first_s = now_s
        self.count += 1
        self.last_s = max(self.last_s, now_s)
        code = reason[:_MAX_REASON_CHARS] or _OTHER_REASON
        if code not in self.reasons and len(self.reasons) >= _MAX_REASONS:
            code = _OTHER_REASON
        self.reasons[code] = self.reasons.get(code, 0) + 1

    def close(self, actor: str, now_s: float) -> SuppressedSummary:
        assert self.opened_s is not None
        reasons = tuple(sorted(self.reasons.items(), key=lambda item: (-item[1], item[0])))
        summary = SuppressedSummary(
            actor=actor,
            count=self.count,
            first_s=self.first_s,
            last_s=self.last_s,
            opened_s=self.opened_s,
            closed_s=max(now_s, self.last_s),
            reasons=reasons,
        )
        self.opened_s = None
        self.count = 0
        self.reasons = {}
        return summary


class RefusalLimiter:
    """Per-actor token buckets over refusals (see the module docstring)."""

    def __init__(self, limits: RefusalLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, _Bucket] = {}
        self._overflow: _Bucket | None = None
        self.seen = 0
        """Refusals seen (every :meth:`admit` call)."""

    @property
    def tracked(self) -> int:
        """Actors tracked on their own (at most ``limits.max_actors``)."""
        return len(self._buckets)

    def key_of(self, actor: str) -> str:
        """Return the bucket ``actor`` is counted in: its own, or the shared one."""
        if actor in self._buckets or len(self._buckets) < self.limits.max_actors:
            return actor
        return OVERFLOW_ACTOR

    def admit(self, actor: str, reason: str, *, now_s: float) -> Verdict:
        """Decide about one refusal of ``actor`` (``reason``: a short code)."""
        self.seen += 1
        key = self.key_of(actor)
        bucket = self._bucket(key, now_s)
        bucket.refill(now_s, self.limits)
        if bucket.opened_s is not None:
            bucket.count_one(reason, now_s)
            return Verdict.SUPPRESS
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.AUDIT
        bucket.opened_s = now_s
        bucket.count_one(reason, now_s)
        return Verdict.LIMIT_FIRST

    def due(self, *, now_s: float) -> list[SuppressedSummary]:
        """Close every window that is over; forget actors that have nothing left.

        A window is over ``summary_s`` after it opened, or once its actor was quiet for
        as long as its bucket takes to fill.
        """
        limits = self.limits
        out: list[SuppressedSummary] = []
        idle: list[str] = []
        for actor, bucket in self._all():
            if bucket.opened_s is not None and (
                now_s - bucket.opened_s >= limits.summary_s
                or now_s - bucket.last_s >= limits.refill_s
            ):
                out.append(bucket.close(actor, now_s))
            if bucket.opened_s is None and actor != OVERFLOW_ACTOR:
                bucket.refill(now_s, limits)
                if bucket.tokens >= limits.burst:
                    idle.append(actor)
        for actor in idle:
            del self._buckets[actor]
        return out

    def drain(self, *, now_s: float) -> list[SuppressedSummary]:
        """Close every open window now (the coordinator is stopping)."""
        return [
            bucket.close(actor, now_s)
            for actor, bucket in self._all()
            if bucket.opened_s is not None
        ]

    def _all(self) -> list[tuple[str, _Bucket]]:
        pairs = list(self._buckets.items())
        if self._overflow is not None:
            pairs.append((OVERFLOW_ACTOR, self._overflow))
        return pairs

    def _bucket(self, key: str, now_s: float) -> _Bucket:
        if key == OVERFLOW_ACTOR:
            if self._overflow is None:
                self._overflow = _Bucket(tokens=float(self.limits.burst), updated_s=now_s)
            return self._overflow
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.limits.burst), updated_s=now_s)
        return bucket
