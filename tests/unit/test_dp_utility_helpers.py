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
