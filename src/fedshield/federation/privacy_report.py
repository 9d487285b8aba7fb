"""The privacy report of a workdir: epsilon spent per round per participant.

``fedshield privacy report --workdir DIR`` reads what a coordinator's (or a
simulation's) workdir recorded and shows, for every round, the epsilon each participant
had spent after it:

* **sample-level DP** (DP-SGD at each site): what each site reported with its committed
  fit rounds (the round log's ``<site>.epsilon``, ``<site>.delta``,
  ``<site>.target_epsilon``, ``<site>.dp``). Where the site's ledger file is in the
  workdir (a simulation's ``privacy/<site>.jsonl``) epsilon is recomputed from its
  entries with :mod:`fedshield.privacy.ledger` and checked against the report; a round
  the ledger holds but that did not count (the site trained, then the attempt failed or
  its update was lost) is shown from the ledger, marked, since that privacy is spent
  too. Sample-level events the coordinator recorded for a site (scope: the site's name)
  are the last resort.
* **participant-level DP** (DP-FedAvg run by the coordinator): the cumulative epsilon
  after each round, recomputed from the :class:`~fedshield.storage.PrivacyEvents` of
  scope ``"participants"``.

Epsilon is never summed over rounds: it is recomputed from events by the accountant.
:func:`load_report` does the reading; :func:`build_report` is the pure part;
:func:`table` and :func:`plot_report` present it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from fedshield.errors import ConfigError, NotFoundError
from fedshield.federation.privacy_ledger import PrivacyLedgerFile
from fedshield.privacy.accounting import ACCOUNTANTS, Accountant, epsilon_of
from fedshield.privacy.ledger import LedgerEntry, ledger_event
from fedshield.storage.db import Database
from fedshield.storage.privacy import (
    PARTICIPANTS,
    PrivacyEventRecord,
    PrivacyEvents,
    cumulative_epsilon,
)
from fedshield.storage.records import RoundLog, RoundRecord

__all__ = [
    "DEFAULT_PLOT",
    "PrivacyPoint",
    "PrivacyReport",
    "build_report",
    "load_report",
    "plot_report",
    "table",
]

DEFAULT_PLOT: Final = "privacy-report.png"
"""The plot's file name in the workdir when no path is given."""

Level = Literal["sample", "participant"]
Source = Literal["round log", "site ledger", "database"]

NOT_TAKEN: Final = "—"
"""A table cell for a participant that spent nothing in that round."""

_AGREE = 1e-6  # relative difference below which a recomputed epsilon agrees
_NO_DB_HINT = "Pass the coordinator's or the simulation's --workdir (where fedshield.db is)."


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


@dataclass(frozen=True)
class PrivacyPoint:
    """What one participant had spent after one round.

    Attributes
    ----------
    round : int
        The fit round.
    participant : str
        A site's name, or ``"participants"`` for participant-level DP (every
        participant's guarantee).
    level : {"sample", "participant"}
        Sample-level (a site's DP-SGD) or participant-level (DP-FedAvg).
    dp : bool
        False if the site trained this round without DP (then ``epsilon`` is ``None``).
    epsilon : float or None
        Epsilon spent in total after this round, at ``delta``.
    delta : float or None
        The delta of ``epsilon``.
    budget : float or None
        The target epsilon, if known.
    source : {"round log", "site ledger", "database"}
        Where ``epsilon`` comes from: as the site reported it with a committed round,
        recomputed from the site's ledger file, or recomputed from the database's
        privacy events.
    recomputed : float or None
        The same epsilon recomputed from events (the site's ledger or the database),
        when they are available: equal to ``epsilon`` unless a note says otherwise.
    """

    round: int
    participant: str
    level: Level
    dp: bool
    epsilon: float | None
    delta: float | None
    budget: float | None
    source: Source
    recomputed: float | None

    def to_json(self) -> dict[str, Any]:
        """Return this point as JSON-ready data."""
        return {
            "round": self.round,
            "participant": self.participant,
            "level": self.level,
            "dp": self.dp,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "budget": self.budget,
            "source": self.source,
            "recomputed": self.recomputed,
        }


@dataclass(frozen=True)
class PrivacyReport:
    """Epsilon per round per participant, and what was checked on the way.

    Attributes
    ----------
    workdir : str
        The workdir it was read from.
    rounds : tuple of int
        Every round something was spent in, increasing.
    participants : tuple of str
        The columns: sites in natural order, then ``"participants"`` if the coordinator
        ran participant-level DP.
    points : tuple of PrivacyPoint
        By round, then column.
    accountants : dict of str to str
        The accountant epsilon was recomputed with, per participant (where it was).
    notes : tuple of str
        Disagreements and sources that could not be used, in plain words.
    """

    workdir: str
    rounds: tuple[int, ...]
    participants: tuple[str, ...]
    points: tuple[PrivacyPoint, ...]
    accountants: dict[str, str]
    notes: tuple[str, ...]

    def point(self, round: int, participant: str) -> PrivacyPoint | None:
        """Return the point of ``participant`` after ``round``, or ``None``."""
        for p in self.points:
            if p.round == round and p.participant == participant:
                return p
        return None

    def series(self, participant: str) -> list[PrivacyPoint]:
        """Return ``participant``'s DP points (with an epsilon), by round."""
        return [
            p
            for p in self.points
            if p.participant == participant and p.dp and p.epsilon is not None
        ]

    def latest(self, participant: str) -> PrivacyPoint | None:
        """Return ``participant``'s last DP point, or ``None``."""
        series = self.series(participant)
        return series[-1] if series else None

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data (``entries``: one per round and participant)."""
        summary: dict[str, Any] = {}
        for name in self.participants:
            mine = [p for p in self.points if p.participant == name]
            last = self.latest(name)
            summary[name] = {
                "level": mine[0].level,
                "dp": any(p.dp for p in mine),
                "epsilon": None if last is None else last.epsilon,
                "delta": None if last is None else last.delta,
                "budget": None if last is None else last.budget,
                "accountant": self.accountants.get(name),
                "rounds": len(mine),
            }
        return {
            "workdir": self.workdir,
            "rounds": list(self.rounds),
            "participants": summary,
            "entries": [p.to_json() for p in self.points],
            "notes": list(self.notes),
        }


# -- building ------------------------------------------------------------------------------


def _natural(name: str) -> list[Any]:
    """Sort key: ``site-2`` before ``site-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _agree(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_AGREE, abs_tol=1e-12)


@dataclass(frozen=True)
class _Reported:
    dp: bool
    epsilon: float | None
    delta: float | None
    budget: float | None


def _reported(rounds: Sequence[RoundRecord]) -> dict[str, dict[int, _Reported]]:
    """Per site, per committed fit round: what the site reported with its update."""
    out: dict[str, dict[int, _Reported]] = {}
    for record in rounds:
        if record.kind != "fit" or record.status != "committed":
            continue
        for site in record.answered:
            dp = record.metrics.get(f"{site}.dp")
            if dp is None:
                continue
            out.setdefault(site, {})[record.number] = _Reported(
                dp=bool(dp),
                epsilon=record.metrics.get(f"{site}.epsilon"),
                delta=record.metrics.get(f"{site}.delta"),
                budget=record.metrics.get(f"{site}.target_epsilon"),
            )
    return out


class _Epsilons:
    """Epsilon of ledger prefixes; each distinct composition is computed once.

    Sites of a simulation often hold identical ledgers: the accountant (the slow part)
    then runs once per distinct composition, not once per site.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float, str], float] = {}

    def of(self, entries: Sequence[LedgerEntry], *, delta: float, accountant: Accountant) -> float:
        event = ledger_event(entries)
        key = (repr(event), delta, accountant)
        if key not in self._cache:
            self._cache[key] = epsilon_of(event, delta=delta, accountant=accountant)
        return self._cache[key]

    def after_rounds(
        self, entries: Sequence[LedgerEntry], *, delta: float, accountant: Accountant
    ) -> dict[int, float]:
        """Epsilon after each round's last entry (every attempt before it counts)."""
        last = _last_index(entries)
        return {
            number: self.of(entries[: last[number] + 1], delta=delta, accountant=accountant)
            for number in sorted(last)
        }


def _last_index(entries: Sequence[LedgerEntry]) -> dict[int, int]:
    last: dict[int, int] = {}
    for index, entry in enumerate(entries):
        last[entry.round] = index
    return last


def _site_ledger(
    site: str,
    entries: Sequence[LedgerEntry],
    reported: Mapping[int, _Reported],
    *,
    delta: float,
    preferred: Accountant | None,
    epsilons: _Epsilons,
    notes: list[str],
) -> tuple[dict[int, float], Accountant, bool]:
    """Recompute a site's ledger with the accountant that reproduces what it reported.

    The ledger file does not say which accountant the site uses: the one that gives the
    epsilon the site reported after its last round in the ledger is the one. If none
    does, the ledger and the report disagree: that is noted and the first candidate
    (the database's accountant for the site, else PLD, the default) is used. Returns
    the epsilon after each round, the accountant and whether the ledger agreed.
    """
    candidates: list[Accountant] = [preferred] if preferred is not None else []
    candidates += [a for a in ACCOUNTANTS if a not in candidates]
    last = _last_index(entries)
    checkable = sorted(
        r for r, rep in reported.items() if rep.dp and rep.epsilon is not None and r in last
    )
    chosen, agrees = candidates[0], True
    if checkable:
        probe = checkable[-1]
        claimed = reported[probe].epsilon
        assert claimed is not None
        prefix = entries[: last[probe] + 1]
        tried: list[str] = []
        for accountant in candidates:
            value = epsilons.of(prefix, delta=delta, accountant=accountant)
            if _agree(value, claimed):
                chosen = accountant
                break
            tried.append(f"{accountant.upper()} {value:.6g}")
        else:
            agrees = False
            notes.append(
                f"{site}: its ledger does not reproduce the epsilon it reported after round "
                f"{probe} ({claimed:.6g}; recomputed: {', '.join(tried)})"
            )
    return epsilons.after_rounds(entries, delta=delta, accountant=chosen), chosen, agrees


def _latest_setting(
    scope: str, events: Sequence[PrivacyEventRecord], notes: list[str]
) -> tuple[float, Accountant, float | None]:
    """Return the delta, accountant and budget of a scope's latest event, noting changes."""
    last = events[-1]
    settings = {(e.delta, e.accountant) for e in events}
    if len(settings) > 1:
        notes.append(
            f"{scope}: its privacy events were recorded at different deltas or accountants; "
            f"epsilon is computed at the latest (delta {last.delta:g}, {last.accountant})"
        )
    return last.delta, last.accountant, last.target_epsilon


def _point(
    number: int,
    participant: str,
    epsilon: float | None,
    delta: float | None,
    budget: float | None,
    source: Source,
    recomputed: float | None,
    *,
    dp: bool = True,
) -> PrivacyPoint:
    return PrivacyPoint(
        round=number,
        participant=participant,
        level="participant" if participant == PARTICIPANTS else "sample",
        dp=dp,
        epsilon=epsilon,
        delta=delta,
        budget=budget,
        source=source,
        recomputed=recomputed,
    )


def _site_points(
    site: str,
    reported: Mapping[int, _Reported],
    entries: Sequence[LedgerEntry],
    events: Sequence[PrivacyEventRecord],
    *,
    epsilons: _Epsilons,
    accountants: dict[str, str],
    notes: list[str],
) -> list[PrivacyPoint]:
    dp_rounds = [r for r in sorted(reported) if reported[r].dp]
    delta: float | None = None
    budget: float | None = None
    if dp_rounds:
        latest = reported[dp_rounds[-1]]
        delta, budget = latest.delta, latest.budget
    db_values: dict[int, float] = {}
    preferred: Accountant | None = None
    if events:
        db_delta, preferred, db_budget = _latest_setting(site, events, notes)
        if delta is None:
            delta, budget = db_delta, db_budget
        db_values = dict(cumulative_epsilon(events, delta=db_delta, accountant=preferred))
        accountants[site] = preferred
        claims = {e.round: e.epsilon_reported for e in events}  # each round's last event
        for number, claimed in sorted(claims.items()):
            if claimed is not None and not _agree(claimed, db_values[number]):
                notes.append(
                    f"{site}: its event for round {number} says epsilon {claimed:.6g}, the "
                    f"recorded events recompute {db_values[number]:.6g}"
                )
    ledger_values: dict[int, float] = {}
    agrees = True  # once a ledger is noted as disagreeing, each round is not noted again
    if entries:
        if delta is None:
            notes.append(
                f"{site}: its ledger holds {len(entries)} trained round(s) but no committed "
                "round reported its delta; not recomputed"
            )
        else:
            ledger_values, used, agrees = _site_ledger(
                site,
                entries,
                reported,
                delta=delta,
                preferred=preferred,
                epsilons=epsilons,
                notes=notes,
            )
            accountants[site] = used
    points: list[PrivacyPoint] = []
    for number in sorted(set(reported) | set(ledger_values) | set(db_values)):
        recomputed = ledger_values.get(number, db_values.get(number))
        rep = reported.get(number)
        if rep is not None and not rep.dp:
            points.append(_point(number, site, None, None, None, "round log", None, dp=False))
            continue
        if rep is not None and rep.epsilon is not None:
            if agrees and recomputed is not None and not _agree(rep.epsilon, recomputed):
                notes.append(
                    f"{site}: reported epsilon {rep.epsilon:.6g} after round {number}, its "
                    f"events recompute {recomputed:.6g}"
                )
            points.append(
                _point(number, site, rep.epsilon, rep.delta, rep.budget, "round log", recomputed)
            )
        elif number in ledger_values:
            value = ledger_values[number]
            points.append(_point(number, site, value, delta, budget, "site ledger", value))
        elif number in db_values:
            value = db_values[number]
            points.append(_point(number, site, value, delta, budget, "database", value))
    return points


def build_report(
    rounds: Sequence[RoundRecord],
    events: Sequence[PrivacyEventRecord],
    ledgers: Mapping[str, Sequence[LedgerEntry]],
    *,
    workdir: str = "",
) -> PrivacyReport:
    """Return the privacy report of what a workdir recorded.

    Parameters
    ----------
    rounds
        The round log (every attempt; only committed fit rounds are read).
    events
        The database's privacy events, in the order they were recorded.
    ledgers
        Site name to its ledger entries, in the order they were trained (may be empty).
    workdir
        Shown in the report.

    Returns
    -------
    PrivacyReport
        Possibly without any DP point (see :func:`load_report`, which refuses that).

    Raises
    ------
    ConfigError
        If the accountant cannot compose recorded events.
    """
    notes: list[str] = []
    accountants: dict[str, str] = {}
    reported = _reported(rounds)
    by_scope: dict[str, list[PrivacyEventRecord]] = {}
    for event in events:
        by_scope.setdefault(event.scope, []).append(event)
    sites = sorted(set(reported) | set(ledgers) | (set(by_scope) - {PARTICIPANTS}), key=_natural)
    points: list[PrivacyPoint] = []
    epsilons = _Epsilons()
    with _quiet_accountant():
        for site in sites:
            points += _site_points(
                site,
                reported.get(site, {}),
                ledgers.get(site, ()),
                by_scope.get(site, ()),
                epsilons=epsilons,
                accountants=accountants,
                notes=notes,
            )
        central = by_scope.get(PARTICIPANTS, [])
        if central:
            delta, accountant, budget = _latest_setting(PARTICIPANTS, central, notes)
            accountants[PARTICIPANTS] = accountant
            for number, value in cumulative_epsilon(central, delta=delta, accountant=accountant):
                points.append(_point(number, PARTICIPANTS, value, delta, budget, "database", value))
    shown = {p.participant for p in points}
    columns = tuple(s for s in sites if s in shown) + ((PARTICIPANTS,) if central else ())
    order = {name: i for i, name in enumerate(columns)}
    points.sort(key=lambda p: (p.round, order[p.participant]))
    return PrivacyReport(
        workdir=workdir,
        rounds=tuple(sorted({p.round for p in points})),
        participants=columns,
        points=tuple(points),
        accountants=accountants,
        notes=tuple(notes),
    )


def _ledgers(directory: Path) -> dict[str, tuple[LedgerEntry, ...]]:
    if not directory.is_dir():
        return {}
    return {
        path.stem: PrivacyLedgerFile(path).entries for path in sorted(directory.glob("*.jsonl"))
    }


def load_report(workdir: Path) -> PrivacyReport:
    """Read ``workdir``'s database (and site ledgers, if any) and build the report.

    Raises
    ------
    ConfigError
        If ``workdir`` holds no fedshield database.
    NotFoundError
        If nothing differentially private was recorded there (no DP rounds).
    StorageError
        If the database or a ledger file cannot be read (a corrupt ledger line is named).
    """
    if not (workdir / "fedshield.db").is_file():
        raise ConfigError(f"{workdir} holds no fedshield database", hint=_NO_DB_HINT)
    db = Database.for_workdir(workdir)
    try:
        rounds = RoundLog(db).list()
        events = PrivacyEvents(db).list()
    finally:
        db.close()
    report = build_report(rounds, events, _ledgers(workdir / "privacy"), workdir=str(workdir))
    if not any(p.dp and p.epsilon is not None for p in report.points):
        if report.points:
            raise NotFoundError(
                f"the rounds recorded in {workdir} were trained without differential "
                "privacy: there is no privacy spending to report",
                hint="Train with [privacy] mode = 'sample' (the default) to get a report.",
            )
        raise NotFoundError(
            f"{workdir} records no differentially private rounds yet",
            hint="Run rounds first; the report covers committed fit rounds and privacy events.",
        )
    return report


# -- presenting ----------------------------------------------------------------------------


def _cell(point: PrivacyPoint | None) -> str:
    if point is None:
        return NOT_TAKEN
    if not point.dp or point.epsilon is None:
        return "no DP"
    mark = "*" if point.source == "site ledger" else ""
    return f"{point.epsilon:.3f}{mark}"


def _header(name: str) -> str:
    return "participant-level" if name == PARTICIPANTS else name


def table(report: PrivacyReport) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Return the report as text: a header, one row per round, and a budget and delta row.

    Cells are the epsilon after the round, ``—`` where the participant spent nothing,
    ``no DP`` where it trained without DP, and a ``*`` where the value comes from the
    site's ledger only (an attempt that did not count, whose privacy was spent anyway).
    """
    header = ["round", *(_header(n) for n in report.participants)]
    rows = [
        [str(number), *(_cell(report.point(number, n)) for n in report.participants)]
        for number in report.rounds
    ]
    budgets, deltas = ["budget"], ["delta"]
    for name in report.participants:
        last = report.latest(name)
        budgets.append(NOT_TAKEN if last is None or last.budget is None else f"{last.budget:g}")
        deltas.append(NOT_TAKEN if last is None or last.delta is None else f"{last.delta:g}")
    return header, rows, [budgets, deltas]


def plot_report(report: PrivacyReport, path: Path) -> None:
    """Write a PNG: epsilon after each round, one line per participant, dashed budgets.

    Uses matplotlib's Agg canvas directly, so no GUI backend is touched.

    Raises
    ------
    ConfigError
        If the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8.0, 5.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    budgets: dict[float, list[str]] = {}
    for name in report.participants:
        series = report.series(name)
        if not series:
            continue
        label = _header(name)
        axes.plot(
            [p.round for p in series],
            [p.epsilon if p.epsilon is not None else math.nan for p in series],
            marker="o",
            markersize=4,
            linewidth=1.5,
            linestyle="-." if name == PARTICIPANTS else "-",
            label=label,
        )
        last = series[-1]
        if last.budget is not None:
            budgets.setdefault(last.budget, []).append(label)
    for index, (budget, names) in enumerate(sorted(budgets.items())):
        shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} participants"
        axes.axhline(
            budget,
            linestyle="--",
            linewidth=1.0,
            color=f"C{(len(report.participants) + index) % 10}",
            label=f"budget {budget:g} ({shown})",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("epsilon spent (cumulative)")
    axes.set_ylim(bottom=0.0)
    axes.set_title("privacy spent per round", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the plot {path}: {exc.strerror or exc}",
            hint="Pass --plot a path in a writable directory.",
        ) from exc
