"""Fixtures for end-to-end tests: real processes, real mutual TLS, 127.0.0.1 only.

A :class:`Federation` is one provisioned federation in a temporary directory: its config
file, its kits (CA, coordinator, admin, one per participant) and a
:class:`~fedshield.federation.launcher.ProcessGroup` for the coordinator and participant
processes it starts (``python -m fedshield ...``, each in its own session, logging to
``<root>/logs``). Every fixture that makes one stops every process it started at
teardown, whatever the test did (SIGCONT, then SIGTERM, then SIGKILL).

Every wait here is bounded in time and fails with the coordinator's status and the
tails of the process logs, so a hung federation is a readable failure, not a hang.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import TransportError
from fedshield.federation.kits import provision_federation, write_config
from fedshield.federation.launcher import ProcessGroup
from fedshield.identity import Kit, ProvisionResult
from fedshield.storage import BlobStore, Database, ModelRegistry, RoundLog, RoundRecord
from fedshield.transport.client import CoordinatorClient

T = TypeVar("T")

HOST = "127.0.0.1"

# Small and quick: digits, 3 sites, one local epoch, short deadlines and back-offs.
BASE_CONFIG: dict[str, dict[str, Any]] = {
    "federation": {"name": "fedshield-it", "seed": 7},
    "task": {"name": "digits", "local_epochs": 1},
    "data": {"dataset": "digits", "partition": "iid"},
    "participants": {"count": 3},
    "rounds": {
        "count": 3,
        "min_participants": 2,
        "min_available": 3,
        "fit_timeout_s": 20.0,
        "evaluate_timeout_s": 20.0,
        "join_timeout_s": 20.0,
        "max_retries": 1,
    },
    "coordinator": {"host": HOST, "port": 0, "long_poll_s": 2.0},
    # Plain aggregation unless a test turns SecAgg+ on: most of these tests drive
    # cleartext uploads by hand (test_secure_rounds.py covers the secure round).
    "secure_aggregation": {"enabled": False},
    # Plain training unless a test turns DP on: these tests are about the protocol, and
    # DP-SGD's noise would change what their accuracy thresholds mean.
    "privacy": {"mode": "off"},
    "transport": {
        "request_timeout_s": 10.0,
        "max_retries": 3,
        "backoff_base_s": 0.1,
        "backoff_max_s": 1.0,
        "reconnect_timeout_s": 60.0,
    },
}

COORDINATOR_START_S = 60.0


def make_config(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> FederationConfig:
    """Return the base test config with ``{table: {key: value}}`` overrides applied."""
    document = copy.deepcopy(BASE_CONFIG)
    for table, values in (overrides or {}).items():
        document.setdefault(table, {}).update(values)
    return parse_config(document, source="integration test config")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Call ``probe`` until it returns something truthy, for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}\n{describe()}")
        time.sleep(interval_s)


def alive(proc: subprocess.Popen[bytes]) -> bool:
    """Return whether ``proc`` is still running."""
    return proc.poll() is None


@dataclass
class Federation:
    """A provisioned federation on disk and the processes started for it."""

    root: Path
    config: FederationConfig
    config_path: Path
    kits: ProvisionResult
    group: ProcessGroup
    coordinator: subprocess.Popen[bytes] | None = None
    port: int | None = None
    coordinator_starts: int = 0
    participants: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- paths and identities ---------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The coordinator's working directory (database and model blobs)."""
        return self.root / "coordinator"

    @property
    def url(self) -> str:
        """The coordinator's base URL (it must have been started)."""
        assert self.port is not None, "the coordinator was never started"
        return f"https://{HOST}:{self.port}"

    @property
    def names(self) -> tuple[str, ...]:
        """The participant names, in provisioning order."""
        return tuple(self.kits.participant_dirs)

    def kit(self, name: str) -> Kit:
        """Load the kit of ``name`` (``admin``, ``coordinator`` or a participant)."""
        if name == "admin":
            return Kit.load(self.kits.admin_dir)
        if name == "coordinator":
            return Kit.load(self.kits.coordinator_dir)
        return Kit.load(self.kits.participant_dirs[name])

    def client(self, name: str, **options: Any) -> CoordinatorClient:
        """Return a client speaking as ``name`` over mutual TLS; fails fast by default."""
        options = {"max_retries": 0, "timeout_s": 10.0, "reconnect_timeout_s": 10.0, **options}
        return CoordinatorClient.from_kit(self.url, self.kit(name), **options)

    # -- processes --------------------------------------------------------------------

    def start_coordinator(self, *, port: int = 0, timeout_s: float = COORDINATOR_START_S) -> int:
        """Start a coordinator process on ``port`` (0: any) and return its bound port."""
        self.coordinator_starts += 1
        ready = self.root / f"coordinator-{self.coordinator_starts}.ready"
        ready.unlink(missing_ok=True)
        name = f"coordinator-{self.coordinator_starts}"
        proc = self.group.start(
            name,
            [
                "coordinator",
                "--config",
                str(self.config_path),
                "--kit",
                str(self.kits.coordinator_dir),
                "--workdir",
                str(self.workdir),
                "--host",
                HOST,
                "--port",
                str(port),
                "--ready-file",
                str(ready),
            ],
        )
        self.coordinator = proc

        def bound() -> int | None:
            if ready.exists():
                return int(ready.read_text().strip())
            if not alive(proc):
                pytest.fail(
                    f"the coordinator exited with code {proc.returncode} during start-up:\n"
                    f"{self.group.tail(name, 20)}"
                )
            return None

        self.port = wait_until(
            bound, timeout_s=timeout_s, what="the coordinator to listen", describe=self.describe
        )
        return self.port

    def kill_coordinator(self) -> None:
        """``kill -9`` the coordinator and reap it."""
        assert self.coordinator is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.coordinator.pid, signal.SIGKILL)
        self.coordinator.wait(timeout=10)

    def start_participants(self, names: tuple[str, ...] | None = None) -> None:
        """Start one participant process per name (default: every participant)."""
        for name in names if names is not None else self.names:
            self.participants[name] = self.group.start(
                name,
                [
                    "participant",
                    "--kit",
                    str(self.kits.participant_dirs[name]),
                    "--coordinator",
                    self.url,
                ],
            )

    def signal_participants(self, signum: int) -> None:
        """Send ``signum`` to every running participant process."""
        for proc in self.participants.values():
            if alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def wait_exit(
        self, procs: Mapping[str, subprocess.Popen[bytes]], *, timeout_s: float
    ) -> dict[str, int]:
        """Wait (bounded) until every process in ``procs`` exits; return the exit codes."""
        wait_until(
            lambda: all(not alive(p) for p in procs.values()),
            timeout_s=timeout_s,
            what=f"{sorted(procs)} to exit",
            interval_s=0.2,
            describe=self.describe,
        )
        return {name: int(proc.returncode) for name, proc in procs.items()}

    def stop(self) -> None:
        """Stop every process of this federation (also ones stopped with SIGSTOP)."""
        for proc in self.group.procs.values():
            if alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
        self.group.stop(grace_s=5.0)

    # -- observing --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return ``/v1/status`` as the admin sees it."""
        with self.client("admin") as admin:
            return admin.status()

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float, what: str
    ) -> dict[str, Any]:
        """Poll the status (bounded) until ``predicate`` holds; return that status."""

        def probe() -> dict[str, Any] | None:
            assert self.coordinator is not None
            try:
                status = self.status()
            except TransportError:
                if not alive(self.coordinator):
                    pytest.fail(f"the coordinator died while waiting for {what}\n{self.describe()}")
                return None
            return status if predicate(status) else None

        return wait_until(
            probe, timeout_s=timeout_s, what=what, interval_s=0.1, describe=self.describe
        )

    def describe(self) -> str:
        """The last status line and the tail of every process log, for failure messages."""
        parts = []
        for name in self.group.procs:
            code = self.group.procs[name].poll()
            parts.append(f"--- {name} (exit {code}):\n{self.group.tail(name, 15)}")
        return "\n".join(parts)

    def registry(self) -> list[tuple[int, str]]:
        """Return ``(version, sha3)`` of every committed model version, from the database."""
        db = Database.for_workdir(self.workdir)
        try:
            registry = ModelRegistry(db, BlobStore(self.workdir / "models"))
            return [(v.version, v.sha3) for v in registry.list()]
        finally:
            db.close()

    def round_log(self) -> list[RoundRecord]:
        """Return every round attempt the coordinator recorded, in start order."""
        db = Database.for_workdir(self.workdir)
        try:
            return RoundLog(db).list()
        finally:
            db.close()


def provision(root: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Federation:
    """Write a config and provision a federation's kits under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    config = make_config(overrides)
    config_path = root / "federation.toml"
    write_config(config, config_path)
    kits = provision_federation(config, out_dir=root / "kits", base_dir=root, now=datetime.now(UTC))
    return Federation(
        root=root,
        config=config,
        config_path=config_path,
        kits=kits,
        group=ProcessGroup(root / "logs"),
    )


FederationFactory = Callable[..., Federation]


@pytest.fixture
def federation_factory(tmp_path: Path) -> Iterator[FederationFactory]:
    """Yield ``make(overrides=None, name="fed")``: a provisioned, not yet started federation.

    Every process any of them started is stopped at teardown.
    """
    made: list[Federation] = []

    def make(
        overrides: Mapping[str, Mapping[str, Any]] | None = None, name: str = "fed"
    ) -> Federation:
        federation = provision(tmp_path / name, overrides)
        made.append(federation)
        return federation

    try:
        yield make
    finally:
        for federation in made:
            federation.stop()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A running coordinator (base config) with no participant processes, per module.

    It waits a long time for participants to join, so it stays up for the whole module.
    Tests read ``federation.port`` (or ``.url``), ``.kits`` and ``.workdir`` from it.
    """
    federation = provision(
        tmp_path_factory.mktemp("coordinator"), {"rounds": {"join_timeout_s": 600.0}}
    )
    try:
        federation.start_coordinator()
        yield federation
    finally:
        federation.stop()
