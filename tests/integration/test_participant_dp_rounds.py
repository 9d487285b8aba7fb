"""Participant-level DP-FedAvg through the round machine, and in a simulated federation.

All-zero updates make the committed model's change pure noise: its standard deviation
must be the configured ``z * C / n`` (central), round after round with adaptive clipping
(each round with the bound its updates were clipped to), and ``2 z C / sqrt(n)`` (local).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.config import parse_config
from fedshield.errors import ConfigError, ProtocolError
from fedshield.federation.agent import load_participant_file
from fedshield.federation.coordinator import participant_dp_policy
from fedshield.federation.kits import provision_federation
from fedshield.federation.round import CommitRequest, ModelRef, RoundMachine, RoundPolicy
from fedshield.federation.secure_agent import SecureSession
from fedshield.federation.simulation import run_simulation
from fedshield.privacy import epsilon
from fedshield.privacy.clipping import AdaptiveClipping, update_noise_multiplier
from fedshield.privacy.distributed import DistributedEncoding, Rotation
from fedshield.privacy.dpfedavg import ParticipantDP, local_update
from fedshield.secagg.randomness import deterministic_random
from fedshield.storage import BlobStore, Database, ModelRegistry, RoundLog
from fedshield.storage.privacy import PARTICIPANTS, PrivacyEvents
from fedshield.tensors import Layout, unflatten, weights_sha3
from fedshield.training.server_opt import FedAvg

if TYPE_CHECKING:
    from conftest import FederationFactory

T0 = datetime(2026, 1, 1, tzinfo=UTC)
D = 30_000
HEAD = {"w": np.zeros(D, dtype=np.float32)}
NAMES = [f"p{i:02d}" for i in range(10)]


def _machine(dp: ParticipantDP) -> RoundMachine:
    return RoundMachine(
        federation="dp",
        policy=RoundPolicy(rounds=5, min_participants=2, participant_dp=dp),
        head=ModelRef(0, weights_sha3(HEAD)),
        head_weights=HEAD,
        completed_rounds=0,
        optimizer=FedAvg(learning_rate=1.0),
        rng=np.random.default_rng(0),
        noise_rng=deterministic_random(b"round-noise"),
    )


def _round(m: RoundMachine, version: int, *, local_seed: bytes | None = None) -> CommitRequest:
    opened = m.tick(T0, NAMES)[0]
    rng = deterministic_random(local_seed or b"unused")
    for name in opened.selected:  # type: ignore[attr-defined]
        update = {"w": np.zeros(D, dtype=np.float32)}
        assignment = m.assignment_for(name, T0)
        assert assignment is not None
        if assignment.local_dp is not None:
            clip, z = assignment.local_dp
            noised, _ = local_update(np.zeros(D), clip_norm=clip, noise_multiplier=z, rng=rng)
            update = unflatten(noised.astype(np.float32), Layout.of(HEAD))
        m.submit_fit(
            name,
            round=opened.round,  # type: ignore[attr-defined]
            attempt=opened.attempt,  # type: ignore[attr-defined]
            model_sha3=m.head.sha3,
            num_examples=100 + len(name),  # unequal counts must not weigh
            update=update,
            metrics={},
            now=T0,
        )
    events = m.tick(T0 + timedelta(seconds=1), NAMES)
    request = events[0]
    assert isinstance(request, CommitRequest), events
    m.committed(ModelRef(version, request.sha3), request.weights)
    return request


def _close(measured: float, expected: float) -> None:
    assert abs(measured / expected - 1.0) < 0.05, (measured, expected)


def test_central_fixed_noise_in_the_model_is_z_c_over_n() -> None:
    z, c = 1.1, 0.5
    m = _machine(ParticipantDP("central", z, c, "fixed", 1.0))
    previous = np.zeros(D)
    for version in (1, 2):
        request = _round(m, version)
        model = request.weights["w"].astype(np.float64)
        _close(float(np.std(model - previous)), z * c / len(NAMES))
        assert request.metrics["dp_clip_norm"] == c
        assert request.metrics["dp_noise_std"] == pytest.approx(z * c)
        previous = model


def test_adaptive_rounds_noise_with_the_bound_they_clipped_to() -> None:
    z, c = 1.0, 2.0
    adaptive = AdaptiveClipping(count_noise_std=5.0)
    m = _machine(ParticipantDP("central", z, c, "fixed", 1.0, adaptive))
    z_update = update_noise_multiplier(z, count_noise_std=5.0)
    previous = np.zeros(D)
    bounds = []
    for version in (1, 2, 3):
        bound = m.clip_norm
        assert bound is not None
        request = _round(m, version)
        model = request.weights["w"].astype(np.float64)
        assert request.metrics["dp_clip_norm"] == bound
        _close(float(np.std(model - previous)), z_update * bound / len(NAMES))
        bounds.append(bound)
        previous = model
    # Zero updates are all within the bound: it shrinks round after round.
    assert bounds[0] > bounds[1] > bounds[2]


def test_local_noise_in_the_model_is_2zc_over_sqrt_n() -> None:
    z, c = 0.9, 0.3
    m = _machine(ParticipantDP("local", z, c, "fixed", 1.0))
    request = _round(m, 1, local_seed=b"sites")
    model = request.weights["w"].astype(np.float64)
    _close(float(np.std(model)), 2 * z * c / math.sqrt(len(NAMES)))


def test_poisson_selection_divides_by_the_expected_count() -> None:
    z, c, q = 1.0, 1.0, 0.5
    m = _machine(ParticipantDP("central", z, c, "poisson", q))
    request = _round(m, 1)
    _close(float(np.std(request.weights["w"])), z * c / (q * len(NAMES)))
    assert request.metrics["dp_sampling_rate"] == q


def _sim_config(**dp: object) -> dict[str, object]:
    return {
        "federation": {"name": "pdp", "seed": 5},
        "task": {"name": "digits", "local_epochs": 1, "learning_rate": 0.1},
        "data": {"dataset": "digits", "partition": "iid"},
        "participants": {"count": 4},
        "rounds": {"count": 3, "min_participants": 2, "max_retries": 0},
        "secure_aggregation": {"enabled": False},
        "privacy": {"mode": "off"},
        "participant_dp": dp,
    }


@pytest.mark.parametrize(
    "dp",
    [
        {"noise": "central", "clipping": "adaptive", "target_epsilon": 4.0, "clip_norm": 0.5},
        {"noise": "local", "target_epsilon": 50.0, "clip_norm": 2.0},
    ],
    ids=["central-adaptive", "local"],
)
def test_simulation_trains_with_participant_dp(tmp_path: Path, dp: dict[str, object]) -> None:
    if dp.get("clipping") == "adaptive":
        dp["clipped_count_stddev"] = 2.0
    config = parse_config(_sim_config(**dp), source="test")
    policy = participant_dp_policy(config)
    assert policy is not None
    if dp["noise"] == "central":  # calibrated to spend the budget over the planned rounds
        z = policy.noise_multiplier
        spent = epsilon(noise_multiplier=z, sampling_rate=1.0, rounds=3, delta=1e-5)
        assert spent == pytest.approx(4.0, rel=0.01)
    result = run_simulation(config, workdir=tmp_path / "work", base_dir=tmp_path)
    assert result.rounds_completed == 3
    assert result.final_accuracy is not None and 0.0 <= result.final_accuracy <= 1.0


def test_config_rejects_impossible_participant_dp() -> None:
    base = _sim_config(noise="central", clipping="adaptive", noise_multiplier=3.0)
    config = parse_config(base, source="test")
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        participant_dp_policy(config)  # 4 sites / 20 = 0.2 count noise: z=3 cannot split


@pytest.mark.slow
def test_local_noise_over_tls_is_added_by_the_sites(
    federation_factory: FederationFactory,
) -> None:
    """Real processes: each site clips and noises its own update from the task's settings.

    The noise is far larger than any digits update, so the first model's change is the
    sites' noise: standard deviation ``2 z C / sqrt(n)`` within 5%.
    """
    z, c = 20.0, 1.0
    federation = federation_factory(
        {
            "rounds": {"count": 1, "final_evaluation": False},
            "participant_dp": {"noise": "local", "noise_multiplier": z, "clip_norm": c},
        }
    )
    federation.start_coordinator()
    federation.start_participants()
    codes = federation.wait_exit(federation.participants, timeout_s=150)
    assert codes == dict.fromkeys(federation.names, 0), federation.describe()
    fits = [r for r in federation.round_log() if r.kind == "fit"]
    assert [r.status for r in fits][-1] == "committed", [(r.status, r.reason) for r in fits]
    fit = fits[-1]
    n = len(fit.answered)
    assert n == len(federation.names)
    assert fit.metrics["local_dp"] == 1.0  # every site reported it noised its update
    assert fit.metrics["dp_noise_std"] == pytest.approx(2 * z * c)
    db = Database.for_workdir(federation.workdir)
    try:
        registry = ModelRegistry(db, BlobStore(federation.workdir / "models"))
        before, after = registry.load(0), registry.load(1)
    finally:
        db.close()
    change = np.concatenate(
        [(after[k].astype(np.float64) - before[k]).ravel() for k in sorted(after)]
    )
    _close(float(np.std(change)), 2 * z * c / math.sqrt(n))


def test_simulation_with_distributed_noise_inside_secagg(tmp_path: Path) -> None:
    document = _sim_config(noise="distributed", target_epsilon=6.0, clip_norm=1.0)
    document["secure_aggregation"] = {"enabled": True, "ring_bits": 64}
    config = parse_config(document, source="test")
    policy = participant_dp_policy(config)
    assert policy is not None
    workdir = tmp_path / "work"
    result = run_simulation(config, workdir=workdir, base_dir=tmp_path)
    assert result.rounds_completed == 3
    db = Database.for_workdir(workdir)
    try:
        fits = [r for r in RoundLog(db).list() if r.kind == "fit" and r.status == "committed"]
        events = PrivacyEvents(db).list(PARTICIPANTS)
    finally:
        db.close()
    assert [e.mechanism for e in events] == ["dp-fedavg-distributed"] * 3
    for record in fits:  # nobody dropped: the whole z, and the budget spent on plan
        assert record.metrics["dp_noise_multiplier"] == pytest.approx(policy.noise_multiplier)
    assert fits[-1].metrics["dp_epsilon"] == pytest.approx(6.0, rel=0.01)
    assert fits[-1].metrics["dp_epsilon"] <= 6.0 * (1 + 1e-6)


def test_a_restart_refuses_rounds_beyond_the_participant_budget(tmp_path: Path) -> None:
    document = _sim_config(noise="central", target_epsilon=3.0)
    workdir = tmp_path / "work"
    run_simulation(parse_config(document, source="test"), workdir=workdir, base_dir=tmp_path)
    more = {**document, "rounds": {**document["rounds"], "count": 5}}  # type: ignore[dict-item]
    more["participant_dp"] = {"noise": "central", "noise_multiplier": 1.0, "target_epsilon": 3.0}
    with pytest.raises(ConfigError, match="participant_dp.target_epsilon"):
        run_simulation(parse_config(more, source="test"), workdir=workdir, base_dir=tmp_path)


@pytest.mark.slow
def test_distributed_noise_over_tls_comes_from_the_sites_shares(
    federation_factory: FederationFactory,
) -> None:
    """Real processes and SecAgg+: the sites' discrete Gaussian shares make up the noise.

    The noise dwarfs any digits update, so the first model's change has standard
    deviation ``z * C / n`` (all survive) within 5%; the coordinator never held more.
    """
    z, c = 30.0, 1.0
    federation = federation_factory(
        {
            "rounds": {"count": 1, "final_evaluation": False},
            "secure_aggregation": {"enabled": True, "ring_bits": 64, "stage_timeout_s": 4.0},
            "participant_dp": {"noise": "distributed", "noise_multiplier": z, "clip_norm": c},
        }
    )
    federation.start_coordinator()
    federation.start_participants()
    codes = federation.wait_exit(federation.participants, timeout_s=150)
    assert codes == dict.fromkeys(federation.names, 0), federation.describe()
    fits = [r for r in federation.round_log() if r.kind == "fit"]
    assert fits[-1].status == "committed", [(r.status, r.reason) for r in fits]
    fit = fits[-1]
    n = len(fit.answered)
    assert n == len(federation.names)
    assert fit.metrics["dp_noise_multiplier"] == pytest.approx(z)
    db = Database.for_workdir(federation.workdir)
    try:
        registry = ModelRegistry(db, BlobStore(federation.workdir / "models"))
        before, after = registry.load(0), registry.load(1)
        events = PrivacyEvents(db).list(PARTICIPANTS)
    finally:
        db.close()
    assert [e.mechanism for e in events] == ["dp-fedavg-distributed"]
    change = np.concatenate(
        [(after[k].astype(np.float64) - before[k]).ravel() for k in sorted(after)]
    )
    _close(float(np.std(change)), z * c / n)


def _session(min_noise: float | None, dim: int = 100) -> SecureSession:
    return SecureSession(
        name="p00",
        federation="dp",
        round=1,
        attempt=1,
        update=np.zeros(dim, dtype=np.float32),
        num_examples=10,
        signing_key=Ed25519PrivateKey.generate(),
        ca_cert=None,  # type: ignore[arg-type]  # not reached: only the DP settings are checked
        clock=lambda: T0,
        min_noise_multiplier=min_noise,
    )


def _settings(z: float, participants: int, dim: int = 100) -> dict[str, object]:
    encoding = DistributedEncoding(
        clip_norm=1.0,
        noise_multiplier=z,
        sensitivity_factor=1.0,
        participants=participants,
        rotation=Rotation(seed=bytes(32), dim=dim),
    )
    return encoding.public()


def test_a_site_refuses_distributed_settings_below_its_floor_or_inflated() -> None:
    setup = SimpleNamespace(participants=("p00", "p01", "p02"), ring_bits=64)
    session = _session(min_noise=1.0)
    assert session._distributed(_settings(1.0, 3), setup) is not None  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="below this site's minimum"):
        session._distributed(_settings(0.5, 3), setup)  # type: ignore[arg-type]
    # Claiming more participants would shrink every site's share of the noise.
    with pytest.raises(ProtocolError, match="split the noise over 30"):
        session._distributed(_settings(1.0, 30), setup)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="carries no distributed DP settings"):
        session._distributed(None, setup)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="malformed"):
        session._distributed({"clip_norm": "x"}, setup)  # type: ignore[arg-type]


@pytest.mark.parametrize("noise", ["local", "distributed"])
def test_provisioned_kits_carry_the_planned_noise_as_the_sites_floor(
    tmp_path: Path, noise: str
) -> None:
    document = _sim_config(noise=noise, target_epsilon=5.0)
    if noise == "distributed":
        document["secure_aggregation"] = {"enabled": True, "ring_bits": 64}
    config = parse_config(document, source="test")
    policy = participant_dp_policy(config)
    assert policy is not None
    kits = provision_federation(config, out_dir=tmp_path / "kits", base_dir=tmp_path, now=T0)
    for kit in kits.participant_dirs.values():
        site = load_participant_file(kit)
        assert site.participant.min_participant_noise == pytest.approx(policy.noise_multiplier)
