"""FLTrust and FoolsGold in the round: the state the coordinator supplies them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import ConfigError
from fedshield.federation.coordinator import Committed, Coordinator
from fedshield.federation.round import RoundOpened
from fedshield.federation.simulation import run_simulation
from fedshield.tensors import flatten, unflatten

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
NAMES = [f"site-{i}" for i in range(1, 6)]


def _config(rule: str, **extra: Any) -> FederationConfig:
    data: dict[str, Any] = {
        "federation": {"name": "stateful", "seed": 4},
        "task": {"name": "digits", "local_epochs": 1},
        "data": {"dataset": "digits", "partition": "iid"},
        "participants": {"count": 5},
        "rounds": {"count": 2, "min_participants": 5, "max_retries": 0},
        "secure_aggregation": {"enabled": False},
        "privacy": {"mode": "off"},  # plain training: the rules alone are under test
        "robust": {"rule": rule, "quarantine_after": None},
    }
    for key, value in extra.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data, source="test")


def test_the_config_refuses_what_the_stateful_rules_cannot_do() -> None:
    with pytest.raises(ConfigError, match="foolsgold.*secure aggregation hides"):
        _config(
            "foolsgold",
            secure_aggregation={"enabled": True, "min_group_size": 2},
            rounds={"min_participants": 4},
        )
    with pytest.raises(ConfigError, match="fltrust.*root dataset"):
        _config("fltrust", data={"server_test_fraction": 0.0})
    assert _config("fltrust").robust.root_examples == 100
    assert _config("foolsgold").robust.rule == "foolsgold"
    # FLTrust over group means is fine: the root update is compared with each mean.
    grouped = _config(
        "fltrust",
        secure_aggregation={"enabled": True, "min_group_size": 2},
        rounds={"min_participants": 4},
    )
    assert grouped.secure_aggregation.enabled


def test_root_examples_must_leave_a_test_set(tmp_path: Path) -> None:
    # digits: 1,797 records, 20% held out at the server = 359.
    config = _config("fltrust", robust={"root_examples": 359})
    with pytest.raises(ConfigError, match="leaves none of the server's 359"):
        Coordinator(config, workdir=tmp_path, base_dir=tmp_path, now=NOW)


def _sign_flip(opened: RoundOpened, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(vectors)
    out["site-1"] = -5.0 * vectors["site-1"]  # one attacker, boosted past the other four
    return out


def test_fltrust_keeps_learning_under_a_boosted_sign_flip(tmp_path: Path) -> None:
    # FLTrust rescales every update to the root update's norm, so its steps are those of
    # the root dataset: 300 records learn about as fast as the clean mean (about 60%
    # after 3 rounds here; 100 records reach about 40%).
    accuracy = {}
    for rule in ("mean", "fltrust"):
        result = run_simulation(
            _config(rule, rounds={"count": 3}, robust={"root_examples": 300}),
            workdir=tmp_path / rule,
            base_dir=tmp_path,
            tamper_updates=_sign_flip,
        )
        assert result.rounds_completed == 3
        accuracy[rule] = result.final_accuracy
    assert accuracy["fltrust"] is not None and accuracy["mean"] is not None
    assert accuracy["fltrust"] > 0.5, accuracy
    assert accuracy["mean"] < 0.2, accuracy  # the flip wrecks FedAvg


def test_foolsgold_mutes_sybils_by_their_history(tmp_path: Path) -> None:
    coordinator = Coordinator(
        _config("foolsgold"),
        workdir=tmp_path,
        base_dir=tmp_path,
        now=NOW,
        rng=np.random.default_rng(0),
        clock=lambda: NOW,
    )
    rng = np.random.default_rng(1)
    try:
        layout = coordinator.layout
        sybil = rng.standard_normal(layout.size)
        honest = {n: rng.standard_normal(layout.size) for n in NAMES[2:]}
        for number in (1, 2):
            now = NOW + timedelta(minutes=number)
            coordinator.step(now, NAMES)
            head, weights = coordinator.head_weights()
            before = flatten(weights, layout)
            for name in NAMES:
                # Two Sybils repeat one update; three honest sites differ from each other.
                vector = sybil if name in NAMES[:2] else honest[name]
                noise = 0.1 * rng.standard_normal(layout.size)
                update = vector + noise
                coordinator.submit_fit(
                    name,
                    round=number,
                    attempt=1,
                    model_sha3=head.sha3,
                    num_examples=10,
                    update={k: v.astype(np.float32) for k, v in unflatten(update, layout).items()},
                    metrics={},
                    now=now,
                )
            reports = coordinator.step(now + timedelta(seconds=1), NAMES)
            assert [r for r in reports if isinstance(r, Committed)]
            _, after_weights = coordinator.head_weights()
            moved = flatten(after_weights, layout) - before
            towards_sybil = float(moved @ sybil) / float(sybil @ sybil)
            honest_mean = np.mean([honest[n] for n in NAMES[2:]], axis=0)
            towards_honest = float(moved @ honest_mean) / float(honest_mean @ honest_mean)
            # The Sybils' shared direction is (nearly) gone; the honest sites' is kept.
            assert abs(towards_sybil) < 0.05, (number, towards_sybil)
            assert towards_honest > 0.3, (number, towards_honest)
    finally:
        coordinator.close()
