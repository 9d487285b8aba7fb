"""The red-team runner, its simulation hooks and ``fedshield redteam``."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedshield.attacks.redteam import (
    byzantine_budget,
    choose_malicious,
    redteam_config,
    run_redteam,
)
from fedshield.config import FederationConfig, parse_config
from fedshield.errors import ConfigError
from fedshield.federation.round import RoundOpened
from fedshield.federation.simulation import run_simulation
from fedshield.training.tasks import TaskParts

TINY_TOML = """\
[federation]
name = "redteam-tiny"
seed = 7

[task]
name = "digits"
local_epochs = 2

[data]
dataset = "digits"
partition = "iid"

[participants]
count = 6

[rounds]
count = 3

[privacy]
mode = "off"
"""


def plain_config() -> FederationConfig:
    return parse_config(
        {
            "federation": {"name": "hooks-test", "seed": 5},
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 3},
            "rounds": {"count": 2, "min_participants": 3},
            "secure_aggregation": {"enabled": False},
            "privacy": {"mode": "off"},
        },
        source="test",
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_cli_runs_the_matrix_and_median_resists_sign_flip(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out, plot = tmp_path / "redteam.json", tmp_path / "redteam.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedshield",
            "redteam",
            str(config),
            "--attacks",
            "sign_flip,scaling",
            "--defenses",
            "mean,median",
            "--malicious-fraction",
            "0.1",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sign_flip" in done.stdout and "median" in done.stdout
    report = json.loads(out.read_text())
    cells = {(c["attack"], c["defense"]): c for c in report["cells"]}
    assert set(cells) == {
        (a, d) for a in ("none", "sign_flip", "scaling") for d in ("mean", "median")
    }
    assert report["settings"]["participants"] == 6
    assert len(report["settings"]["malicious"]) == 1  # ceil(0.1 * 6)
    assert report["settings"]["num_byzantine"] == {"mean": 0, "median": 1}
    for cell in cells.values():
        assert cell["final_accuracy"] is not None and 0.0 <= cell["final_accuracy"] <= 1.0
    clean = cells[("none", "mean")]["final_accuracy"]
    assert clean > 0.6, f"the clean federation should learn digits, got {clean}"
    # The boosted sign flip wrecks the mean; the median keeps most of its accuracy.
    mean_drop = cells[("sign_flip", "mean")]["accuracy_drop"]
    median_drop = cells[("sign_flip", "median")]["accuracy_drop"]
    assert mean_drop > 0.3, cells[("sign_flip", "mean")]
    assert mean_drop - median_drop > 0.2, (mean_drop, median_drop)
    # So does model replacement (the honest update boosted n times).
    scaled_mean = cells[("scaling", "mean")]["accuracy_drop"]
    scaled_median = cells[("scaling", "median")]["accuracy_drop"]
    assert scaled_mean - scaled_median > 0.1, (scaled_mean, scaled_median)
    width, height = png_size(plot)
    assert width > 100 and height > 100


def test_hooks_are_no_ops_when_absent_or_identity(tmp_path: Path) -> None:
    config = plain_config()
    plain = run_simulation(config, workdir=tmp_path / "a", base_dir=tmp_path)
    explicit = run_simulation(
        config, workdir=tmp_path / "b", base_dir=tmp_path, tamper_updates=None, site_parts=None
    )
    seen: list[str] = []

    def same_parts(name: str, parts: TaskParts) -> TaskParts:
        seen.append(name)
        return parts

    def same_updates(opened: RoundOpened, vectors: dict[str, np.ndarray]) -> Any:
        assert opened.kind == "fit"
        assert all(v.dtype == np.float32 and v.ndim == 1 for v in vectors.values())
        return vectors

    identity = run_simulation(
        config,
        workdir=tmp_path / "c",
        base_dir=tmp_path,
        tamper_updates=same_updates,
        site_parts=same_parts,
    )
    assert plain.model_sha3 == explicit.model_sha3 == identity.model_sha3
    assert sorted(seen) == ["site-1", "site-2", "site-3"]  # once per participant


def test_tamper_hook_replaces_what_is_aggregated(tmp_path: Path) -> None:
    zeroed = run_simulation(
        plain_config(),
        workdir=tmp_path / "z",
        base_dir=tmp_path,
        tamper_updates=lambda opened, vectors: {n: np.zeros_like(v) for n, v in vectors.items()},
    )
    initial = run_simulation(
        plain_config().with_rounds(1),
        workdir=tmp_path / "i",
        base_dir=tmp_path,
        tamper_updates=lambda opened, vectors: {n: np.zeros_like(v) for n, v in vectors.items()},
    )
    # Zero updates leave the initial model in place, however many rounds run.
    assert zeroed.rounds_completed == 2
    assert zeroed.model_sha3 == initial.model_sha3


def test_group_wise_mode_caps_f_and_reports_what_cannot_run(tmp_path: Path) -> None:
    config = parse_config(
        {
            "federation": {"name": "groups-test", "seed": 3},
            "task": {"name": "digits", "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid"},
            "participants": {"count": 6},
            "rounds": {"count": 2},
            "privacy": {"mode": "off"},
        },
        source="test",
    )
    report = run_redteam(
        config,
        base_dir=tmp_path,
        attacks=["ipm"],
        defenses=["median", "bulyan"],
        malicious_fraction=0.3,  # 2 of 6
        secure_groups=3,
    )
    settings = report.settings
    assert settings["secure_aggregation"] == "group-wise"
    assert settings["groups"] == 3 and settings["min_group_size"] == 2
    # Two attackers could spoil two of three groups; the median tolerates only one.
    assert settings["num_byzantine"] == {"median": 1}
    median = report.cell("ipm", "median")
    assert median.status in ("ok", "failed") and median.final_accuracy is not None
    bulyan = report.cell("ipm", "bulyan")
    assert bulyan.status == "not_applicable"
    assert bulyan.reason is not None and "n >= 4f + 3" in bulyan.reason
    assert report.cell("none", "bulyan").status == "not_applicable"


def test_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    config = plain_config().with_participants(6)
    with pytest.raises(ConfigError, match="unknown attack 'evil'"):
        run_redteam(config, base_dir=tmp_path, attacks=["evil"])
    with pytest.raises(ConfigError, match="unknown defense 'flame'"):
        run_redteam(config, base_dir=tmp_path, defenses=["flame"])
    with pytest.raises(ConfigError, match="between 1 and N // 2 = 3, got 4"):
        redteam_config(config, secure_groups=4)
    with pytest.raises(ConfigError, match="make 10 groups, not 7"):
        redteam_config(plain_config().with_participants(20), secure_groups=7)
    with pytest.raises(ConfigError, match="at least 2 honest"):
        run_redteam(config, base_dir=tmp_path, malicious_fraction=0.9)
    with pytest.raises(ConfigError, match="sign_flip has no parameter sigma"):
        run_redteam(
            config,
            base_dir=tmp_path,
            attacks=["sign_flip"],
            attack_params={"sign_flip": {"sigma": 1}},
        )
    with pytest.raises(ConfigError, match="which does not run"):
        run_redteam(config, base_dir=tmp_path, attacks=["ipm"], attack_params={"alie": {}})
    with pytest.raises(ConfigError, match="rules that do not run"):
        run_redteam(config, base_dir=tmp_path, defenses=["mean"], defense_params={"krum": {}})


def test_malicious_choice_and_byzantine_budget() -> None:
    names = [f"site-{i}" for i in range(20)]
    chosen = choose_malicious(names, fraction=0.2, seed=11)
    assert len(chosen) == 4 and chosen == choose_malicious(names, fraction=0.2, seed=11)
    assert len(choose_malicious(names, fraction=0.21, seed=11)) == 5  # ceil
    assert byzantine_budget("mean", inputs=20, malicious=4, grouped=False) == 0
    assert byzantine_budget("krum", inputs=20, malicious=4, grouped=False) == 4
    with pytest.raises(ConfigError, match="n >= 4f \\+ 3"):
        byzantine_budget("bulyan", inputs=6, malicious=1, grouped=False)
    assert byzantine_budget("median", inputs=5, malicious=4, grouped=True) == 2
    assert byzantine_budget("krum", inputs=5, malicious=4, grouped=True) == 1
    assert byzantine_budget("fltrust", inputs=20, malicious=4, grouped=False) == 4
    with pytest.raises(ConfigError, match="foolsgold needs each participant's update"):
        byzantine_budget("foolsgold", inputs=5, malicious=4, grouped=True)


def test_importing_the_cli_does_not_import_attacks() -> None:
    code = (
        "import sys, fedshield.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('fedshield.attacks')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack-param", "sign_flip=1"], "is not NAME.KEY=VALUE"),
        (["--attack-param", "sign_flip.scale="], "is not NAME.KEY=VALUE"),
        (["--defenses", "median", "--defense-param", "median.x=abc"], "must be a number"),
        (["--attacks", " , "], "--attacks is empty"),
        (["--malicious-fraction", "1.5"], "must be in [0, 1), got 1.5"),
        (["--attacks", "sign_flip", "--attack-param", "sign_flip.sigma=2"], "no parameter sigma"),
    ],
)
def test_the_cli_rejects_bad_parameters_before_running(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from fedshield.cli import app

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    done = CliRunner().invoke(app, ["redteam", str(config), *args])
    # main() turns a ConfigError into its message, a hint and exit code 2.
    assert isinstance(done.exception, ConfigError), done.output
    assert message in done.exception.message
    assert done.exception.hint
    assert not list(tmp_path.glob("*.json"))


def test_a_bad_parameter_exits_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    done = subprocess.run(
        [sys.executable, "-m", "fedshield", "redteam", str(config), "--attack-param", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "is not NAME.KEY=VALUE" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_every_cell_measures_the_rule_alone() -> None:
    config = parse_config(
        {
            "task": {"name": "digits"},
            "data": {"dataset": "digits"},
            "participants": {"count": 6},
            "rounds": {"min_participants": 3},
            "privacy": {"mode": "sample"},
            "secure_aggregation": {"enabled": False},
            "robust": {"rule": "median", "num_byzantine": 1, "quarantine_after": 2},
        },
        source="test",
    )
    cell, groups = redteam_config(config)
    assert groups is None and not cell.secure_aggregation.enabled
    assert cell.privacy.mode == "off"  # DP would add its own noise to every cell
    assert cell.robust.quarantine_after is None
    assert cell.rounds.min_participants == 6 and cell.rounds.max_retries == 0
