"""Run a whole federation on this machine as separate OS processes (``fedshield demo``).

The launcher provisions a fresh federation, starts the coordinator and one process per
participant (``python -m fedshield ...``), follows progress through the coordinator's
status endpoint with the admin kit over mutual TLS, and shuts everything down. Children
run in their own session (so a terminal's Ctrl-C reaches only the launcher, which then
stops them in order) and, on Linux, die with the launcher even if it is killed with -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedshield.config import FederationConfig
from fedshield.errors import ConfigError, FedshieldError, RoundFailedError, TransportError
from fedshield.federation.coordinator import privacy_report, round_entry, utcnow
from fedshield.federation.kits import absolute_data_paths, provision_federation, write_config
from fedshield.identity import Kit
from fedshield.storage import Database, EventLog, ModelRegistry, RoundLog
from fedshield.storage.audit import AUDIT_PUB_FILE, AuditLog, read_public_key
from fedshield.storage.blobs import BlobStore
from fedshield.transport.client import CoordinatorClient

__all__ = ["DemoResult", "ProcessGroup", "run_demo"]

MARKER = ".fedshield-demo"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class ProcessGroup:
    """Child processes that are always stopped together (SIGTERM, then SIGKILL)."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``python -m fedshield ARGS`` as ``name``, logging to ``<log_dir>/name.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        # Many small torch processes on few cores: one thread each avoids oversubscription.
        env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedshield", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            env=env,
        )
        self.procs[name] = proc
        return proc

    def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop every child still running; wait for all of them."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    def tail(self, name: str, lines: int = 5) -> str:
        """Return the last lines of a child's log, for error messages."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    """Yield a :class:`ProcessGroup` that is stopped however the block exits (Ctrl-C too)."""
    group = ProcessGroup(log_dir)
    try:
        yield group
    finally:
        group.stop()


@dataclass(frozen=True)
class DemoResult:
    """The machine-readable summary of a demo run."""

    summary: dict[str, Any]


def prepare_workdir(workdir: Path) -> None:
    """Use ``workdir`` fresh: create it, or clear a previous demo's, never anything else."""
    if workdir.exists():
        if (workdir / MARKER).exists():
            shutil.rmtree(workdir)
        elif any(workdir.iterdir()):
            raise ConfigError(
                f"workdir {workdir} exists, is not empty and was not made by `fedshield demo`",
                hint="Choose another --workdir, or remove that directory yourself.",
            )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by fedshield demo; removed by the next demo run\n")


def start_coordinator(
    group: ProcessGroup,
    *,
    config_path: Path,
    kit_dir: Path,
    workdir: Path,
    host: str,
    port: int = 0,
    timeout_s: float = 120.0,
) -> int:
    """Start a coordinator process and return its port once it listens."""
    ready = workdir / "coordinator.ready"
    ready.unlink(missing_ok=True)
    proc = group.start(
        "coordinator",
        [
            "coordinator",
            "--config",
            str(config_path),
            "--kit",
            str(kit_dir),
            "--workdir",
            str(workdir / "coordinator"),
            "--host",
            host,
            "--port",
            str(port),
            "--ready-file",
            str(ready),
        ],
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            return int(ready.read_text().strip())
        if proc.poll() is not None:
            raise TransportError(
                f"the coordinator exited with code {proc.returncode} during start-up:\n"
                f"{group.tail('coordinator')}"
            )
        time.sleep(0.1)
    raise TransportError(f"the coordinator did not start within {timeout_s:g} s")


def run_demo(
    config: FederationConfig,
    *,
    workdir: Path,
    base_dir: Path,
    on_round: Callable[[dict[str, Any]], None],
    timeout_s: float = 1800.0,
) -> DemoResult:
    """Provision, run the coordinator and every participant as processes, summarise."""
    started = time.monotonic()
    prepare_workdir(workdir)
    config_path = workdir / "federation.toml"
    config = absolute_data_paths(config, base_dir)
    write_config(config, config_path)
    kits = provision_federation(config, out_dir=workdir / "kits", base_dir=base_dir, now=utcnow())
    host = config.coordinator.host
    with process_group(workdir / "logs") as group:
        port = start_coordinator(
            group, config_path=config_path, kit_dir=kits.coordinator_dir, workdir=workdir, host=host
        )
        url = f"https://{host}:{port}"
        for name, kit_dir in kits.participant_dirs.items():
            group.start(name, ["participant", "--kit", str(kit_dir), "--coordinator", url])
        admin = Kit.load(kits.admin_dir)
        status, shown = _follow(group, url, admin, on_round, deadline=started + timeout_s)
        coordinator = group.procs["coordinator"]
        coordinator.wait(timeout=60)
        # The coordinator may have finished between two status polls: catch up from
        # what it committed.
        for entry in _finished_rounds(workdir / "coordinator")[shown:]:
            on_round(entry)
        for name in kits.participant_dirs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                group.procs[name].wait(timeout=30)
        if status.get("failure"):
            raise RoundFailedError(str(status["failure"]))
        failed = {n: p.returncode for n, p in group.procs.items() if p.returncode != 0}
        if failed:
            detail = "\n".join(f"--- {n} (exit {c}):\n{group.tail(n)}" for n, c in failed.items())
            raise RoundFailedError(f"some demo processes failed:\n{detail}")
    summary = summarize(workdir / "coordinator", config=config)
    summary["wall_s"] = round(time.monotonic() - started, 3)
    summary["transport"] = "https+mtls"
    summary["workdir"] = str(workdir)
    return DemoResult(summary)


def _follow(
    group: ProcessGroup,
    url: str,
    admin: Kit,
    on_round: Callable[[dict[str, Any]], None],
    *,
    deadline: float,
) -> tuple[dict[str, Any], int]:
    shown = 0
    status: dict[str, Any] = {}
    with CoordinatorClient.from_kit(url, admin, max_retries=3, timeout_s=10.0) as client:
        while time.monotonic() < deadline:
            coordinator = group.procs["coordinator"]
            try:
                status = client.status()
            except TransportError:
                if coordinator.poll() is not None:
                    break
                time.sleep(0.5)
                continue
            history = [h for h in status["history"] if h["status"] != "running"]
            for entry in history[shown:]:
                on_round(entry)
            shown = len(history)
            if status.get("ended"):
                break
            dead = [n for n, p in group.procs.items() if p.poll() not in (None, 0)]
            if "coordinator" in dead:
                raise TransportError(f"the coordinator died:\n{group.tail('coordinator')}")
            time.sleep(0.5)
        else:
            raise RoundFailedError("the demo did not finish in time")
    return status, shown


def _finished_rounds(coordinator_workdir: Path) -> list[dict[str, Any]]:
    db = Database.for_workdir(coordinator_workdir)
    try:
        return [round_entry(r) for r in RoundLog(db).list() if r.status != "running"]
    finally:
        db.close()


def _audit_summary(db: Database, workdir: Path) -> dict[str, Any]:
    """Verify the coordinator's audit log against its ``audit.pub``, for the summary."""
    try:
        report = AuditLog(db).verify(read_public_key(workdir / AUDIT_PUB_FILE))
    except FedshieldError as exc:
        return {"audit_verified": False, "audit_entries": None, "audit_error": exc.message}
    return {"audit_verified": True, "audit_entries": report.entries}


def summarize(coordinator_workdir: Path, *, config: FederationConfig) -> dict[str, Any]:
    """Build the summary from what the coordinator committed to its database."""
    db = Database.for_workdir(coordinator_workdir)
    try:
        registry = ModelRegistry(db, BlobStore(coordinator_workdir / "models"))
        head = registry.head()
        rounds = RoundLog(db).list()
        assert head is not None
        committed = [r for r in rounds if r.kind == "fit" and r.status == "committed"]
        final_eval = [r for r in rounds if r.kind == "evaluate" and r.status == "done"]
        per_participant: dict[str, float] = {}
        if final_eval:
            for key, value in final_eval[-1].metrics.items():
                name, _, metric = key.rpartition(".")
                if name and metric == "accuracy":
                    per_participant[name] = round(float(value), 4)
        accuracy = head.metrics.get("server_accuracy")
        if accuracy is None and final_eval:
            accuracy = final_eval[-1].metrics.get("accuracy")
        return {
            "federation": config.federation.name,
            "rounds_completed": len({r.number for r in committed}),
            "final_accuracy": None if accuracy is None else round(float(accuracy), 4),
            "per_participant_accuracy": per_participant,
            "model_version": head.version,
            "model_sha3": head.sha3,
            "participants": len(config.participants.resolved_names()),
            "dropped": sorted({p for r in committed for p in r.dropped}),
            "secure_aggregation": config.secure_aggregation.enabled,
            # Each site's own report: what it spent, at which delta, of which budget.
            "privacy": privacy_report(rounds),
            # Evidence, not intent: rounds whose sum SecAgg+ actually produced.
            "secure_rounds": sum(e.action == "secagg.finish" for e in EventLog(db).list()),
            **_audit_summary(db, coordinator_workdir),
        }
    finally:
        db.close()
