"""Specification of fedshield.config: defaults, the example file, and every way a file is wrong."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fedshield.config import FederationConfig, RoundsConfig, load_config, parse_config
from fedshield.errors import ConfigError, FedshieldError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits.toml"


def config_error(data: dict[str, Any]) -> str:
    """Return the message of the ConfigError that ``data`` must raise."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# ------------------------------------------------------------------------------ defaults


def test_empty_document_parses_to_documented_defaults() -> None:
    cfg = parse_config({})
    assert isinstance(cfg, FederationConfig)
    assert cfg.federation.name == "fedshield-demo"
    assert cfg.federation.seed == 7
    assert cfg.task.algorithm == "fedavg"
    assert cfg.task.proximal_mu == 0.0
    assert cfg.participants.count == 5
    assert cfg.participants.resolved_names() == ("site-1", "site-2", "site-3", "site-4", "site-5")
    assert cfg.rounds.count == 10
    assert cfg.rounds.min_participants == 2
    assert cfg.rounds.final_evaluation is True
    assert cfg.server.optimizer == "fedavg"
    assert cfg.transport.max_payload_bytes == 256 * 2**20
    # Secure by default: every site trains with sample-level DP unless told otherwise.
    assert cfg.privacy.mode == "sample" and cfg.privacy.enabled
    assert (cfg.privacy.target_epsilon, cfg.privacy.target_delta) == (8.0, 1e-5)
    assert cfg.privacy.max_grad_norm == 1.0 and cfg.privacy.accountant == "pld"
    assert cfg.privacy.noise_multiplier is None  # calibrated at each site
    assert cfg.privacy.sampling_rate is None  # batch_size / records at each site
    assert cfg.privacy.planned_rounds is None  # rounds.count


def test_config_is_frozen() -> None:
    cfg = parse_config({})
    with pytest.raises(ValueError):
        cfg.rounds.count = 3  # type: ignore[misc]


def test_example_file_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.federation.name == "digits-demo"
    assert cfg.task.name == "digits"
    assert cfg.task.local_epochs == 3
    assert cfg.data.partition == "dirichlet"
    assert cfg.data.dirichlet_alpha == 0.5
    assert cfg.participants.count == 5
    assert cfg.rounds.count == 10
    assert cfg.rounds.min_available == 5
    assert cfg.rounds.join_timeout_s == 60.0
    assert cfg.coordinator.port == 8443


def test_generated_names_are_zero_padded_to_the_count_width() -> None:
    names = parse_config({"participants": {"count": 12, "name_prefix": "org"}})
    assert names.participants.resolved_names()[0] == "org-01"
    assert names.participants.resolved_names()[-1] == "org-12"
    assert len(names.participants.resolved_names()) == 12


def test_explicit_names_win_over_count() -> None:
    cfg = parse_config({"participants": {"count": 9, "names": ["alpha", "beta"]}})
    assert cfg.participants.resolved_names() == ("alpha", "beta")


# ------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"task": {"learnin_rate": 0.1}}, "task.learnin_rate"),
        ({"tsk": {"name": "digits"}}, "tsk"),
        ({"rounds": {"count": 3, "timeout": 5}}, "rounds.timeout"),
        ({"transport": {"max_payload": 2048}}, "transport.max_payload"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(data: dict[str, Any], key: str) -> None:
    message = config_error(data)
    assert key in message
    assert "unknown key" in message


# ------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"task": {"learning_rate": -1}}, "task.learning_rate", "-1"),
        ({"task": {"learning_rate": 11.5}}, "task.learning_rate", "11.5"),
        ({"task": {"momentum": 1.0}}, "task.momentum", "1.0"),
        ({"task": {"local_epochs": 0}}, "task.local_epochs", "0"),
        ({"task": {"algorithm": "scaffold"}}, "task.algorithm", "scaffold"),
        ({"rounds": {"fraction": 1.5}}, "rounds.fraction", "1.5"),
        ({"rounds": {"count": 0}}, "rounds.count", "0"),
        ({"rounds": {"fit_timeout_s": -3}}, "rounds.fit_timeout_s", "-3"),
        ({"data": {"partition": "random"}}, "data.partition", "random"),
        ({"federation": {"name": "bad name"}}, "federation.name", "bad name"),
        ({"federation": {"seed": -1}}, "federation.seed", "-1"),
        ({"participants": {"names": ["admin"]}}, "participants.names", "admin"),
        ({"coordinator": {"port": 70000}}, "coordinator.port", "70000"),
        ({"server": {"learning_rate": 0}}, "server.learning_rate", "0"),
        ({"transport": {"max_payload_bytes": 10}}, "transport.max_payload_bytes", "10"),
    ],
)
def test_bad_values_name_the_key_and_the_value(data: dict[str, Any], key: str, value: str) -> None:
    message = config_error(data)
    assert key in message
    assert value in message


def test_nan_learning_rate_is_rejected() -> None:
    message = config_error({"task": {"learning_rate": math.nan}})
    assert "task.learning_rate" in message
    assert "nan" in message


def test_every_problem_is_reported_not_just_the_first() -> None:
    message = config_error({"task": {"learning_rate": -1, "batch_size": 0}})
    assert "task.learning_rate" in message
    assert "task.batch_size" in message


def test_source_prefixes_the_message() -> None:
    with pytest.raises(ConfigError, match=r"^site\.toml: "):
        parse_config({"task": {"learning_rate": -1}}, source="site.toml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fit_timeout_s", math.inf),
        ("evaluate_timeout_s", math.inf),
        ("join_timeout_s", math.inf),
        ("fit_timeout_s", 1e300),
    ],
)
def test_timeouts_must_be_representable_durations(key: str, value: float) -> None:
    # An infinite or astronomically long deadline cannot become a datetime; refuse it here,
    # not as an OverflowError in the middle of a round.
    message = config_error({"rounds": {key: value}})
    assert f"rounds.{key}" in message
    assert repr(value) in message


# ------------------------------------------------------------------------------ cross-field rules


def test_fedprox_requires_a_positive_proximal_mu() -> None:
    message = config_error({"task": {"algorithm": "fedprox"}})
    assert "task.proximal_mu" in message
    assert "> 0" in message
    cfg = parse_config({"task": {"algorithm": "fedprox", "proximal_mu": 0.01}})
    assert cfg.task.proximal_mu == 0.01


def test_proximal_mu_without_fedprox_is_rejected() -> None:
    message = config_error({"task": {"algorithm": "fedavg", "proximal_mu": 0.5}})
    assert "task.proximal_mu" in message
    assert "fedprox" in message


def test_negative_proximal_mu_names_key_and_value() -> None:
    message = config_error({"task": {"algorithm": "fedprox", "proximal_mu": -0.5}})
    assert "task.proximal_mu" in message
    assert "-0.5" in message


def test_csv_dataset_requires_csv_dir() -> None:
    message = config_error({"data": {"dataset": "csv"}})
    assert "data.csv_dir" in message


def test_min_participants_above_participant_count_is_rejected_with_the_numbers() -> None:
    message = config_error({"participants": {"count": 3}, "rounds": {"min_participants": 4}})
    assert "rounds.min_participants" in message
    assert "4" in message
    assert "3" in message
    # Exactly the participant count is allowed.
    cfg = parse_config({"participants": {"count": 3}, "rounds": {"min_participants": 3}})
    assert cfg.rounds.min_participants == 3


def test_min_participants_is_checked_against_explicit_names() -> None:
    message = config_error(
        {"participants": {"count": 10, "names": ["a", "b"]}, "rounds": {"min_participants": 3}}
    )
    assert "rounds.min_participants is 3" in message
    assert "only 2 participants" in message


@pytest.mark.parametrize("key", ["min_available", "per_round"])
def test_min_available_and_per_round_cannot_exceed_participants(key: str) -> None:
    message = config_error({"participants": {"count": 4}, "rounds": {key: 5}})
    assert f"rounds.{key} is 5" in message
    assert "only 4 participants" in message


def test_duplicate_participant_names_are_rejected() -> None:
    message = config_error({"participants": {"names": ["a", "b", "a"]}})
    assert "participants.names" in message
    assert "unique" in message


# ------------------------------------------------------------------------------ with_participants


def test_with_participants_generates_names_and_keeps_the_rest() -> None:
    base = load_config(EXAMPLE)
    big = base.with_participants(100)
    names = big.participants.resolved_names()
    assert len(names) == 100
    assert names[0] == "site-001"
    assert names[-1] == "site-100"
    assert len(set(names)) == 100
    assert big.rounds.min_participants == base.rounds.min_participants == 2
    assert big.rounds.min_available == 5
    assert big.rounds.count == base.rounds.count
    assert big.task == base.task
    # The original is untouched (configs are values).
    assert base.participants.count == 5


def test_with_participants_replaces_explicit_names() -> None:
    cfg = parse_config({"participants": {"names": ["alpha", "beta", "gamma"]}})
    assert cfg.with_participants(4).participants.resolved_names() == (
        "site-1",
        "site-2",
        "site-3",
        "site-4",
    )


def test_with_fewer_participants_lowers_quorums_to_fit() -> None:
    cfg = parse_config(
        {
            "participants": {"count": 8},
            "rounds": {"min_participants": 6, "min_available": 7, "per_round": 8},
        }
    )
    small = cfg.with_participants(3)
    assert small.participants.count == 3
    assert small.rounds.min_participants == 3
    assert small.rounds.min_available == 3
    assert small.rounds.per_round == 3
    # Growing does not raise the quorums the file chose.
    grown = cfg.with_participants(20)
    assert (grown.rounds.min_participants, grown.rounds.min_available) == (6, 7)
    assert grown.rounds.per_round == 8


@pytest.mark.parametrize("count", [0, -5])
def test_with_participants_rejects_non_positive_counts(count: int) -> None:
    with pytest.raises(ConfigError, match=f"got {count}"):
        parse_config({}).with_participants(count)


def test_with_participants_respects_the_participant_limit() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({}).with_participants(10_001)
    assert "participants.count" in str(info.value)
    assert "10001" in str(info.value)
    assert parse_config({}).with_participants(10_000).participants.count == 10_000


def test_rounds_config_defaults_are_consistent() -> None:
    rounds = RoundsConfig()
    assert rounds.per_round is None
    assert rounds.min_available is None
    assert rounds.max_retries == 2


# ------------------------------------------------------------------------------ loading files


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "does not exist" in str(info.value)
    assert str(path) in str(info.value)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "[task\nname = 'digits'\n",
        "[task]\nlearning_rate = = 1\n",
        "[task]\nname = 'a'\nname = 'b'\n",
    ],
)
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "is not valid TOML" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[federation]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


def test_bad_value_in_a_file_names_the_file_the_key_and_the_value(tmp_path: Path) -> None:
    path = tmp_path / "fed.toml"
    path.write_text("[task]\nlearning_rate = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "task.learning_rate" in message
    assert "-1" in message


def test_config_error_exit_code_and_hint() -> None:
    assert ConfigError.exit_code == 2
    with pytest.raises(ConfigError) as info:
        parse_config({"task": {"learning_rate": -1}})
    error = info.value
    assert isinstance(error, FedshieldError)
    assert error.exit_code == 2
    assert "examples/digits.toml" in error.hint


def test_with_rounds_is_validated_again() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.with_rounds(3).rounds.count == 3
    assert cfg.rounds.count == 10
    with pytest.raises(ConfigError) as info:
        cfg.with_rounds(0)
    assert "rounds.count" in str(info.value)
    assert "0" in str(info.value)


# -- [robust] ---------------------------------------------------------------------------


def test_robust_rules_are_checked_against_the_round_quorum() -> None:
    plain = {"secure_aggregation": {"enabled": False}}
    # Krum needs n >= 2f + 3: a quorum of 2 could never satisfy it.
    assert "krum requires n >= 2f + 3, got n=2" in config_error(
        {**plain, "robust": {"rule": "krum", "num_byzantine": 1}}
    )
    ok = parse_config(
        {
            **plain,
            "participants": {"count": 6},
            "rounds": {"min_participants": 5},
            "robust": {"rule": "krum", "num_byzantine": 1},
        }
    )
    assert ok.robust.rule == "krum"
    assert "mean requires num_byzantine == 0" in config_error(
        {**plain, "robust": {"num_byzantine": 1}}
    )
    assert "beta" in config_error({**plain, "robust": {"rule": "median", "params": {"beta": 0.1}}})


def test_a_robust_rule_with_secure_aggregation_needs_groups() -> None:
    assert "min_group_size" in config_error({"robust": {"rule": "median"}})
    groups = parse_config(
        {
            "participants": {"count": 6},
            "rounds": {"min_participants": 6},
            "secure_aggregation": {"min_group_size": 2},
            "robust": {"rule": "median", "num_byzantine": 1},
        }
    )
    assert groups.robust.num_byzantine == 1
    # Three groups of two cannot out-vote one Byzantine group with Krum (n >= 5).
    assert "got n=3" in config_error(
        {
            "participants": {"count": 6},
            "rounds": {"min_participants": 6},
            "secure_aggregation": {"min_group_size": 2},
            "robust": {"rule": "krum", "num_byzantine": 1},
        }
    )


# ------------------------------------------------------------------------------ privacy


@pytest.mark.parametrize(
    ("privacy", "key", "reason"),
    [
        ({"target_epsilon": 0}, "privacy.target_epsilon", "must be > 0"),
        ({"target_epsilon": -1.0}, "privacy.target_epsilon", "must be > 0"),
        ({"target_epsilon": math.inf}, "privacy.target_epsilon", "must be finite"),
        ({"target_delta": 0}, "privacy.target_delta", "in (0, 1)"),
        ({"target_delta": 1.0}, "privacy.target_delta", "in (0, 1)"),
        ({"max_grad_norm": 0}, "privacy.max_grad_norm", "> 0"),
        ({"max_grad_norm": -0.5}, "privacy.max_grad_norm", "> 0"),
        ({"noise_multiplier": 0}, "noise_multiplier is 0", "no noise is no differential"),
        ({"noise_multiplier": -1.0}, "privacy.noise_multiplier", "> 0"),
        ({"sampling_rate": 0}, "privacy.sampling_rate", "(0, 1]"),
        ({"sampling_rate": 1.5}, "privacy.sampling_rate", "(0, 1]"),
        ({"mode": "central"}, "privacy.mode", "central"),
        ({"accountant": "moments"}, "privacy.accountant", "moments"),
        ({"planned_rounds": 0}, "privacy.planned_rounds", "0"),
        ({"epsilon": 1.0}, "privacy.epsilon", "unknown key"),
    ],
)
def test_impossible_or_useless_privacy_settings_are_rejected_with_the_reason(
    privacy: dict[str, Any], key: str, reason: str
) -> None:
    message = config_error({"privacy": privacy})
    assert key in message
    assert reason in message


def test_dp_off_is_explicit_and_noise_0_is_then_allowed() -> None:
    cfg = parse_config({"privacy": {"mode": "off", "noise_multiplier": 0}})
    assert cfg.privacy.mode == "off" and not cfg.privacy.enabled
    given = parse_config({"privacy": {"noise_multiplier": 1.1, "sampling_rate": 0.1}})
    assert given.privacy.noise_multiplier == 1.1 and given.privacy.sampling_rate == 0.1
