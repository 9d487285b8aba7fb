"""A site's privacy ledger: spent epsilon from its entries, refusal at the budget, the file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.config import PrivacyConfig
from fedshield.errors import BudgetExhaustedError, ConfigError, FedshieldError, StorageError
from fedshield.federation.participant import LocalTrainer
from fedshield.federation.privacy_ledger import MAX_NOISE_GROWTH, PrivacyLedgerFile, SitePrivacy
from fedshield.privacy import calibrate, compose, epsilon, epsilon_of
from fedshield.privacy.ledger import (
    LedgerEntry,
    PrivacyBudget,
    calibrate_remaining,
    check,
    ledger_event,
    spent,
)
from fedshield.secagg.randomness import deterministic_random
from fedshield.training.local import TrainConfig
from fedshield.training.tasks import TaskParts, model_weights

DELTA = 1e-5
BUDGET = PrivacyBudget(target_epsilon=3.0, target_delta=DELTA)


def entry(round: int = 1, *, z: float = 1.1, q: float = 0.05, steps: int = 40) -> LedgerEntry:
    return LedgerEntry(round=round, attempt=1, noise_multiplier=z, sampling_rate=q, steps=steps)


# -- the pure ledger -------------------------------------------------------------------------


def test_budget_and_entries_validate_at_construction() -> None:
    for bad in (
        dict(target_epsilon=0.0, target_delta=DELTA),
        dict(target_epsilon=math.inf, target_delta=DELTA),
        dict(target_epsilon=1.0, target_delta=1.0),
        dict(target_epsilon=1.0, target_delta=DELTA, accountant="moments"),
    ):
        with pytest.raises(ConfigError):
            PrivacyBudget(**bad)  # type: ignore[arg-type]
    good = dict(round=1, attempt=1, noise_multiplier=1.0, sampling_rate=0.1, steps=5)
    for key, value in (
        ("round", 0),
        ("attempt", True),
        ("noise_multiplier", 0.0),
        ("sampling_rate", 1.5),
        ("steps", 2.0),
    ):
        with pytest.raises(ConfigError, match=key):
            LedgerEntry(**{**good, key: value})  # type: ignore[arg-type]


def test_spent_of_identical_rounds_is_epsilon_of_all_their_steps() -> None:
    entries = [entry(r) for r in (1, 2, 3)]
    expected = epsilon(noise_multiplier=1.1, sampling_rate=0.05, rounds=120, delta=DELTA)
    assert spent(BUDGET, entries) == expected
    rdp = PrivacyBudget(target_epsilon=3.0, target_delta=DELTA, accountant="rdp")
    assert spent(rdp, entries) == pytest.approx(
        epsilon(noise_multiplier=1.1, sampling_rate=0.05, rounds=120, delta=DELTA, accountant="rdp")
    )
    assert spent(BUDGET, []) == 0.0


def test_spent_is_recomputed_from_mixed_entries_in_any_order() -> None:
    a, b = entry(1), entry(2, z=0.9, q=0.1, steps=10)
    mixed = spent(BUDGET, [a, b])
    assert mixed == pytest.approx(spent(BUDGET, [b, a]), rel=1e-9)
    assert mixed == pytest.approx(epsilon_of(compose([a.event(), b.event()]), delta=DELTA))
    assert mixed > max(spent(BUDGET, [a]), spent(BUDGET, [b]))
    # Equal settings are merged into one self-composition; others stay separate.
    event = ledger_event([a, b, entry(3)])
    assert len(event.events) == 2  # type: ignore[attr-defined]


def test_check_refuses_exactly_the_round_that_would_exceed_the_budget() -> None:
    one, two, three = (spent(BUDGET, [entry(r) for r in range(1, k + 1)]) for k in (1, 2, 3))
    budget = PrivacyBudget(target_epsilon=(two + three) / 2, target_delta=DELTA)
    assert check(budget, [], entry(1)) == one
    assert check(budget, [entry(1)], entry(2)) == two
    with pytest.raises(BudgetExhaustedError) as info:
        check(budget, [entry(1), entry(2)], entry(3))
    error = info.value
    assert (error.spent_epsilon, error.epsilon_after) == (two, three)
    assert error.target_epsilon == budget.target_epsilon
    assert "round 3" in error.message and "budget" in error.message
    assert f"{two:.4g}" in error.message and f"{three:.4g}" in error.message
    assert "participant.toml [privacy]" in error.hint and "stop training" in error.hint
    assert isinstance(error, FedshieldError) and error.exit_code == 10
    # A budget of exactly what two rounds cost admits the second round.
    exact = PrivacyBudget(target_epsilon=two, target_delta=DELTA)
    assert check(exact, [entry(1)], entry(2)) == two


# -- the ledger file -------------------------------------------------------------------------


def test_ledger_file_round_trips_and_fsyncs_each_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kit" / "privacy-ledger.jsonl"
    ledger = PrivacyLedgerFile(path)
    assert ledger.entries == () and not path.exists()
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    first, second = entry(1), LedgerEntry(2, 3, 0.75, 1.0, 7)
    ledger.append(first)
    assert len(synced) == 2  # the file, then (new file) its directory
    ledger.append(second)
    assert len(synced) == 3
    assert ledger.entries == (first, second)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first.to_record(), second.to_record()]
    assert json.loads(lines[0])["v"] == 1
    assert PrivacyLedgerFile(path).entries == (first, second)
    assert path.stat().st_mode & 0o777 == 0o600


GOOD_LINE = json.dumps(entry().to_record()) + "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"v":1,"round":1}\n', "keys are wrong"),
        ("not json\n", "Expecting value"),
        ("\n", "Expecting value"),
        (json.dumps({**entry().to_record(), "v": 2}) + "\n", "version"),
        (json.dumps({**entry().to_record(), "steps": 4.0}) + "\n", "steps"),
        (json.dumps({**entry().to_record(), "round": True}) + "\n", "round"),
        (json.dumps({**entry().to_record(), "noise_multiplier": 1}) + "\n", "float"),
        (json.dumps({**entry().to_record(), "epsilon": 0.1}) + "\n", "unknown ['epsilon']"),
        (GOOD_LINE.replace("1.1", "NaN"), "NaN"),
        ('{"v":1,"v":1}\n', "duplicate"),
        ('{"v":1,"ro', "incomplete"),
        ("[1, 2]\n", "object"),
    ],
)
def test_a_corrupt_ledger_is_an_error_naming_the_line_never_skipped(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "privacy-ledger.jsonl"
    path.write_text(GOOD_LINE + text)
    with pytest.raises(StorageError) as info:
        PrivacyLedgerFile(path)
    assert str(path) in info.value.message and "corrupt" in info.value.message
    assert "line 2" in info.value.message and problem in info.value.message
    assert "never delete lines" in info.value.hint


def test_a_ledger_that_is_not_utf8_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(StorageError, match="not UTF-8"):
        PrivacyLedgerFile(path)


# -- a site's settings and a restart ---------------------------------------------------------


def site(path: Path, **config: Any) -> SitePrivacy:
    return SitePrivacy(
        PrivacyConfig(**config),
        ledger=PrivacyLedgerFile(path),
        batch_size=10,
        planned_rounds=3,
        rng=lambda: deterministic_random(b"ledger-test"),
    )


def test_a_restart_keeps_the_spent_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.jsonl"
    before = site(path, noise_multiplier=1.0)
    before.record(entry(1))
    before.record(entry(2, z=0.8))
    spent_before = before.spent()
    assert spent_before > 0
    after = site(path, noise_multiplier=1.0)  # a new process reads the same file
    assert after.ledger.entries == before.ledger.entries
    assert after.spent() == spent_before


def test_delta_must_be_below_one_over_the_records(tmp_path: Path) -> None:
    privacy = site(tmp_path / "l.jsonl", target_delta=0.01)
    privacy.check_records(99)  # 0.01 < 1/99
    with pytest.raises(ConfigError, match=r"1/100") as info:
        privacy.check_records(100)
    assert "target_delta" in info.value.message and "0.001" in info.value.hint


def test_calibrated_noise_spends_the_budget_over_the_planned_rounds(tmp_path: Path) -> None:
    privacy = site(tmp_path / "l.jsonl", target_epsilon=2.0)
    train = TrainConfig(local_epochs=2, learning_rate=0.1)
    dp = privacy.dp_config(train, records=100)
    assert dp.sampling_rate == 0.1 and dp.steps(train) == 20  # batch 10 of 100, 2 epochs
    assert dp.noise_multiplier == calibrate(
        target_epsilon=2.0, target_delta=DELTA, sampling_rate=0.1, rounds=60
    )
    rounds = [
        LedgerEntry(r, 1, dp.noise_multiplier, dp.sampling_rate, dp.steps(train))
        for r in (1, 2, 3, 4)
    ]
    for planned in rounds[:3]:
        assert privacy.admit(planned) <= 2.0
        privacy.record(planned)
    with pytest.raises(BudgetExhaustedError):
        privacy.admit(rounds[3])


def test_a_retried_round_is_paid_for_with_more_noise_not_a_refusal(tmp_path: Path) -> None:
    privacy = site(tmp_path / "l.jsonl", target_epsilon=2.0)  # planned for 3 rounds
    train = TrainConfig(local_epochs=2, learning_rate=0.1)

    def train_round(number: int, attempt: int = 1) -> LedgerEntry:
        dp = privacy.dp_config(train, records=100, round=number)
        done = LedgerEntry(number, attempt, dp.noise_multiplier, dp.sampling_rate, 20)
        privacy.admit(done)
        privacy.record(done)
        return done

    first = train_round(1)
    # Round 1 failed after this site trained: its retry and the two rounds after it
    # are recalibrated on what the first attempt left of the budget.
    retried = train_round(1, attempt=2)
    second = train_round(2)
    # A restart here (a new process, the same ledger file) plans round 3 the same way.
    again = site(tmp_path / "l.jsonl", target_epsilon=2.0)
    planned = again.dp_config(train, records=100, round=3).noise_multiplier
    third = train_round(3)
    assert retried.noise_multiplier > first.noise_multiplier
    assert second.noise_multiplier == third.noise_multiplier == retried.noise_multiplier
    assert planned == pytest.approx(third.noise_multiplier, rel=1e-3)
    assert privacy.spent() <= 2.0
    assert privacy.spent() == pytest.approx(2.0, rel=0.02)
    with pytest.raises(BudgetExhaustedError):  # past the plan, the budget decides
        train_round(4)


def test_more_rounds_than_planned_are_refused_not_drowned_in_noise(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    train = TrainConfig(local_epochs=2, learning_rate=0.1)
    privacy = site(path, target_epsilon=2.0)  # planned for 3 rounds
    for number in (1, 2, 3):
        dp = privacy.dp_config(train, records=100, round=number)
        done = LedgerEntry(number, 1, dp.noise_multiplier, dp.sampling_rate, 20)
        privacy.admit(done)
        privacy.record(done)
    # The site now plans 4 rounds: what is left would need far more than twice the noise.
    more = site(path, target_epsilon=2.0, planned_rounds=4)
    dp = more.dp_config(train, records=100, round=4)
    assert dp.noise_multiplier <= MAX_NOISE_GROWTH * calibrate(
        target_epsilon=2.0, target_delta=DELTA, sampling_rate=0.1, rounds=80
    )
    with pytest.raises(BudgetExhaustedError):
        more.admit(LedgerEntry(4, 1, dp.noise_multiplier, dp.sampling_rate, 20))


def test_calibrate_remaining_refuses_a_spent_budget() -> None:
    budget = PrivacyBudget(target_epsilon=spent(BUDGET, [entry(1)]), target_delta=DELTA)
    with pytest.raises(BudgetExhaustedError, match="no amount of noise"):
        calibrate_remaining(budget, [entry(1)], sampling_rate=0.05, steps=40, rounds=1)
    assert calibrate_remaining(BUDGET, [], sampling_rate=0.05, steps=40, rounds=3) == calibrate(
        target_epsilon=3.0, target_delta=DELTA, sampling_rate=0.05, rounds=120
    )


def test_a_site_needs_rounds_to_calibrate_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no number of rounds") as info:
        SitePrivacy(
            PrivacyConfig(),
            ledger=PrivacyLedgerFile(tmp_path / "l.jsonl"),
            batch_size=10,
            planned_rounds=None,
        )
    assert "planned_rounds" in info.value.hint
    with pytest.raises(ConfigError, match="mode"):
        site(tmp_path / "l.jsonl", mode="off")


# -- the trainer with DP ---------------------------------------------------------------------


def parts(records: int = 60) -> TaskParts:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(records, 8, generator=g), torch.randint(0, 3, (records,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return TaskParts(model=model, train_loader=loader, test_loader=loader)


def test_the_trainer_checks_trains_records_and_reports_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.jsonl"
    privacy = site(path, noise_multiplier=1.0, target_epsilon=10.0)
    trainer = LocalTrainer(
        parts(), config=TrainConfig(local_epochs=1, learning_rate=0.1), seed=0, privacy=privacy
    )
    start = model_weights(trainer.parts.model)
    outcome = trainer.fit(start, round=1, attempt=2)
    assert set(outcome.metrics) == {
        "dp",
        "epsilon",
        "delta",
        "target_epsilon",
        "eval_accuracy",
        "eval_loss",
    }  # no train_loss: it is not private
    assert outcome.metrics["dp"] == 1.0 and outcome.metrics["delta"] == DELTA
    assert outcome.metrics["epsilon"] == privacy.spent() and 0 < privacy.spent() <= 10.0
    assert outcome.num_examples == 60
    assert any(np.abs(u).max() > 0 for u in outcome.update.values())
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == {
        "v": 1,
        "round": 1,
        "attempt": 2,
        "noise_multiplier": 1.0,
        "sampling_rate": 10 / 60,
        "steps": 6,
    }
    # Train until the budget refuses: nothing is trained or recorded then.
    refused = None
    for number in range(2, 50):
        try:
            trainer.fit(start, round=number)
        except BudgetExhaustedError as exc:
            refused = exc
            break
    assert refused is not None and refused.epsilon_after > 10.0 >= refused.spent_epsilon
    lines = path.read_text().splitlines()
    assert len(lines) == number - 1  # the refused round left no entry
    assert PrivacyLedgerFile(path).entries[-1].round == number - 1


def test_without_dp_the_trainer_reports_dp_0_and_its_loss() -> None:
    trainer = LocalTrainer(parts(), config=TrainConfig(local_epochs=1), seed=0)
    outcome = trainer.fit(model_weights(trainer.parts.model), round=1)
    assert outcome.metrics["dp"] == 0.0 and "train_loss" in outcome.metrics
    assert "epsilon" not in outcome.metrics


def test_the_trainer_refuses_a_delta_too_large_for_its_data(tmp_path: Path) -> None:
    privacy = site(tmp_path / "l.jsonl", target_delta=0.05)
    with pytest.raises(ConfigError, match="target_delta"):
        LocalTrainer(parts(records=40), config=TrainConfig(), seed=0, privacy=privacy)
