"""A site's privacy ledger on disk, and the DP-SGD settings the site trains under.

:class:`PrivacyLedgerFile` keeps the entries of :mod:`fedshield.privacy.ledger` in a
JSON-lines file, one entry per trained round attempt, appended and fsynced *before* the
update it accounts for leaves the site (the pattern of
:class:`~fedshield.federation.secure_agent.SpentLedger`). A networked participant keeps
it in its kit (``<kit>/privacy-ledger.jsonl``), the simulation in
``<workdir>/privacy/<site>.jsonl``; both read it back on restart, so a site never forgets
privacy it spent. Loading is strict: a line that is not a complete, valid entry is an
error that names the file and the line, never skipped (skipping would forget spending).

:class:`SitePrivacy` is one site's ``[privacy]`` settings resolved against its data: the
budget, the sampling rate (default ``batch_size / records``), the noise multiplier
(given, or calibrated so that ``planned_rounds`` rounds meet the budget, again on what
is left if a retried round spent more than planned) and the ledger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedshield.config import PrivacyConfig
from fedshield.errors import ConfigError, StorageError
from fedshield.privacy import ledger as privacy_ledger
from fedshield.privacy.ledger import LedgerEntry, PrivacyBudget
from fedshield.secagg.randomness import SecureRandom, system_random
from fedshield.training.dpsgd import DPSGDConfig
from fedshield.training.local import TrainConfig

__all__ = ["LEDGER_FILE", "MAX_NOISE_GROWTH", "PrivacyLedgerFile", "SitePrivacy"]

LEDGER_FILE = "privacy-ledger.jsonl"
"""In a participant kit: the site's privacy ledger."""

MAX_NOISE_GROWTH = 2.0
"""A site recalibrates its noise (after a retried round) to at most this many times the
planned multiplier; beyond that its updates would be mostly noise, and it refuses."""

_LEDGER_HINT = (
    "The privacy ledger records the privacy this site already spent: restore the file "
    "from a backup rather than edit it, and never delete lines (that forgets spending). "
    "Only a last line cut short by a crash may be removed: its update never left the site."
)


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Silence dp-accounting's RDP warnings (excluded orders keep the bound valid)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys}")
    return dict(pairs)


class PrivacyLedgerFile:
    """A site's privacy ledger entries in a JSON-lines file (append-only, fsynced).

    Parameters
    ----------
    path : Path
        The file; it need not exist yet (an empty ledger). Its directory is made on the
        first append.

    Raises
    ------
    StorageError
        If the file cannot be read, or a line is not a complete, valid ledger entry.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[LedgerEntry] = self._load()

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """The entries in the order they were recorded."""
        return tuple(self._entries)

    def _load(self) -> list[LedgerEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(
                f"cannot read the privacy ledger {self.path}: {exc.strerror}", hint=_LEDGER_HINT
            ) from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(
                f"the privacy ledger {self.path} is not UTF-8 text: it is corrupt",
                hint=_LEDGER_HINT,
            ) from exc
        if text and not text.endswith("\n"):
            count = text.count("\n") + 1
            raise StorageError(
                f"the privacy ledger {self.path} is corrupt: line {count} is incomplete "
                "(a write was cut short)",
                hint=_LEDGER_HINT,
            )
        entries: list[LedgerEntry] = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                record = json.loads(
                    line, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
                )
                entries.append(LedgerEntry.from_record(record))
            except (ValueError, ConfigError) as exc:
                reason = exc.message if isinstance(exc, ConfigError) else str(exc)
                raise StorageError(
                    f"the privacy ledger {self.path} is corrupt at line {number}: {reason}",
                    hint=_LEDGER_HINT,
                ) from exc
        return entries

    def append(self, entry: LedgerEntry) -> None:
        """Record ``entry`` durably (written and fsynced) before anything else happens.

        Raises
        ------
        StorageError
            If the file cannot be written; the entry is then not recorded, and the
            update it accounts for must not leave the site.
        """
        if not isinstance(entry, LedgerEntry):
            raise ConfigError(f"a ledger entry must be a LedgerEntry, got {type(entry).__name__}")
        line = json.dumps(entry.to_record(), separators=(",", ":"), allow_nan=False) + "\n"
        data = line.encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(0, f"short write ({written} of {len(data)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # make the new file's directory entry durable too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise StorageError(
                f"cannot write the privacy ledger {self.path}: {exc.strerror or exc}",
                hint="The update stays at this site; fix the disk or permissions and retry.",
            ) from exc
        self._entries.append(entry)


class SitePrivacy:
    """One site's DP-SGD settings, budget and ledger (``mode = "sample"``).

    Parameters
    ----------
    config : PrivacyConfig
        The site's own ``[privacy]`` table (``mode`` must be ``"sample"``).
    ledger : PrivacyLedgerFile
        Where the site's trained rounds are recorded.
    batch_size : int
        The site's batch size: the default sampling rate is ``batch_size / records``.
    planned_rounds : int or None
        Rounds the budget is planned for when the noise multiplier is calibrated; the
        config's ``planned_rounds`` wins when set.
    rng : callable returning SecureRandom
        The source of DP-SGD's sampling and noise for one round (``system_random``;
        tests may pass ``deterministic_random``).

    Raises
    ------
    ConfigError
        If DP is off in ``config``, or the noise multiplier must be calibrated and no
        number of rounds to plan for is known.
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        ledger: PrivacyLedgerFile,
        batch_size: int,
        planned_rounds: int | None,
        rng: Callable[[], SecureRandom] = system_random,
    ) -> None:
        if not config.enabled:
            raise ConfigError("SitePrivacy is for privacy.mode = 'sample'; DP is off here")
        planned = config.planned_rounds or planned_rounds
        if config.noise_multiplier is None and planned is None:
            raise ConfigError(
                "privacy.noise_multiplier is not set and there is no number of rounds to "
                "calibrate it for",
                hint="Set [privacy] planned_rounds (the federation's rounds.count) or "
                "noise_multiplier in participant.toml.",
            )
        self.config = config
        self.budget = PrivacyBudget(
            target_epsilon=config.target_epsilon,
            target_delta=config.target_delta,
            accountant=config.accountant,
        )
        self.ledger = ledger
        self.batch_size = batch_size
        self.planned_rounds = planned
        self.rng = rng
        self._plan: dict[tuple[float, int], float] = {}
        self._calibrated: dict[tuple[float, int], float] = {}

    def check_records(self, records: int) -> None:
        """Refuse a delta that is not below ``1 / records`` at this site.

        A mechanism that publishes one random record in full is ``(0, 1/N)``-DP: a
        delta of ``1/N`` or more allows exactly that.
        """
        delta = self.budget.target_delta
        if records < 1:
            raise ConfigError("this site has no training records")
        if delta >= 1.0 / records:
            suggestion = 10.0 ** -(math.ceil(math.log10(records)) + 1)
            raise ConfigError(
                f"privacy.target_delta {delta:g} is not below 1/records = 1/{records} at "
                "this site: a delta that large allows releasing a record outright",
                hint=f"Set [privacy] target_delta well below 1/{records}, e.g. {suggestion:g}.",
            )

    def sampling_rate(self, records: int) -> float:
        """Return the Poisson sampling rate: the configured one, or ``batch_size / records``."""
        if self.config.sampling_rate is not None:
            return self.config.sampling_rate
        return min(1.0, self.batch_size / records)

    def dp_config(self, train: TrainConfig, *, records: int, round: int = 1) -> DPSGDConfig:
        """Return the DP-SGD settings of fit round ``round`` at this site.

        A configured ``noise_multiplier`` is used as is. Otherwise the site plans its
        budget over ``planned_rounds`` rounds: the multiplier is calibrated once so that
        that many rounds spend the budget, and kept while the rounds still ahead
        (``planned_rounds - round + 1``) fit at it. When they no longer do (a retried
        round cost one round more than planned) it is calibrated again on what the
        ledger has left, so the planned rounds still fit, with a little more noise (at
        most :data:`MAX_NOISE_GROWTH` times the plan's). Past the planned rounds, or
        when that is not enough, nothing is recalibrated: the ledger check decides.
        """
        self.check_records(records)
        q = self.sampling_rate(records)
        sigma = self.config.noise_multiplier
        if sigma is None:
            probe = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sampling_rate=q)
            sigma = self._planned_noise(q, probe.steps(train), round)
        return DPSGDConfig(
            noise_multiplier=sigma, max_grad_norm=self.config.max_grad_norm, sampling_rate=q
        )

    def _planned_noise(self, q: float, steps: int, round: int) -> float:
        assert self.planned_rounds is not None
        key = (q, steps)
        ahead = self.planned_rounds - round + 1
        entries = self.ledger.entries
        with _quiet_accountant():
            if key not in self._plan:  # planned_rounds rounds from nothing spent
                self._plan[key] = privacy_ledger.calibrate_remaining(
                    self.budget, [], sampling_rate=q, steps=steps, rounds=self.planned_rounds
                )
            plan = self._plan[key]
            sigma = self._calibrated.get(key, plan)
            if ahead >= 1 and not self._fits(entries, sigma, q, ahead * steps):
                # Recalibrate only if the rounds ahead fit below the cap; otherwise the
                # updates would be mostly noise: keep sigma, and the ledger check
                # refuses the round with the numbers.
                if self._fits(entries, MAX_NOISE_GROWTH * plan, q, ahead * steps):
                    sigma = privacy_ledger.calibrate_remaining(
                        self.budget, entries, sampling_rate=q, steps=steps, rounds=ahead
                    )
        self._calibrated[key] = sigma
        return sigma

    def _fits(self, entries: Sequence[LedgerEntry], sigma: float, q: float, steps: int) -> bool:
        ahead = LedgerEntry(
            round=1, attempt=1, noise_multiplier=sigma, sampling_rate=q, steps=steps
        )
        return privacy_ledger.spent(self.budget, [*entries, ahead]) <= self.budget.target_epsilon

    def spent(self) -> float:
        """Epsilon spent so far at the budget's delta, recomputed from the ledger."""
        with _quiet_accountant():
            return privacy_ledger.spent(self.budget, self.ledger.entries)

    def admit(self, entry: LedgerEntry) -> float:
        """Return the epsilon after ``entry``, or raise BudgetExhaustedError (see check)."""
        with _quiet_accountant():
            return privacy_ledger.check(self.budget, self.ledger.entries, entry)

    def record(self, entry: LedgerEntry) -> None:
        """Append ``entry`` to the ledger durably (call before the update leaves)."""
        self.ledger.append(entry)
