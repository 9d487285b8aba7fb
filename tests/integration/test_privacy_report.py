"""`fedshield privacy report`: epsilon per round per participant, as a table, JSON and a PNG.

The report reads a workdir: the sites' sample-level epsilon as they reported it with each
committed fit round (checked against their ledgers when those are in the workdir), and
the coordinator's participant-level epsilon recomputed from the privacy events in the
database. The CLI is run in this process through its entry function.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fedshield.cli import main
from fedshield.config import FederationConfig, parse_config
from fedshield.federation.privacy_ledger import PrivacyLedgerFile
from fedshield.federation.privacy_report import build_report, load_report, table
from fedshield.federation.simulation import run_simulation
from fedshield.privacy import epsilon
from fedshield.privacy.ledger import LedgerEntry, PrivacyBudget, spent
from fedshield.storage import Database, PrivacyEvents, RoundLog, RoundRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DELTA = 1e-5

# One local epoch at sampling rate 0.1 is 10 DP-SGD steps at noise multiplier 1.
SIGMA, RATE, STEPS = 1.0, 0.1, 10


def cost(rounds: int, *, accountant: str = "pld") -> float:
    """Epsilon of ``rounds`` DP-SGD rounds at the fixed settings."""
    return epsilon(
        noise_multiplier=SIGMA,
        sampling_rate=RATE,
        rounds=rounds * STEPS,
        delta=DELTA,
        accountant=accountant,  # type: ignore[arg-type]
    )


def fedshield(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; return its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    code = exited.value.code
    return (code if isinstance(code, int) else 0), out, err


def dp_config() -> FederationConfig:
    return parse_config(
        {
            "federation": {"name": "privacy-report", "seed": 3},
            "task": {"name": "digits", "local_epochs": 1, "learning_rate": 0.1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 3},
            "rounds": {"count": 3, "min_participants": 2, "max_retries": 0},
            "secure_aggregation": {"enabled": False},
            "privacy": {
                "mode": "sample",
                "noise_multiplier": SIGMA,
                "sampling_rate": RATE,
                "target_epsilon": 50.0,
                "target_delta": DELTA,
            },
        },
        source="test",
    )


# -- a real simulation -----------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_of_a_dp_simulation_matches_what_each_site_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dp_config()
    # site-3's own budget admits one round, not two: it refuses rounds 2 and 3.
    small = (cost(1) + cost(2)) / 2
    site_privacy = {"site-3": config.privacy.model_copy(update={"target_epsilon": small})}
    workdir = tmp_path / "work"
    result = run_simulation(config, workdir=workdir, base_dir=tmp_path, site_privacy=site_privacy)
    assert result.rounds_completed == 3
    capsys.readouterr()

    json_path, plot_path = tmp_path / "report.json", tmp_path / "report.png"
    code, out, err = fedshield(
        [
            "privacy",
            "report",
            "--workdir",
            str(workdir),
            "--json",
            str(json_path),
            "--plot",
            str(plot_path),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(json_path.read_text())

    db = Database.for_workdir(workdir)
    try:
        fits = [r for r in RoundLog(db).list() if r.kind == "fit" and r.status == "committed"]
    finally:
        db.close()
    expected = {(r.number, site): r.metrics[f"{site}.epsilon"] for r in fits for site in r.answered}
    assert sorted(expected) == [
        (1, "site-1"),
        (1, "site-2"),
        (1, "site-3"),
        (2, "site-1"),
        (2, "site-2"),
        (3, "site-1"),
        (3, "site-2"),
    ]
    entries = report["entries"]
    # One entry per round per site that trained in it, as the site reported it.
    assert sorted((e["round"], e["participant"]) for e in entries) == sorted(expected)
    for e in entries:
        assert e["epsilon"] == expected[e["round"], e["participant"]]
        assert e["recomputed"] == e["epsilon"]  # from the site's ledger in the workdir
        assert e["source"] == "round log"
        assert (e["level"], e["dp"], e["delta"]) == ("sample", True, DELTA)
        assert e["epsilon"] <= e["budget"]
    for site in ("site-1", "site-2", "site-3"):
        series = [e["epsilon"] for e in entries if e["participant"] == site]
        assert series == sorted(series)
    assert [e["epsilon"] for e in entries if e["participant"] == "site-1"] == [
        pytest.approx(cost(r), rel=1e-9) for r in (1, 2, 3)
    ]
    assert report["participants"]["site-3"]["budget"] == small
    assert report["participants"]["site-1"]["accountant"] == "pld"
    assert report["rounds"] == [1, 2, 3]
    assert report["notes"] == []
    assert report["plot"] == str(plot_path)
    assert plot_path.read_bytes()[:8] == PNG_MAGIC

    # The table: rounds as rows, sites as columns, "—" where site-3 refused.
    assert f"plot written to {plot_path}" in out
    lines = out.splitlines()
    header = next(line for line in lines if "site-1" in line)
    assert header.index("site-1") < header.index("site-2") < header.index("site-3")
    round_3 = next(line for line in lines if line.strip("│┃ ").startswith("3 "))
    assert f"{cost(3):.3f}" in round_3 and "—" in round_3
    assert any(line.strip("│ ").startswith("budget") and f"{small:g}" in line for line in lines)


# -- clear errors ----------------------------------------------------------------------------


def test_a_workdir_without_a_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for workdir in (empty, tmp_path / "missing"):
        code, out, err = fedshield(["privacy", "report", "--workdir", str(workdir)], capsys)
        assert code == 2
        assert f"{workdir} holds no fedshield database" in err
        assert "hint:" in err
    assert not (tmp_path / "missing").exists()
    assert list(empty.iterdir()) == []


def _round(db: Database, number: int, metrics: dict[str, float], answered: list[str]) -> None:
    rounds = RoundLog(db)
    row = rounds.start(
        number=number, attempt=1, kind="fit", base_version=number - 1, selected=answered, now=NOW
    )
    rounds.finish(
        row,
        status="committed",
        answered=answered,
        dropped=[],
        reason=None,
        model_version=number,
        metrics=metrics,
        now=NOW + timedelta(seconds=1),
    )


def test_a_workdir_without_dp_rounds_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    Database.for_workdir(workdir).close()
    code, _, err = fedshield(["privacy", "report", "--workdir", str(workdir)], capsys)
    assert code == 4
    assert "records no differentially private rounds" in err

    db = Database.for_workdir(workdir)
    try:
        _round(db, 1, {"site-1.dp": 0.0, "site-2.dp": 0.0, "train_loss": 0.5}, ["site-1", "site-2"])
    finally:
        db.close()
    code, _, err = fedshield(["privacy", "report", "--workdir", str(workdir)], capsys)
    assert code == 4
    assert "trained without differential privacy" in err
    assert not (workdir / "privacy-report.png").exists()


def test_an_unwritable_plot_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    db = Database.for_workdir(workdir)
    try:
        PrivacyEvents(db).record(**central_round(1))
    finally:
        db.close()
    plot = tmp_path / "no-such-dir" / "p.png"
    code, _, err = fedshield(
        ["privacy", "report", "--workdir", str(workdir), "--plot", str(plot)], capsys
    )
    assert code == 2
    assert f"cannot write the plot {plot}" in err


# -- participant-level DP from the database --------------------------------------------------


def central_round(number: int, attempt: int = 1) -> dict[str, Any]:
    return {
        "round": number,
        "attempt": attempt,
        "scope": "participants",
        "mechanism": "dp-fedavg-central",
        "noise_multiplier": 1.1,
        "sampling_rate": 0.5,
        "sampling": "poisson",
        "steps": 1,
        "clip_norm": 1.0,
        "participants": 4,
        "delta": DELTA,
        "accountant": "pld",
        "target_epsilon": 6.0,
        "now": NOW + timedelta(minutes=number),
    }


def test_participant_level_events_are_reported_as_recomputed_cumulative_epsilon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    db = Database.for_workdir(workdir)
    try:
        events = PrivacyEvents(db)
        events.record(**central_round(1))
        events.record(**central_round(2, attempt=1))
        events.record(**central_round(2, attempt=2))  # a retry that released noise again
        events.record(**central_round(3))
    finally:
        db.close()

    code, out, err = fedshield(
        ["privacy", "report", "--workdir", str(workdir), "--json", "-"], capsys
    )
    assert code == 0, err
    report = json.loads(out)  # --json -: the JSON owns stdout, the table goes to stderr

    def central_cost(rounds: int) -> float:
        return epsilon(noise_multiplier=1.1, sampling_rate=0.5, rounds=rounds, delta=DELTA)

    entries = report["entries"]
    assert [(e["round"], e["participant"], e["level"]) for e in entries] == [
        (r, "participants", "participant") for r in (1, 2, 3)
    ]
    # Cumulative, recomputed from every recorded attempt: 1, 3 and 4 compositions.
    assert [e["epsilon"] for e in entries] == [central_cost(n) for n in (1, 3, 4)]
    assert all(e["source"] == "database" and e["budget"] == 6.0 for e in entries)
    assert report["participants"]["participants"]["epsilon"] == central_cost(4)
    assert report["plot"] == str(workdir / "privacy-report.png")
    assert (workdir / "privacy-report.png").read_bytes()[:8] == PNG_MAGIC
    assert "participant-level" in err
    assert f"{central_cost(4):.3f}" in err
    assert "plot written to" in err


# -- the report's rules, on recorded data ----------------------------------------------------


def record(number: int, metrics: dict[str, float], answered: tuple[str, ...]) -> RoundRecord:
    return RoundRecord(
        id=number,
        number=number,
        attempt=1,
        kind="fit",
        status="committed",
        base_version=number - 1,
        started_at=NOW,
        finished_at=NOW,
        selected=answered,
        answered=answered,
        dropped=(),
        reason=None,
        model_version=number,
        metrics=metrics,
    )


def entry(number: int, attempt: int = 1) -> LedgerEntry:
    return LedgerEntry(
        round=number, attempt=attempt, noise_multiplier=SIGMA, sampling_rate=RATE, steps=STEPS
    )


def dp_metrics(site: str, value: float, budget: float = 50.0) -> dict[str, float]:
    return {
        f"{site}.dp": 1.0,
        f"{site}.epsilon": value,
        f"{site}.delta": DELTA,
        f"{site}.target_epsilon": budget,
    }


def test_spending_only_the_ledger_knows_is_shown_and_marked() -> None:
    # site-1 trained round 2 twice (attempt 1 failed after it trained) and round 3,
    # whose update never counted; site-2 trains without DP.
    ledger = [entry(1), entry(2, 1), entry(2, 2), entry(3)]
    rounds = [
        record(1, {**dp_metrics("site-1", cost(1)), "site-2.dp": 0.0}, ("site-1", "site-2")),
        record(2, {**dp_metrics("site-1", cost(3)), "site-2.dp": 0.0}, ("site-1", "site-2")),
        record(3, {"site-2.dp": 0.0}, ("site-2",)),
    ]
    report = build_report(rounds, [], {"site-1": ledger})
    assert report.participants == ("site-1", "site-2")
    assert report.notes == ()
    one = [report.point(r, "site-1") for r in (1, 2, 3)]
    assert [p.source for p in one if p] == ["round log", "round log", "site ledger"]
    assert [p.epsilon for p in one if p] == [cost(1), cost(3), cost(4)]
    assert all(p is not None and p.recomputed == p.epsilon for p in one)
    header, rows, footer = table(report)
    assert header == ["round", "site-1", "site-2"]
    assert rows == [
        ["1", f"{cost(1):.3f}", "no DP"],
        ["2", f"{cost(3):.3f}", "no DP"],
        ["3", f"{cost(4):.3f}*", "no DP"],
    ]
    assert footer == [["budget", "50", "—"], ["delta", "1e-05", "—"]]
    as_json = report.to_json()
    assert as_json["participants"]["site-2"] == {
        "level": "sample",
        "dp": False,
        "epsilon": None,
        "delta": None,
        "budget": None,
        "accountant": None,
        "rounds": 3,
    }


def test_the_ledger_is_recomputed_with_the_accountant_the_site_used() -> None:
    budget = PrivacyBudget(target_epsilon=50.0, target_delta=DELTA, accountant="rdp")
    ledger = [entry(1), entry(2)]
    rounds = [
        record(r, dp_metrics("site-1", spent(budget, ledger[:r])), ("site-1",)) for r in (1, 2)
    ]
    report = build_report(rounds, [], {"site-1": ledger})
    assert report.accountants == {"site-1": "rdp"}
    assert report.notes == ()
    assert [p.recomputed for p in report.points] == [
        cost(1, accountant="rdp"),
        cost(2, accountant="rdp"),
    ]


def test_a_report_its_ledger_contradicts_is_noted() -> None:
    rounds = [record(1, dp_metrics("site-1", 0.5), ("site-1",))]
    report = build_report(rounds, [], {"site-1": [entry(1)]})
    [note] = report.notes
    assert note.startswith("site-1: its ledger does not reproduce the epsilon it reported")
    point = report.point(1, "site-1")
    assert point is not None and point.epsilon == 0.5 and point.recomputed == cost(1)
    # The ledger agrees with the site's last report, not with an earlier one.
    rounds = [
        record(1, dp_metrics("site-1", 0.5), ("site-1",)),
        record(2, dp_metrics("site-1", cost(2)), ("site-1",)),
    ]
    report = build_report(rounds, [], {"site-1": [entry(1), entry(2)], "site-9": []})
    assert report.notes == (
        f"site-1: reported epsilon 0.5 after round 1, its events recompute {cost(1):.6g}",
    )
    assert report.participants == ("site-1",)  # an empty ledger spent nothing: no column


def test_a_sites_events_in_the_database_are_used_without_a_ledger(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    db = Database.for_workdir(workdir)
    try:
        for r in (1, 2):
            PrivacyEvents(db).record(
                round=r,
                attempt=1,
                scope="site-7",
                mechanism="dp-sgd",
                noise_multiplier=SIGMA,
                sampling_rate=RATE,
                sampling="poisson",
                steps=STEPS,
                clip_norm=1.0,
                participants=None,
                delta=DELTA,
                accountant="pld",
                target_epsilon=9.0,
                epsilon_reported=cost(r),
                now=NOW,
            )
        events = PrivacyEvents(db).list()
    finally:
        db.close()
    report = build_report([], events, {})
    assert [(p.round, p.participant, p.source, p.epsilon) for p in report.points] == [
        (1, "site-7", "database", cost(1)),
        (2, "site-7", "database", cost(2)),
    ]
    latest = report.latest("site-7")
    assert latest is not None and latest.budget == 9.0
    assert report.notes == ()  # what the events say the site reported agrees


def test_the_ledger_files_of_a_workdir_are_read(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    ledger = PrivacyLedgerFile(workdir / "privacy" / "site-1.jsonl")
    for e in (entry(1), entry(2)):
        ledger.append(e)
    db = Database.for_workdir(workdir)
    try:
        _round(db, 1, dp_metrics("site-1", cost(1)), ["site-1"])
    finally:
        db.close()
    report = load_report(workdir)
    assert [(p.round, p.source, p.epsilon) for p in report.points] == [
        (1, "round log", cost(1)),
        (2, "site ledger", cost(2)),
    ]
