"""The policy hash on its way to the audit log: FitMeta, the coordinator, the config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedshield.config import parse_config
from fedshield.errors import ConfigError, PayloadError
from fedshield.federation.coordinator import Committed, Coordinator, data_spec
from fedshield.federation.kits import absolute_data_paths
from fedshield.federation.round import RoundOpened
from fedshield.storage import EventLog
from fedshield.transport.messages import FitMeta

NOW = datetime(2026, 1, 1, tzinfo=UTC)
H1, H2 = "a" * 64, "b" * 64


def test_fit_meta_carries_an_optional_sha3() -> None:
    base = {"round": 1, "attempt": 1, "model_sha3": "0" * 64, "num_examples": 3}
    assert FitMeta.model_validate(base).masking_policy_sha3 is None
    assert FitMeta.model_validate({**base, "masking_policy_sha3": H1}).masking_policy_sha3 == H1
    for bad in ("A" * 64, "a" * 63, "the policy itself", ""):
        with pytest.raises(ValidationError):
            FitMeta.model_validate({**base, "masking_policy_sha3": bad})


def _coordinator(workdir: Path) -> Coordinator:
    config = parse_config(
        {
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 2},
            "rounds": {"count": 3, "min_participants": 2},
            "secure_aggregation": {"enabled": False},
            "privacy": {"mode": "off"},
        }
    )
    return Coordinator(
        config,
        workdir=workdir,
        base_dir=workdir,
        now=NOW,
        rng=np.random.default_rng(0),
        clock=lambda: NOW,
    )


def _play(coordinator: Coordinator, when: datetime, hashes: dict[str, str | None]) -> None:
    opened = [r for r in coordinator.step(when, list(hashes)) if isinstance(r, RoundOpened)]
    assert len(opened) == 1
    head, weights = coordinator.head_weights()
    for name in opened[0].selected:
        coordinator.submit_fit(
            name,
            round=opened[0].round,
            attempt=1,
            model_sha3=head.sha3,
            num_examples=5,
            update={n: np.zeros_like(a) for n, a in weights.items()},
            metrics={},
            now=when,
            masking_policy_sha3=hashes[name],
        )
    reports = coordinator.step(when + timedelta(seconds=1), list(hashes))
    assert any(isinstance(r, Committed) for r in reports)


def test_the_coordinator_records_each_sites_policy_hash(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path)
    try:
        head, _ = coordinator.head_weights()
        with pytest.raises(PayloadError, match="64 lowercase hex"):
            coordinator.submit_fit(
                "site-1",
                round=1,
                attempt=1,
                model_sha3=head.sha3,
                num_examples=5,
                update=None,
                metrics={},
                now=NOW,
                masking_policy_sha3="not a hash",
            )
        _play(coordinator, NOW, {"site-1": H1, "site-2": None})
        _play(coordinator, NOW + timedelta(minutes=1), {"site-1": H2, "site-2": None})
        _play(coordinator, NOW + timedelta(minutes=2), {"site-1": None, "site-2": None})
        events = EventLog(coordinator.db).list()
    finally:
        coordinator.close()
    contributions = [
        (e.details["round"], e.resource, e.details.get("masking_policy_sha3"))
        for e in events
        if e.action == "round.contribution"
    ]
    assert sorted(contributions) == [
        (1, "participant/site-1", H1),
        (1, "participant/site-2", None),
        (2, "participant/site-1", H2),
        (2, "participant/site-2", None),
        (3, "participant/site-1", None),
        (3, "participant/site-2", None),
    ]
    policies = [
        (e.resource, e.outcome, e.details["policy_sha3"], e.details["previous_sha3"])
        for e in events
        if e.action == "masking.policy"
    ]
    assert policies == [
        ("participant/site-1", "reported", H1, None),
        ("participant/site-1", "reported", H2, H1),
        ("participant/site-1", "removed", None, H2),
    ]


def test_masking_policy_setting_is_the_sites_and_resolved_per_participant(tmp_path: Path) -> None:
    csv_dir = tmp_path / "data"
    csv_dir.mkdir()
    (csv_dir / "h1.csv").write_text("x,target\n1,0\n2,1\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "h1.toml").write_text('[columns.x]\naction = "keep"\n')
    document = {
        "data": {
            "dataset": "csv",
            "csv_dir": "data",
            "masking_policy": "policies/{participant}.toml",
        },
        "participants": {"names": ["h1", "h2"]},
    }
    config = parse_config(document)
    spec = data_spec(config.data, seed=0, batch_size=4, participant="h1", base_dir=tmp_path)
    assert spec.masking is not None and spec.masking.policy is not None
    assert spec.masking.policy_path == tmp_path / "policies" / "h1.toml"
    assert spec.masking.policy_sha3 is not None
    # The coordinator never loads a policy.
    assert (
        data_spec(config.data, seed=0, batch_size=4, participant=None, base_dir=tmp_path).masking
        is None
    )
    # A kit carries the path absolute, the placeholder intact.
    copied = absolute_data_paths(config, tmp_path).data.masking_policy
    assert copied == str(tmp_path / "policies" / "{participant}.toml")
    # A policy the site named must exist.
    (tmp_path / "policies" / "h1.toml").unlink()
    with pytest.raises(ConfigError, match="masking policy .*h1.toml does not exist"):
        data_spec(config.data, seed=0, batch_size=4, participant="h1", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="masking_policy applies to data.dataset = 'csv' only"):
        parse_config({"data": {"dataset": "digits", "masking_policy": "p.toml"}})
