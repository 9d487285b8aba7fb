"""End to end: the in-process simulation and the ``fedshield simulate`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import RoundFailedError
from fedshield.federation.coordinator import Committed
from fedshield.federation.round import FederationFinished, RoundEvaluated, RoundOpened
from fedshield.federation.simulation import SimulationResult, run_simulation
from fedshield.storage import BlobStore, Database, ModelRegistry
from fedshield.tensors import weights_sha3

ROOT = Path(__file__).resolve().parents[2]


def small_config() -> FederationConfig:
    return parse_config(
        {
            "federation": {"name": "sim-test", "seed": 11},
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 4},
            "rounds": {"count": 3, "min_participants": 2},
            "privacy": {"mode": "off"},
        },
        source="test",
    )


class Run:
    """A finished simulation, the reports it made, and its workdir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.reports: list[Any] = []
        self.result: SimulationResult = run_simulation(
            small_config(), workdir=workdir, base_dir=workdir, on_report=self.reports.append
        )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("sim") / "work")


@pytest.fixture
def registry(first_run: Run) -> Iterator[ModelRegistry]:
    db = Database.for_workdir(first_run.workdir)
    try:
        yield ModelRegistry(db, BlobStore(first_run.workdir / "models"))
    finally:
        db.close()


def test_simulation_completes_every_round(first_run: Run) -> None:
    result = first_run.result
    assert result.rounds_completed == 3
    assert result.model_version == 3
    assert result.participants == 4
    assert result.final_accuracy is not None
    assert 0.0 <= result.final_accuracy <= 1.0
    assert set(result.per_participant_accuracy) == {"site-1", "site-2", "site-3", "site-4"}


def test_simulation_reports_rounds_in_order(first_run: Run) -> None:
    opened = [r for r in first_run.reports if isinstance(r, RoundOpened)]
    assert [(r.round, r.kind) for r in opened] == [
        (1, "fit"),
        (2, "fit"),
        (3, "fit"),
        (4, "evaluate"),
    ]
    committed = [r for r in first_run.reports if isinstance(r, Committed)]
    assert [(c.round, c.version) for c in committed] == [(1, 1), (2, 2), (3, 3)]
    assert all(c.answered == ("site-1", "site-2", "site-3", "site-4") for c in committed)
    assert sum(isinstance(r, RoundEvaluated) for r in first_run.reports) == 1
    assert isinstance(first_run.reports[-1], FederationFinished)
    assert first_run.reports[-1].model.version == 3


def test_registry_holds_a_chain_of_versions(first_run: Run, registry: ModelRegistry) -> None:
    versions = registry.list()
    assert [v.version for v in versions] == [0, 1, 2, 3]
    assert [v.parent for v in versions] == [None, 0, 1, 2]
    assert [v.round for v in versions] == [None, 1, 2, 3]
    assert len({v.sha3 for v in versions}) == 4
    head = registry.head()
    assert head is not None
    assert head.version == 3
    assert head.sha3 == first_run.result.model_sha3
    assert weights_sha3(registry.load(3)) == first_run.result.model_sha3
    assert head.metrics["server_accuracy"] == first_run.result.final_accuracy


def test_rerun_after_completion_adds_no_versions(first_run: Run) -> None:
    again = Run(first_run.workdir)
    assert again.result.rounds_completed == 3
    assert again.result.model_version == 3
    assert again.result.model_sha3 == first_run.result.model_sha3
    assert not any(isinstance(r, RoundOpened | Committed) for r in again.reports)
    assert isinstance(again.reports[-1], FederationFinished)
    db = Database.for_workdir(first_run.workdir)
    try:
        registry = ModelRegistry(db, BlobStore(first_run.workdir / "models"))
        assert [v.version for v in registry.list()] == [0, 1, 2, 3]
    finally:
        db.close()


# ------------------------------------------------------------------------------ the CLI


def fedshield(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedshield", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def hundred() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = fedshield(
        "simulate",
        "examples/digits.toml",
        "--participants",
        "100",
        "--rounds",
        "3",
        "--no-dp",  # 100 sites of ~11 records: a test of scale, not of DP
        "--json",
        "-",
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout)


@pytest.mark.slow
def test_cli_simulate_writes_a_json_summary(
    hundred: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, summary = hundred
    assert summary["participants"] == 100
    assert summary["rounds_completed"] == 3
    assert summary["model_version"] == 3
    assert summary["federation"] == "digits-demo"
    assert summary["transport"] == "in-process"
    assert len(summary["model_sha3"]) == 64
    assert isinstance(summary["final_accuracy"], float)
    assert 0.1 < summary["final_accuracy"] <= 1.0  # better than chance on 10 classes
    assert len(summary["per_participant_accuracy"]) == 100
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_missing_config_exits_2_without_a_traceback() -> None:
    done = fedshield("simulate", "missing.toml")
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    assert "missing.toml" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_secure_aggregation_in_simulation_matches_plain_fedavg(tmp_path: Path) -> None:
    base = {
        "federation": {"name": "sim-secagg", "seed": 7},
        "task": {"name": "digits", "local_epochs": 2},
        "data": {"dataset": "digits", "partition": "iid"},
        "participants": {"count": 4},
        "rounds": {"count": 3},
        "privacy": {"mode": "off"},
    }
    plain_cfg = parse_config({**base, "secure_aggregation": {"enabled": False}})
    plain = run_simulation(plain_cfg, workdir=tmp_path / "plain", base_dir=tmp_path)
    secure_cfg = parse_config({**base, "secure_aggregation": {"enabled": True, "clip_range": 1.0}})
    secure = run_simulation(secure_cfg, workdir=tmp_path / "secure", base_dir=tmp_path)
    assert secure.secure_aggregation and not plain.secure_aggregation
    assert secure.rounds_completed == 3
    assert plain.final_accuracy is not None and secure.final_accuracy is not None
    # Quantization (stochastic, unbiased) is the only difference.
    assert abs(secure.final_accuracy - plain.final_accuracy) <= 0.03


def test_group_wise_secure_aggregation_in_simulation(tmp_path: Path) -> None:
    base = {
        "federation": {"name": "sim-groups", "seed": 7},
        "task": {"name": "digits", "local_epochs": 2},
        "data": {"dataset": "digits", "partition": "iid"},
        "participants": {"count": 6},
        "rounds": {"count": 3},
        "privacy": {"mode": "off"},
    }
    secure = {"enabled": True, "clip_range": 1.0}
    whole = run_simulation(
        parse_config({**base, "secure_aggregation": secure}),
        workdir=tmp_path / "whole",
        base_dir=tmp_path,
    )
    grouped = run_simulation(
        parse_config({**base, "secure_aggregation": {**secure, "min_group_size": 3}}),
        workdir=tmp_path / "groups",
        base_dir=tmp_path,
    )
    assert grouped.rounds_completed == 3
    assert whole.final_accuracy is not None and grouped.final_accuracy is not None
    # Two group sums weighted by their totals are the same mean, up to quantization.
    assert abs(grouped.final_accuracy - whole.final_accuracy) <= 0.03


def test_too_large_a_group_size_fails_the_round_with_the_reason(tmp_path: Path) -> None:
    config = parse_config(
        {
            "federation": {"name": "sim-groups", "seed": 7},
            "task": {"name": "digits", "local_epochs": 1},
            "participants": {"count": 4},
            "rounds": {"count": 1, "fraction": 0.5, "max_retries": 0},
            "secure_aggregation": {"enabled": True, "min_group_size": 3},
            "privacy": {"mode": "off"},
        }
    )
    with pytest.raises(RoundFailedError, match="cannot form a group of at least 3"):
        run_simulation(config, workdir=tmp_path / "w", base_dir=tmp_path)


def test_a_robust_rule_over_secure_group_means_in_simulation(tmp_path: Path) -> None:
    def run(rule: str, num_byzantine: int) -> SimulationResult:
        config = parse_config(
            {
                "federation": {"name": "sim-robust-groups", "seed": 7},
                "task": {"name": "digits", "local_epochs": 2},
                "data": {"dataset": "digits", "partition": "iid"},
                "participants": {"count": 6},
                "rounds": {"count": 3, "min_participants": 6},
                "secure_aggregation": {"enabled": True, "clip_range": 1.0, "min_group_size": 2},
                "robust": {"rule": rule, "num_byzantine": num_byzantine},
                "privacy": {"mode": "off"},
            }
        )
        return run_simulation(config, workdir=tmp_path / rule, base_dir=tmp_path)

    median, mean = run("median", 1), run("mean", 0)
    assert median.secure_aggregation and median.rounds_completed == 3
    assert median.final_accuracy is not None and mean.final_accuracy is not None
    # Without an attack the median of three group means costs little against their mean
    # (groups and quantization are random, so allow some spread).
    assert median.final_accuracy >= 0.7
    assert abs(median.final_accuracy - mean.final_accuracy) <= 0.1
