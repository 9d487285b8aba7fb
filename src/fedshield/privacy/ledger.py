"""A site's privacy ledger: the DP-SGD rounds it trained and the budget they may not exceed.

Sample-level DP (Abadi et al. 2016, "Deep Learning with Differential Privacy"): every
round a participant trains with DP-SGD (:mod:`fedshield.training.dpsgd`) is ``steps``
compositions of the Poisson-subsampled Gaussian mechanism with noise multiplier
``sigma`` and sampling rate ``q``, over the site's own records. The ledger is the list
of those rounds, one :class:`LedgerEntry` per trained round attempt, in the order they
were trained. Epsilon is never kept: :func:`spent` recomputes it from the entries with
the accountant every time, and :func:`check` refuses a round whose entry would take the
total over the :class:`PrivacyBudget` *before* anything is computed on the data.

Entries with the same ``(sigma, q)`` are merged into one self-composition before the
accountant sees them (composition commutes), so ``R`` identical rounds of ``S`` steps
cost exactly ``epsilon(rounds=R * S)`` and the PLD accountant's work grows with the
number of distinct settings, not of rounds. Mixed settings are composed in turn
(:func:`~fedshield.privacy.accounting.compose`). :func:`calibrate_remaining` finds the
noise multiplier that spends what is left of a budget over the rounds still planned
(after a retried round, say, cost one round more than planned).

The budget is the site's, not the coordinator's: a site sets it in its own config and
no message from the coordinator changes it. Pure: no I/O, clocks or randomness; the
federation layer stores the entries (``fedshield.federation.privacy_ledger``).

What misuse breaks: dropping an entry (or a ledger file) forgets privacy already spent,
and the site will then spend more than it believes. Every entry must be durable before
the update it accounts for leaves the site.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import dp_accounting

from fedshield.errors import BudgetExhaustedError, ConfigError
from fedshield.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    calibrate_event,
    compose,
    dp_event,
    epsilon_of,
)

__all__ = [
    "LedgerEntry",
    "PrivacyBudget",
    "calibrate_remaining",
    "check",
    "ledger_event",
    "spent",
]


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {number!r}")
    return number


@dataclass(frozen=True)
class PrivacyBudget:
    """What a site allows itself to spend over the whole federation.

    Attributes
    ----------
    target_epsilon : float
        The epsilon the site never exceeds (> 0).
    target_delta : float
        The delta every epsilon is computed at, in ``(0, 1)``; well below ``1 / N`` for
        a site of ``N`` records (the site checks that once it knows ``N``).
    accountant : {"pld", "rdp"}
        How epsilon is computed from the entries (PLD is tight, RDP an upper bound).
    """

    target_epsilon: float
    target_delta: float
    accountant: Accountant = "pld"

    def __post_init__(self) -> None:
        """Validate every field; raise ConfigError naming the first bad one."""
        eps = _finite("target_epsilon", self.target_epsilon)
        if eps <= 0:
            raise ConfigError(f"target_epsilon must be > 0, got {eps!r}")
        delta = _finite("target_delta", self.target_delta)
        if not 0 < delta < 1:
            raise ConfigError(f"target_delta must be in (0, 1), got {delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")


@dataclass(frozen=True)
class LedgerEntry:
    """One trained round attempt: ``steps`` DP-SGD steps at ``(noise_multiplier, q)``.

    Attributes
    ----------
    round, attempt : int
        The fit round and attempt the update was trained for (>= 1 each). A round
        trained twice (a retry, or a restart before the upload) has two entries: each
        training run released, or could have released, a fresh noisy update.
    noise_multiplier : float
        ``sigma`` (> 0): the Gaussian noise std over the clip norm.
    sampling_rate : float
        ``q`` in ``(0, 1]``: each record's chance to be in a step's batch (Poisson).
    steps : int
        Noisy steps taken (>= 1): the compositions of the sampled Gaussian mechanism.
    """

    VERSION: ClassVar[int] = 1
    FIELDS: ClassVar[tuple[str, ...]] = (
        "v",
        "round",
        "attempt",
        "noise_multiplier",
        "sampling_rate",
        "steps",
    )

    round: int
    attempt: int
    noise_multiplier: float
    sampling_rate: float
    steps: int

    def __post_init__(self) -> None:
        """Validate every field; raise ConfigError naming the first bad one."""
        _whole("round", self.round)
        _whole("attempt", self.attempt)
        sigma = _finite("noise_multiplier", self.noise_multiplier)
        if sigma <= 0:
            raise ConfigError(f"noise_multiplier must be > 0, got {sigma!r}")
        q = _finite("sampling_rate", self.sampling_rate)
        if not 0 < q <= 1:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {q!r}")
        _whole("steps", self.steps)

    def event(self) -> dp_accounting.DpEvent:
        """Return this entry as a dp-accounting event (``steps`` sampled Gaussians)."""
        return dp_event(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            rounds=self.steps,
        )

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-able record of this entry (with its format version ``v``)."""
        return {
            "v": self.VERSION,
            "round": self.round,
            "attempt": self.attempt,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LedgerEntry:
        """Parse a record written by :meth:`to_record`, strictly.

        Raises
        ------
        ConfigError
            If a key is missing or unknown, the version is not 1, or a value is out of
            range (an integer field given as a float, a bool for a number...).
        """
        if not isinstance(record, Mapping):
            raise ConfigError(f"a ledger entry must be an object, got {type(record).__name__}")
        keys = set(record)
        if keys != set(cls.FIELDS):
            missing = sorted(set(cls.FIELDS) - keys)
            unknown = sorted(keys - set(cls.FIELDS))
            raise ConfigError(f"ledger entry keys are wrong: missing {missing}, unknown {unknown}")
        version = record["v"]
        if isinstance(version, bool) or version != cls.VERSION:
            raise ConfigError(f"ledger entry version must be {cls.VERSION}, got {version!r}")
        for name in ("noise_multiplier", "sampling_rate"):
            if not isinstance(record[name], float):
                raise ConfigError(f"{name} must be written as a float, got {record[name]!r}")
        return cls(
            round=record["round"],
            attempt=record["attempt"],
            noise_multiplier=record["noise_multiplier"],
            sampling_rate=record["sampling_rate"],
            steps=record["steps"],
        )


def ledger_event(entries: Sequence[LedgerEntry]) -> dp_accounting.DpEvent:
    """Return the composition of every entry as one dp-accounting event.

    Entries with equal ``(noise_multiplier, sampling_rate)`` are merged into one
    self-composition of their summed steps, in order of first appearance.
    """
    steps: dict[tuple[float, float], int] = {}
    for entry in entries:
        if not isinstance(entry, LedgerEntry):
            raise ConfigError(f"ledger entries must be LedgerEntry, got {type(entry).__name__}")
        key = (float(entry.noise_multiplier), float(entry.sampling_rate))
        steps[key] = steps.get(key, 0) + entry.steps
    return compose(
        [dp_event(noise_multiplier=z, sampling_rate=q, rounds=n) for (z, q), n in steps.items()]
    )


def spent(budget: PrivacyBudget, entries: Sequence[LedgerEntry]) -> float:
    """Return the epsilon at ``budget.target_delta`` that ``entries`` spent, recomputed."""
    if not entries:
        return 0.0
    return epsilon_of(
        ledger_event(entries), delta=budget.target_delta, accountant=budget.accountant
    )


def check(budget: PrivacyBudget, entries: Sequence[LedgerEntry], next_entry: LedgerEntry) -> float:
    """Return the epsilon spent once ``next_entry`` is trained, or refuse it.

    Call this before training: a refused round computes nothing on the data.

    Raises
    ------
    BudgetExhaustedError
        If ``entries`` plus ``next_entry`` exceed ``budget.target_epsilon``. The error
        carries what was spent, what the round would bring it to and the budget.
    """
    after = spent(budget, [*entries, next_entry])
    if after <= budget.target_epsilon:
        return after
    before = spent(budget, entries)
    raise BudgetExhaustedError(
        f"privacy budget exhausted: round {next_entry.round} (attempt {next_entry.attempt}) "
        f"would take this site from epsilon {before:.4g} (spent in {len(entries)} "
        f"round(s)) to {after:.4g}, over its budget of {budget.target_epsilon:g} at "
        f"delta {budget.target_delta:g}; the round is {next_entry.steps} DP-SGD steps at "
        f"noise multiplier {next_entry.noise_multiplier:.4g}, sampling rate "
        f"{next_entry.sampling_rate:.4g}",
        spent_epsilon=before,
        epsilon_after=after,
        target_epsilon=budget.target_epsilon,
    )


def calibrate_remaining(
    budget: PrivacyBudget,
    entries: Sequence[LedgerEntry],
    *,
    sampling_rate: float,
    steps: int,
    rounds: int,
) -> float:
    """Return the smallest noise multiplier that leaves room for ``rounds`` more rounds.

    The rounds are ``steps`` steps each at ``sampling_rate``; with ``entries`` before
    them they stay within the budget. With no entries this is
    :func:`~fedshield.privacy.accounting.calibrate` for ``rounds * steps`` steps. The
    planned rounds are accounted exactly as the ledger will hold them, so recording them
    at the returned multiplier spends at most the budget.

    Raises
    ------
    BudgetExhaustedError
        If the entries alone already spend the budget: no noise makes a round fit.
    """
    rounds = _whole("rounds", rounds)
    steps = _whole("steps", steps)
    before = spent(budget, entries)
    if before >= budget.target_epsilon:
        raise BudgetExhaustedError(
            f"privacy budget exhausted: this site has spent epsilon {before:.4g} of its "
            f"budget {budget.target_epsilon:g} at delta {budget.target_delta:g} in "
            f"{len(entries)} round(s); no amount of noise makes another round fit",
            spent_epsilon=before,
            epsilon_after=before,
            target_epsilon=budget.target_epsilon,
        )
    prior = list(entries)

    def event_of(z: float) -> dp_accounting.DpEvent:
        planned = LedgerEntry(
            round=1,
            attempt=1,
            noise_multiplier=z,
            sampling_rate=sampling_rate,
            steps=rounds * steps,
        )
        return ledger_event([*prior, planned])

    return calibrate_event(
        event_of,
        target_epsilon=budget.target_epsilon,
        target_delta=budget.target_delta,
        accountant=budget.accountant,
    )
