"""Masking end to end: CSV sites with identifying columns, their policies, a real run.

* The model only ever sees the tumour measurements: a forward pre-hook on every site's
  model records the tensors the task feeds it during a real simulation, and every row
  must be a row of the sites' features without the identifying columns.
* Pseudonyms come from each site's own key (created 0600 by the run): the same record
  number gives the same pseudonym at one site, and a different one at another.
* An identifying column the policy does not mask stops the participant with a message
  naming the column (``fedshield simulate`` and ``fedshield participant``, exit 2, no
  traceback).
* Each site's policy hash lands in its ``round.contribution`` entries and one
  ``masking.policy`` event; no identifying value appears anywhere in the database.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.config import parse_config
from fedshield.federation.simulation import run_simulation
from fedshield.masking import load_key, load_policy, mask_table, policy_sha3
from fedshield.storage import Database, EventLog
from fedshield.training.datasets import IDENTIFYING_COLUMNS, read_csv_site
from fedshield.training.tasks import TaskParts

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("hospital-a", "hospital-b", "hospital-c")  # as in examples/breast_cancer.toml
SEED = 3


def _document(csv_dir: Path, **privacy: Any) -> dict[str, Any]:
    return {
        "federation": {"name": "masking-it", "seed": SEED},
        "task": {"name": "breast_cancer", "local_epochs": 1, "learning_rate": 0.05},
        "data": {
            "dataset": "csv",
            "csv_dir": str(csv_dir),
            "server_csv": str(csv_dir / "server_test.csv"),
            "test_fraction": 0.2,
        },
        "participants": {"names": list(NAMES)},
        "rounds": {"count": 2, "min_participants": 2, "min_available": 3},
        "privacy": privacy or {"mode": "off"},
    }


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hospital CSVs with synthetic identifying columns and policies, from the example."""
    out = tmp_path_factory.mktemp("masking") / "sites"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "breast_cancer_sites.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in NAMES:
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.masking.toml").is_file()
    return out


def _identifying_values(csv_dir: Path) -> set[str]:
    values: set[str] = set()
    for name in NAMES:
        with (csv_dir / f"{name}.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                values.update(row[c] for c in IDENTIFYING_COLUMNS)
    return values


def _without_identifying(source: Path, target: Path) -> Path:
    with source.open(newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, c in enumerate(rows[0]) if c not in IDENTIFYING_COLUMNS]
    with target.open("w", newline="") as handle:
        csv.writer(handle).writerows([[r[i] for i in keep] for r in rows])
    return target


@pytest.fixture(scope="module")
def run(sites: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real simulation; every site's model records the inputs it is given."""
    workdir = tmp_path_factory.mktemp("workdir")
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in NAMES}

    def record_inputs(name: str, parts: TaskParts) -> TaskParts:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[name].append(args[0].detach().clone())

        parts.model.register_forward_pre_hook(hook)
        return parts

    config = parse_config(_document(sites), source="masking test")
    result = run_simulation(
        config, workdir=workdir, base_dir=sites, site_parts=record_inputs, seed=SEED
    )
    return {"result": result, "workdir": workdir, "inputs": inputs}


def test_identifying_columns_never_reach_the_model(
    sites: Path, run: dict[str, Any], tmp_path: Path
) -> None:
    assert run["result"].rounds_completed == 2
    for name in NAMES:
        seen = torch.cat(run["inputs"][name]).numpy()
        assert seen.shape[1] == 30  # the tumour measurements only
        # The same site's file without the identifying columns, read the same way.
        plain = _without_identifying(sites / f"{name}.csv", tmp_path / f"{name}.csv")
        train, test = read_csv_site(plain, label_column="target", test_fraction=0.2, seed=SEED)
        expected = {row.tobytes() for row in np.concatenate([train.x, test.x])}
        assert {row.tobytes() for row in seen} <= expected
        assert len({row.tobytes() for row in seen}) == len(expected)  # and all of them


def test_pseudonyms_are_consistent_within_a_site_and_differ_across_sites(
    sites: Path, run: dict[str, Any]
) -> None:
    keys = {}
    for name in NAMES[:2]:
        path = run["workdir"] / "masking" / f"{name}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # made by the run, private
        keys[name] = load_key(path, create=False)
    assert keys["hospital-a"] != keys["hospital-b"]
    # The same patients (record numbers) at two sites, one of them twice at each.
    header = ["mrn", "x", "target"]
    rows = [["MRN-1000001", "1", "0"], ["MRN-1000002", "2", "1"], ["MRN-1000001", "3", "0"]]
    policy = load_policy(sites / "hospital-a.masking.toml")
    masked = {
        name: mask_table(
            header, rows, policy=_only_mrn(policy), label_column="target", key=keys[name]
        ).columns["mrn"]
        for name in keys
    }
    a, b = masked["hospital-a"], masked["hospital-b"]
    assert a[0] == a[2] and a[0] != a[1]
    assert b[0] == b[2] and b[0] != b[1]
    assert not set(a) & set(b)
    assert (
        "mrn"
        not in mask_table(
            header, rows, policy=_only_mrn(policy), label_column="target", key=keys["hospital-a"]
        ).features
    )


def _only_mrn(policy: Any) -> Any:
    from fedshield.masking import MaskingPolicy

    return MaskingPolicy(columns={"mrn": policy.columns["mrn"]})


def test_policy_hash_is_in_the_audit_log_and_no_identifying_value_is(
    sites: Path, run: dict[str, Any]
) -> None:
    hashes = {n: policy_sha3(load_policy(sites / f"{n}.masking.toml")) for n in NAMES}
    assert len(set(hashes.values())) == 3  # the hospitals' policies differ
    db = Database.for_workdir(run["workdir"])
    try:
        events = EventLog(db).list()
    finally:
        db.close()
    contributions = [e for e in events if e.action == "round.contribution"]
    assert contributions
    for entry in contributions:
        name = entry.resource.removeprefix("participant/")
        assert entry.details["masking_policy_sha3"] == hashes[name]
    reported = {
        e.resource: e.details["policy_sha3"] for e in events if e.action == "masking.policy"
    }
    assert reported == {f"participant/{n}": h for n, h in hashes.items()}
    # Nothing the sites hold as identifying appears anywhere in the database.
    dump = "\n".join(_sqlite_dump(run["workdir"]))
    assert hashes["hospital-a"] in dump  # the dump does hold the audit entries
    leaked = sorted(v for v in _identifying_values(sites) if _occurs(v, dump))
    assert leaked == []


def _sqlite_dump(workdir: Path) -> list[str]:
    files = sorted(workdir.rglob("*.db"))
    assert files
    lines: list[str] = []
    for path in files:
        connection = sqlite3.connect(path)
        try:
            lines.extend(connection.iterdump())
        finally:
            connection.close()
    return lines


def _occurs(value: str, text: str) -> bool:
    # Zip codes are 5 digits: only a standalone occurrence counts, not digits of a float
    # or of a hex digest or nonce (random hex holds any 5-digit run now and then).
    return re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", text) is not None


def _fedshield(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedshield", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )


def _unmasked_copy(sites: Path, tmp_path: Path) -> Path:
    """The sites with hospital-b's policy masking everything but its e-mail column."""
    copy = tmp_path / "sites"
    copy.mkdir()
    for path in sites.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    policy = copy / "hospital-b.masking.toml"
    policy.write_text(policy.read_text().replace('[columns.email]\naction = "drop"\n', ""))
    return copy


def _assert_refusal(done: subprocess.CompletedProcess[str], sites: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    assert "refusing to train: 1 column(s) look identifying but are not masked" in text
    assert "'email' looks like email (column name contains the word 'email')" in text
    assert "hospital-b.masking.toml" in text and "[allow_unmasked]" in text
    leaked = [v for v in _identifying_values(sites) if "@" in v and v in done.stderr]
    assert leaked == []


@pytest.mark.slow
def test_cli_simulate_stops_on_an_unmasked_column(sites: Path, tmp_path: Path) -> None:
    copy = _unmasked_copy(sites, tmp_path)
    config = tmp_path / "federation.toml"
    config.write_text(_toml(_document(copy)))
    done = _fedshield("simulate", str(config), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    _assert_refusal(done, copy)


@pytest.mark.slow
def test_cli_participant_stops_on_an_unmasked_column(sites: Path, tmp_path: Path) -> None:
    copy = _unmasked_copy(sites, tmp_path)
    config = tmp_path / "federation.toml"
    config.write_text(_toml(_document(copy)))
    provisioned = _fedshield(
        "provision", str(config), "--out", str(tmp_path / "kits"), cwd=tmp_path
    )
    assert provisioned.returncode == 0, provisioned.stderr
    kit = tmp_path / "kits" / "participants" / "hospital-b"
    # Nothing listens there: the site must stop before it ever connects.
    done = _fedshield(
        "participant", "--kit", str(kit), "--coordinator", "https://127.0.0.1:9", cwd=tmp_path
    )
    _assert_refusal(done, copy)
    assert (
        not (kit / "masking.key").exists()
        or stat.S_IMODE((kit / "masking.key").stat().st_mode) == 0o600
    )


def _toml(document: dict[str, Any]) -> str:
    from fedshield import _toml

    return _toml.dumps(document)


def test_json_summary_carries_no_identifying_value(sites: Path, run: dict[str, Any]) -> None:
    summary = json.dumps(run["result"].__dict__, default=str)
    assert not [v for v in _identifying_values(sites) if _occurs(v, summary)]


def _networked(factory: Any, sites: Path) -> Any:
    return factory(
        {
            "federation": {"name": "masking-net", "seed": SEED},
            "task": {"name": "breast_cancer", "local_epochs": 1},
            "data": {
                "dataset": "csv",
                "csv_dir": str(sites),
                "server_csv": str(sites / "server_test.csv"),
                "partition": "iid",
            },
            "participants": {"names": list(NAMES)},
            "rounds": {"count": 2},
            "secure_aggregation": {"enabled": True},
        }
    )


@pytest.mark.slow
def test_networked_participants_mask_with_their_kit_key(
    federation_factory: Any, sites: Path
) -> None:
    federation = _networked(federation_factory, sites)
    federation.start_coordinator()
    federation.start_participants()
    codes = federation.wait_exit(federation.participants, timeout_s=240)
    assert codes == {name: 0 for name in NAMES}, federation.describe()
    for name in NAMES:
        kit = federation.kits.participant_dirs[name]
        key = kit / "masking.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # made by the agent, in its kit
        digest = policy_sha3(load_policy(sites / f"{name}.masking.toml"))
        said = " ".join(federation.group.tail(name, 200).split())  # rich wraps lines
        assert f"(sha3 {digest})" in said
    dump = "\n".join(_sqlite_dump(federation.workdir))
    assert not [v for v in _identifying_values(sites) if _occurs(v, dump)]
    logs = "\n".join(federation.group.tail(n, 500) for n in federation.group.procs)
    assert not [v for v in _identifying_values(sites) if _occurs(v, logs)]


@pytest.mark.slow
def test_networked_policy_hash_reaches_the_audit_log(federation_factory: Any, sites: Path) -> None:
    federation = _networked(federation_factory, sites)
    federation.start_coordinator()
    federation.start_participants()
    codes = federation.wait_exit(federation.participants, timeout_s=240)
    assert codes == {name: 0 for name in NAMES}, federation.describe()
    db = Database.for_workdir(federation.workdir)
    try:
        events = EventLog(db).list()
    finally:
        db.close()
    reported = {e.resource for e in events if e.action == "masking.policy"}
    assert reported == {f"participant/{n}" for n in NAMES}
