"""benchmarks/dp_utility.py's bookkeeping: which run is the reference, and which split is shown."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dp_utility.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dp_utility_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(mode: str, task: str, test: float | None, validation: float | None) -> dict[str, Any]:
    return {
        "privacy_mode": mode,
        "task": task,
        "epsilon_target": "inf" if mode == "off" else 8.0,
        "final_accuracy": test,
        "validation_accuracy": validation,
        "accuracy_gap_points": None,
        "validation_gap_points": None,
    }


def test_gaps_are_measured_against_the_best_non_private_run(bench: ModuleType) -> None:
    relu = _row("off", "mnist", test=0.96, validation=0.95)
    tanh = _row("off", "mnist_tanh", test=0.94, validation=0.97)
    dp = _row("sample", "mnist_tanh", test=0.90, validation=0.91)
    runs = [relu, tanh, dp]
    bench.add_gaps(runs)
    # Test gap against relu's 0.96, validation gap against tanh's 0.97: each the better.
    assert dp["accuracy_gap_points"] == pytest.approx(6.0)
    assert dp["validation_gap_points"] == pytest.approx(6.0)
    assert tanh["accuracy_gap_points"] == pytest.approx(2.0)
    assert relu["validation_gap_points"] == pytest.approx(2.0)
    assert bench.reference_run(runs, "final_accuracy") is relu
    assert bench.reference_run(runs, "validation_accuracy") is tanh


def test_a_dp_run_is_never_the_reference(bench: ModuleType) -> None:
    runs = [_row("off", "mnist", 0.5, 0.5), _row("sample", "mnist_tanh", 0.9, 0.9)]
    assert bench.reference_run(runs, "final_accuracy")["privacy_mode"] == "off"
    assert bench.reference_run([runs[1]], "final_accuracy") is None


def test_tuning_reports_the_validation_split_and_never_the_test_one(bench: ModuleType) -> None:
    tune = argparse.Namespace(tune=True)
    assert bench.reported_keys(tune) == ("validation_accuracy", "validation_gap_points")
    final = argparse.Namespace(tune=False)
    assert bench.reported_keys(final) == ("final_accuracy", "accuracy_gap_points")
    # With --tune the test accuracy is None, so it cannot be the reference either.
    runs = [_row("off", "mnist", None, 0.9), _row("sample", "mnist_tanh", None, 0.88)]
    bench.add_gaps(runs)
    assert runs[1]["accuracy_gap_points"] is None
    assert runs[1]["validation_gap_points"] == pytest.approx(2.0)


def _seeded(mode: str, task: str, seed: int, test: float, validation: float) -> dict[str, Any]:
    return {
        **_row(mode, task, test, validation),
        "seed": seed,
        "noise_multiplier": None if mode == "off" else 3.0,
        "learning_rate": 4.0,
        "rounds_completed": 60,
        "epsilon_spent_max": None if mode == "off" else 7.99,
        "epsilon_spent_ledger_max": None if mode == "off" else 7.99,
    }


def test_seed_means_set_the_reference_and_every_gap(bench: ModuleType) -> None:
    runs = [
        _seeded("off", "mnist", 11, test=0.96, validation=0.97),
        _seeded("off", "mnist", 12, test=0.98, validation=0.95),
        _seeded("sample", "mnist_tanh", 11, test=0.90, validation=0.93),
        _seeded("sample", "mnist_tanh", 12, test=0.92, validation=0.91),
    ]
    means = bench.mean_rows(runs)
    assert [(m["task"], m["seeds"]) for m in means] == [
        ("mnist", [11, 12]),
        ("mnist_tanh", [11, 12]),
    ]
    off, dp = means
    assert off["final_accuracy"] == pytest.approx(0.97)
    assert (off["final_accuracy_min"], off["final_accuracy_max"]) == (0.96, 0.98)
    assert dp["validation_accuracy"] == pytest.approx(0.92)
    assert dp["validation_accuracy_std"] == pytest.approx(0.0141421, rel=1e-4)
    bench.add_gaps(means)
    bench.add_gaps(runs, reference_rows=means)
    # Gaps between means: 0.97 - 0.91 on test, 0.96 - 0.92 on validation.
    assert dp["accuracy_gap_points"] == pytest.approx(6.0)
    assert dp["validation_gap_points"] == pytest.approx(4.0)
    # A single run is measured against the best mean, not against the best single run.
    assert runs[1]["accuracy_gap_points"] == pytest.approx(-1.0)
    assert runs[3]["accuracy_gap_points"] == pytest.approx(5.0)


def test_a_mean_with_a_missing_accuracy_has_none(bench: ModuleType) -> None:
    runs = [
        _seeded("sample", "mnist_tanh", 11, test=0.90, validation=0.93),
        {**_seeded("sample", "mnist_tanh", 12, test=0.9, validation=0.91), "final_accuracy": None},
    ]
    (mean,) = bench.mean_rows(runs)
    assert mean["final_accuracy"] is None and mean["final_accuracy_min"] is None
    assert mean["validation_accuracy"] == pytest.approx(0.92)


def test_a_dp_setting_fedshield_refuses_is_a_usage_error_before_any_run(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # [task] learning_rate is capped at 10: refused up front, not in a worker mid-way.
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--tune", "--epsilons", "8", "--dp-learning-rates", "8:40"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the DP settings at epsilon 8" in err and "learning_rate" in err
    assert "Traceback" not in err
