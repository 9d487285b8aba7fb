"""The coordinator shell: resume rules and commits that must not crash it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from fedshield.config import FederationConfig, parse_config
from fedshield.federation.coordinator import Committed, Coordinator
from fedshield.federation.round import RoundOpened

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def config() -> FederationConfig:
    return parse_config(
        {
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 2},
            "rounds": {"count": 3, "min_participants": 2},
            # These tests hand the coordinator plain updates.
            "secure_aggregation": {"enabled": False},
        }
    )


def open_coordinator(workdir: Path) -> Coordinator:
    return Coordinator(
        config(),
        workdir=workdir,
        base_dir=workdir,
        now=NOW,
        rng=np.random.default_rng(0),
        clock=lambda: NOW,
    )


def test_a_round_whose_updates_cancel_out_commits_a_new_version(tmp_path: Path) -> None:
    coordinator = open_coordinator(tmp_path)
    try:
        opened = [
            r for r in coordinator.step(NOW, ["site-1", "site-2"]) if isinstance(r, RoundOpened)
        ]
        assert len(opened) == 1
        head, weights = coordinator.head_weights()
        zero = {n: np.zeros_like(a) for n, a in weights.items()}
        for name in opened[0].selected:
            coordinator.submit_fit(
                name,
                round=1,
                attempt=1,
                model_sha3=head.sha3,
                num_examples=5,
                update=zero,
                metrics={},
                now=NOW,
            )
        reports = coordinator.step(NOW + timedelta(seconds=1), ["site-1", "site-2"])
        committed = [r for r in reports if isinstance(r, Committed)]
        assert len(committed) == 1
        assert committed[0].version == 1
        assert committed[0].sha3 == head.sha3  # same weights, a new version in the lineage
        assert coordinator.machine.completed_rounds == 1
    finally:
        coordinator.close()


def test_resume_trusts_the_registry_when_the_round_log_lags(tmp_path: Path) -> None:
    # A crash between the model commit and the round-log write: the registry holds
    # round 1, the round log does not. The next round must be 2, from version 1.
    coordinator = open_coordinator(tmp_path)
    _, weights = coordinator.head_weights()
    moved = {n: a + 0.01 for n, a in weights.items()}
    coordinator.registry.commit(moved, parent=0, round=1, metrics={}, now=NOW)
    coordinator.close()

    resumed = open_coordinator(tmp_path)
    try:
        assert resumed.machine.completed_rounds == 1
        opened = [r for r in resumed.step(NOW, ["site-1", "site-2"]) if isinstance(r, RoundOpened)]
        assert opened[0].round == 2
        assert opened[0].model.version == 1
    finally:
        resumed.close()


def test_a_restart_continues_the_attempt_numbering_without_spending_retries(
    tmp_path: Path,
) -> None:
    coordinator = open_coordinator(tmp_path)
    opened = [r for r in coordinator.step(NOW, ["site-1", "site-2"]) if isinstance(r, RoundOpened)]
    assert (opened[0].round, opened[0].attempt) == (1, 1)
    coordinator.close()  # a crash inside round 1, attempt 1

    for restart in (2, 3, 4):  # more restarts than max_retries (2): never fatal
        resumed = open_coordinator(tmp_path)
        try:
            assert resumed.machine._failures == 0
            again = [
                r for r in resumed.step(NOW, ["site-1", "site-2"]) if isinstance(r, RoundOpened)
            ]
            assert (again[0].round, again[0].attempt) == (1, restart)
        finally:
            resumed.close()


def test_failed_attempts_survive_a_restart(tmp_path: Path) -> None:
    coordinator = open_coordinator(tmp_path)
    coordinator.step(NOW, ["site-1", "site-2"])
    # Nobody answers: after the fit deadline, attempt 1 fails (retry 1 of 2).
    reports = coordinator.step(NOW + timedelta(hours=1), ["site-1", "site-2"])
    assert any(type(r).__name__ == "RoundRetried" for r in reports)
    coordinator.close()

    resumed = open_coordinator(tmp_path)
    try:
        assert (resumed.machine._attempt, resumed.machine._failures) == (2, 1)
    finally:
        resumed.close()


def test_a_robust_rule_keeps_one_poisoned_update_from_moving_the_model(tmp_path: Path) -> None:
    names = [f"site-{i}" for i in range(1, 6)]
    cfg = parse_config(
        {
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 5},
            "rounds": {"count": 1, "min_participants": 5},
            "secure_aggregation": {"enabled": False},
            "robust": {"rule": "median", "num_byzantine": 1},
        }
    )
    coordinator = Coordinator(
        cfg, workdir=tmp_path, base_dir=tmp_path, now=NOW, rng=np.random.default_rng(0)
    )
    try:
        coordinator.step(NOW, names)
        head, weights = coordinator.head_weights()
        rng = np.random.default_rng(1)
        for i, name in enumerate(names):
            scale = 1e6 if i == 0 else 0.01  # site-1 tries to blow the model up
            update = {
                n: (scale * rng.standard_normal(a.shape)).astype(np.float32)
                for n, a in weights.items()
            }
            coordinator.submit_fit(
                name,
                round=1,
                attempt=1,
                model_sha3=head.sha3,
                num_examples=10**6 if i == 0 else 10,  # and claims a huge weight
                update=update,
                metrics={},
                now=NOW,
            )
        reports = coordinator.step(NOW + timedelta(seconds=1), names)
        (committed,) = [r for r in reports if isinstance(r, Committed)]
        _, new = coordinator.head_weights()
        moved = max(float(np.max(np.abs(new[n] - weights[n]))) for n in weights)
        assert moved < 0.1  # the median of four small updates and one huge one
    finally:
        coordinator.close()


def _submit_all(coordinator: Coordinator, names: list[str], value: float) -> None:
    head, weights = coordinator.head_weights()
    for name in names:
        coordinator.submit_fit(
            name,
            round=1,
            attempt=1,
            model_sha3=head.sha3,
            num_examples=5,
            update={n: np.full(a.shape, value, dtype=np.float32) for n, a in weights.items()},
            metrics={},
            now=NOW,
        )


def test_a_wrecked_but_finite_model_commits_without_a_nan_loss(tmp_path: Path) -> None:
    # Updates of 1e30 are finite, but the model's logits overflow: the server loss is not
    # a number. The round still commits (the accuracy shows the damage); no crash.
    coordinator = open_coordinator(tmp_path)
    try:
        coordinator.step(NOW, ["site-1", "site-2"])
        _submit_all(coordinator, ["site-1", "site-2"], 1e30)
        reports = coordinator.step(NOW + timedelta(seconds=1), ["site-1", "site-2"])
        (committed,) = [r for r in reports if isinstance(r, Committed)]
        head = coordinator.registry.head()
        assert head is not None and head.version == committed.version
        assert "server_accuracy" in head.metrics and "server_loss" not in head.metrics
    finally:
        coordinator.close()


def test_an_aggregate_that_overflows_float32_is_not_committed(tmp_path: Path) -> None:
    data = config().model_dump()
    data["server"]["learning_rate"] = 4.0
    data["rounds"]["max_retries"] = 0
    coordinator = Coordinator(
        parse_config(data),
        workdir=tmp_path,
        base_dir=tmp_path,
        now=NOW,
        rng=np.random.default_rng(0),
        clock=lambda: NOW,
    )
    try:
        coordinator.step(NOW, ["site-1", "site-2"])
        before, _ = coordinator.head_weights()
        _submit_all(coordinator, ["site-1", "site-2"], 3e38)  # finite, 4x overflows
        reports = coordinator.step(NOW + timedelta(seconds=1), ["site-1", "site-2"])
        assert not [r for r in reports if isinstance(r, Committed)]
        assert coordinator.machine.failure is not None
        assert "overflows float32" in coordinator.machine.failure
        after, _ = coordinator.head_weights()
        assert after.sha3 == before.sha3
    finally:
        coordinator.close()
