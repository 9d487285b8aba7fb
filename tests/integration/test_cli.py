"""The CLI as a user runs it: provision, the model registry commands, user tasks.

Each test runs ``python -m fedshield`` as a real process and checks exit codes,
messages (never a traceback) and what landed on disk.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from fedshield.tensors import weights_sha3

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def fedshield(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedshield", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(
        "[federation]\nname = 'cli-test'\nseed = 3\n"
        "[task]\nname = 'digits'\nlocal_epochs = 1\n"
        "[data]\ndataset = 'digits'\npartition = 'iid'\n"
        "[participants]\ncount = 3\n"
        "[rounds]\ncount = 3\n"
        # Resumed below with one more round: a DP budget planned for 3 would be spent.
        "[privacy]\nmode = 'off'\n"
    )
    return path


def test_provision_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "kits"
    done = ok(fedshield("provision", str(EXAMPLES / "digits.toml"), "--out", str(out)))
    assert "participant kit" in done.stdout
    keys = sorted(out.rglob("*.key")) + sorted(out.rglob("key.pem"))
    # The CA key, then a TLS key and an Ed25519 signing key per kit (coordinator, admin, 5 sites).
    assert len(keys) == 1 + 2 * (1 + 1 + 5)
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    participant_toml = (out / "participants" / "site-1" / "participant.toml").read_text()
    assert 'name = "site-1"' in participant_toml
    again = fedshield("provision", str(EXAMPLES / "digits.toml"), "--out", str(out))
    assert again.returncode == 3
    assert "Traceback" not in again.stderr
    ok(fedshield("provision", str(EXAMPLES / "digits.toml"), "--out", str(out), "--force"))


def _versions(workdir: Path) -> dict[str, Any]:
    done = ok(fedshield("models", "list", "--workdir", str(workdir), "--json", "-"))
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_models_list_show_export_rollback_and_resume(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    workdir = tmp_path / "work"
    ok(fedshield("simulate", str(config), "--workdir", str(workdir), "--json", "-"))
    versions = _versions(workdir)["versions"]
    assert [v["version"] for v in versions] == [0, 1, 2, 3]
    assert [v["parent"] for v in versions] == [None, 0, 1, 2]
    assert [v["head"] for v in versions] == [False, False, False, True]

    shown = json.loads(ok(fedshield("models", "show", "2", "--workdir", str(workdir))).stdout)
    assert shown["version"] == 2 and shown["round"] == 2

    export_dir = tmp_path / "export"
    export_dir.mkdir()
    ok(fedshield("models", "export", "2", "--out", str(export_dir), "--workdir", str(workdir)))
    exported = [p for p in export_dir.iterdir() if p.suffix == ".safetensors"]
    assert len(exported) == 1
    assert weights_sha3(load_file(str(exported[0]))) == versions[2]["sha3"]

    missing = fedshield("models", "show", "99", "--workdir", str(workdir))
    assert missing.returncode == 4
    assert "99" in missing.stderr and "Traceback" not in missing.stderr

    ok(
        fedshield(
            "models",
            "rollback",
            "1",
            "--reason",
            "round 2 looked poisoned",
            "--workdir",
            str(workdir),
        )
    )
    after = _versions(workdir)["versions"]
    assert [v["version"] for v in after if v["head"]] == [1]
    assert len(after) == 4  # a rollback loses nothing

    # The next round starts from the rolled-back head, and the final model is evaluated.
    resumed = ok(
        fedshield(
            "simulate", str(config), "--rounds", "4", "--workdir", str(workdir), "--json", "-"
        )
    )
    summary = json.loads(resumed.stdout)
    final = _versions(workdir)["versions"]
    assert [(v["version"], v["parent"]) for v in final][-1] == (4, 1)
    assert summary["model_version"] == 4
    assert len(summary["per_participant_accuracy"]) == 3


def test_models_commands_on_a_directory_without_a_database(tmp_path: Path) -> None:
    done = fedshield("models", "list", "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert "no fedshield database" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_user_task_by_dotted_path_trains(tmp_path: Path) -> None:
    done = ok(
        fedshield(
            "simulate",
            str(EXAMPLES / "custom_task.toml"),
            "--rounds",
            "3",
            "--json",
            "-",
            env={"PYTHONPATH": str(EXAMPLES)},
        )
    )
    summary = json.loads(done.stdout)
    assert summary["rounds_completed"] == 3
    assert summary["final_accuracy"] > 0.5


def test_a_task_that_cannot_be_imported_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[task]\nname = 'no_such_module_xyz:factory'\n")
    done = fedshield("simulate", str(config))
    assert done.returncode == 9
    assert "no_such_module_xyz" in done.stderr
    assert "Traceback" not in done.stderr


def test_breast_cancer_example_reads_one_csv_per_hospital(tmp_path: Path) -> None:
    config = tmp_path / "breast_cancer.toml"
    config.write_text((EXAMPLES / "breast_cancer.toml").read_text())
    missing = fedshield("simulate", str(config))
    assert missing.returncode == 2
    assert "breast_cancer_sites.py" in missing.stderr  # the hint names the script
    written = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "breast_cancer_sites.py"),
            str(tmp_path / "breast_cancer_sites"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    done = ok(fedshield("simulate", str(config), "--rounds", "3", "--json", "-"))
    summary = json.loads(done.stdout)
    assert set(summary["per_participant_accuracy"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert summary["final_accuracy"] > 0.8


def test_mnist_example_trains_a_cnn(tmp_path: Path) -> None:
    # Without DP: DP-SGD's per-record CNN gradients take minutes on a loaded machine
    # (tests/unit/test_dpsgd.py trains a CNN with DP-SGD; with DP these two rounds reach
    # about 0.30, ten rounds 0.56).
    done = ok(
        fedshield(
            "simulate", str(EXAMPLES / "mnist.toml"), "--rounds", "2", "--no-dp", "--json", "-"
        )
    )
    summary = json.loads(done.stdout)
    assert summary["rounds_completed"] == 2
    assert summary["final_accuracy"] > 0.3  # ten classes, shards, two rounds
    assert all(lab["dp"] is False for lab in summary["privacy"].values())
