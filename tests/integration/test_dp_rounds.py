"""Sample-level DP in the round: each site's own budget, refusal as a dropout, the ledger.

A site trains with DP-SGD under its own ``[privacy]`` settings and keeps a ledger of the
rounds it trained. A round that would take it over its budget is refused before any
training: the round goes on without it (if ``min_participants`` still holds), the
refusal and its reason are recorded, and the ledger shows only the rounds it trained.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fedshield import _toml
from fedshield.config import FederationConfig, PrivacyConfig, parse_config
from fedshield.errors import ConfigError, RoundFailedError
from fedshield.federation.agent import load_participant_file
from fedshield.federation.coordinator import Committed, utcnow
from fedshield.federation.kits import provision_federation
from fedshield.federation.privacy_ledger import LEDGER_FILE, PrivacyLedgerFile
from fedshield.federation.simulation import run_simulation
from fedshield.privacy import epsilon
from fedshield.storage import Database, EventLog, RoundLog

if TYPE_CHECKING:
    from conftest import FederationFactory

# Fixed DP-SGD settings, so that what a round costs does not depend on a site's size:
# one local epoch at sampling rate 0.1 is 10 steps at noise multiplier 1.
SIGMA, RATE, STEPS = 1.0, 0.1, 10
DELTA = 1e-5


def cost(rounds: int) -> float:
    """Epsilon of ``rounds`` rounds at the fixed settings."""
    return epsilon(noise_multiplier=SIGMA, sampling_rate=RATE, rounds=rounds * STEPS, delta=DELTA)


def dp_config(**privacy: Any) -> FederationConfig:
    return parse_config(
        {
            "federation": {"name": "dp-rounds", "seed": 3},
            "task": {"name": "digits", "local_epochs": 1, "learning_rate": 0.1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 3},
            "rounds": {"count": 3, "min_participants": 2, "max_retries": 0},
            "privacy": {
                "noise_multiplier": SIGMA,
                "sampling_rate": RATE,
                "target_epsilon": 50.0,
                **privacy,
            },
        },
        source="test",
    )


def test_a_site_at_its_budget_refuses_and_the_round_goes_on_without_it(tmp_path: Path) -> None:
    config = dp_config()
    # site-3's own budget admits one round, not two; site-2 trains without DP.
    small = (cost(1) + cost(2)) / 2
    site_privacy = {
        "site-3": config.privacy.model_copy(update={"target_epsilon": small}),
        "site-2": PrivacyConfig(mode="off"),
    }
    reports: list[Any] = []
    workdir = tmp_path / "work"
    result = run_simulation(
        config,
        workdir=workdir,
        base_dir=tmp_path,
        on_report=reports.append,
        site_privacy=site_privacy,
    )
    assert result.rounds_completed == 3
    committed = [r for r in reports if isinstance(r, Committed)]
    assert [c.answered for c in committed] == [
        ("site-1", "site-2", "site-3"),
        ("site-1", "site-2"),
        ("site-1", "site-2"),
    ]
    for c in committed[1:]:
        assert set(c.rejected) == {"site-3"}
        assert "privacy budget exhausted" in c.rejected["site-3"]
    # Each site's privacy is recorded per site, never averaged; the round keeps the largest.
    first = committed[0].metrics
    assert (first["site-1.dp"], first["site-2.dp"], first["site-3.dp"]) == (1.0, 0.0, 1.0)
    assert first["site-3.epsilon"] == first["epsilon_max"] == pytest.approx(cost(1), rel=1e-9)
    assert "epsilon" not in first and "site-2.epsilon" not in first

    # The refusal is in the round log (with its reason) and in the event log.
    db = Database.for_workdir(workdir)
    try:
        fits = [r for r in RoundLog(db).list() if r.kind == "fit"]
        events = EventLog(db).list()
    finally:
        db.close()
    assert [r.status for r in fits] == ["committed"] * 3
    assert fits[0].reason is None
    for record in fits[1:]:
        assert record.reason is not None
        assert record.reason.startswith("site-3 refused: privacy budget exhausted")
        assert f"budget of {small:g}" in record.reason
    refusals = [e for e in events if e.action == "round.refusal"]
    assert [(e.actor, e.resource) for e in refusals] == [
        ("site-3", "round/2"),
        ("site-3", "round/3"),
    ]
    no_dp = [e.resource for e in events if e.action == "security.no_dp"]
    assert no_dp == ["participant/site-2"]

    # Each ledger shows the rounds its site trained, and nothing for the refused ones.
    ledgers = {
        name: PrivacyLedgerFile(workdir / "privacy" / f"{name}.jsonl").entries
        for name in ("site-1", "site-3")
    }
    assert [e.round for e in ledgers["site-1"]] == [1, 2, 3]
    assert [e.round for e in ledgers["site-3"]] == [1]
    assert all(
        (e.noise_multiplier, e.sampling_rate, e.steps) == (SIGMA, RATE, STEPS)
        for e in ledgers["site-3"]
    )
    assert not (workdir / "privacy" / "site-2.jsonl").exists()

    # The summary: each site's epsilon and delta, within its own budget.
    privacy = result.privacy
    assert set(privacy) == {"site-1", "site-2", "site-3"}
    assert privacy["site-1"] == {
        "dp": True,
        "epsilon": pytest.approx(cost(3), rel=1e-9),
        "delta": DELTA,
        "budget": 50.0,
        "rounds": 3,
    }
    assert privacy["site-3"]["epsilon"] == pytest.approx(cost(1), rel=1e-9)
    assert privacy["site-3"]["rounds"] == 1 and privacy["site-3"]["budget"] == small
    assert privacy["site-2"] == {
        "dp": False,
        "epsilon": None,
        "delta": None,
        "budget": None,
        "rounds": 3,
    }
    for entry in (privacy["site-1"], privacy["site-3"]):
        assert entry["epsilon"] <= entry["budget"]
    # Evaluating the final model costs no training privacy: site-3 takes part.
    assert set(result.per_participant_accuracy) == {"site-1", "site-2", "site-3"}


def test_a_restarted_simulation_remembers_what_each_site_spent(tmp_path: Path) -> None:
    # Budget for two rounds: the first run trains two, the resumed run's third is refused.
    config = dp_config(target_epsilon=(cost(2) + cost(3)) / 2)
    two = parse_config(
        {**config.model_dump(), "rounds": {**config.rounds.model_dump(), "count": 2}}
    )
    workdir = tmp_path / "work"
    first = run_simulation(two, workdir=workdir, base_dir=tmp_path)
    assert first.rounds_completed == 2
    assert first.privacy["site-1"]["epsilon"] == pytest.approx(cost(2), rel=1e-9)
    with pytest.raises(RoundFailedError, match="refused: site-1: privacy budget exhausted"):
        run_simulation(config, workdir=workdir, base_dir=tmp_path)
    for name in ("site-1", "site-2", "site-3"):
        lines = (workdir / "privacy" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in lines] == [1, 2]


def test_a_delta_too_large_for_a_site_stops_the_simulation_with_the_reason(
    tmp_path: Path,
) -> None:
    config = dp_config(target_delta=0.01)  # about 380 records per site: 1/N < 0.01
    with pytest.raises(ConfigError, match=r"target_delta 0.01 is not below 1/records"):
        run_simulation(config, workdir=tmp_path / "w", base_dir=tmp_path)


def test_provision_writes_the_sites_privacy_into_their_kits(tmp_path: Path) -> None:
    config = dp_config(target_epsilon=4.0)
    kits = provision_federation(config, out_dir=tmp_path / "kits", base_dir=tmp_path, now=utcnow())
    kit = kits.participant_dirs["site-2"]
    settings = load_participant_file(kit)
    assert settings.privacy == config.privacy.model_copy(update={"planned_rounds": 3})
    document = tomllib.loads((kit / "participant.toml").read_text())
    assert document["privacy"]["mode"] == "sample"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_networked_site_at_its_budget_declines_says_so_and_ends_cleanly(
    federation_factory: FederationFactory,
) -> None:
    federation = federation_factory(
        {
            "task": {"learning_rate": 0.1},
            "rounds": {"count": 2},
            "privacy": {
                "mode": "sample",
                "noise_multiplier": SIGMA,
                "sampling_rate": RATE,
                "target_epsilon": 50.0,
            },
        }
    )
    # The site decides: site-3 lowers its own budget in its own kit to one round.
    kit = federation.kits.participant_dirs["site-3"]
    path = kit / "participant.toml"
    document = tomllib.loads(path.read_text())
    document["privacy"]["target_epsilon"] = (cost(1) + cost(2)) / 2
    path.write_text(_toml.dumps(document))
    federation.start_coordinator()
    federation.start_participants()
    codes = federation.wait_exit(federation.participants, timeout_s=150)
    assert codes == dict.fromkeys(federation.names, 0), federation.describe()

    fits = [r for r in federation.round_log() if r.kind == "fit"]
    assert [(r.number, r.status) for r in fits] == [(1, "committed"), (2, "committed")]
    assert set(fits[0].answered) == {"site-1", "site-2", "site-3"}
    assert set(fits[1].answered) == {"site-1", "site-2"}
    assert fits[1].reason is not None
    assert fits[1].reason.startswith("site-3 refused: declined: privacy budget exhausted")
    ledger = PrivacyLedgerFile(kit / LEDGER_FILE).entries
    assert [e.round for e in ledger] == [1]
    log = federation.group.tail("site-3", 200)
    assert "round 2: declining: privacy budget exhausted" in log
    assert "declined 1 (privacy budget spent)" in log
    assert "differential privacy: sample-level DP-SGD" in log
