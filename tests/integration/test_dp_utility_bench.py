"""``benchmarks/dp_utility.py --quick`` runs end to end and writes what it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "dp_utility.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPSILONS = ("1", "3", "8", "inf")  # the benchmark's default --epsilons


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_quick_dp_utility_writes_json_lines_a_json_file_and_a_png(tmp_path: Path) -> None:
    json_path = tmp_path / "dp.json"
    png_path = tmp_path / "dp.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(json_path), "--plot", str(png_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=460,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    document = json.loads(json_path.read_text())
    # stdout and the file carry the same rows.
    assert lines == [
        *document["runs"],
        *document["means"],
        *document["overhead"],
        document["summary"],
    ]

    runs = document["runs"]
    # Two non-private runs (the config's model and the DP runs' one), then one per epsilon.
    assert sorted(str(r["epsilon_target"]) for r in runs) == sorted(
        ["inf", *(str(float(e)) if e != "inf" else "inf" for e in EPSILONS)]
    )
    off = [r for r in runs if r["epsilon_target"] == "inf"]
    assert sorted(r["task"] for r in off) == ["mnist", "mnist_tanh"]
    assert min(r["accuracy_gap_points"] for r in off) == 0.0  # the best is the reference
    assert min(r["validation_gap_points"] for r in off) == 0.0
    for run in runs:
        for key in ("final_accuracy", "validation_accuracy"):
            accuracy = run[key]
            assert isinstance(accuracy, float) and math.isfinite(accuracy)
            assert 0.0 <= accuracy <= 1.0
        if run["epsilon_target"] == "inf":
            assert run["privacy_mode"] == "off"
            assert run["epsilon_spent_max"] is None
            assert run["accuracy_gap_points"] >= 0.0
        else:
            assert run["task"] == "mnist_tanh"
            target = float(run["epsilon_target"])
            assert run["privacy_mode"] == "sample"
            assert run["delta"] == 1e-5
            assert run["noise_multiplier"] > 0
            assert 0 < run["epsilon_spent_max"] <= target * 1.01
            assert 0 < run["epsilon_spent_ledger_max"] <= target * 1.01
            assert math.isfinite(run["accuracy_gap_points"])

    assert document["overhead"]
    for row in document["overhead"]:
        assert row["kind"] == "overhead"
        assert row["plain_s_per_epoch"] > 0 and row["dpsgd_s_per_epoch"] > 0
        assert row["dpsgd_over_plain"] == pytest.approx(
            row["dpsgd_s_per_epoch"] / row["plain_s_per_epoch"]
        )
        assert row["model_parameters"] == 18_378  # the MNIST CNN
        assert row["records"] > 0 and row["batch_size"] > 0

    # --quick runs one seed: each mean row is its one run.
    means = document["means"]
    assert len(means) == len(runs)
    for mean in means:
        (run,) = (
            r
            for r in runs
            if r["epsilon_target"] == mean["epsilon_target"] and r["task"] == mean["task"]
        )
        assert mean["seeds"] == [run["seed"]] == [11]
        assert mean["final_accuracy"] == run["final_accuracy"]
        assert mean["validation_gap_points"] == pytest.approx(run["validation_gap_points"])

    summary = document["summary"]
    assert summary["kind"] == "summary"
    assert summary["seeds"] == [11]
    assert summary["quick"] is True
    assert summary["tune"] is False
    assert summary["settings_chosen_on"].startswith("validation")
    assert isinstance(summary["goal_eps8_within_5_points_met"], bool)
    gap = next(r for r in means if r["epsilon_target"] == 8.0)["accuracy_gap_points"]
    assert summary["goal_eps8_within_5_points_met"] == (gap <= 5.0)
    assert summary["every_budget_kept"] is True

    assert png_path.read_bytes()[:8] == PNG_MAGIC
