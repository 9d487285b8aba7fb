"""Round overhead of the networked coordinator, with zero training.

For every model size ``d`` and participant count ``n`` this benchmark runs a real
coordinator (``python -m fedshield coordinator``, HTTPS with mutual TLS 1.3) as a
subprocess and ``n`` fake participants as threads of this process. A fake participant
does what ``fedshield participant`` does, minus training: long-poll for a task,
download the model (``fetch_model``, which checks its SHA3 hash), upload a precomputed
random float32 update of the same layout (``push_update``). So a round's duration is
the coordinator's and the transport's overhead alone.

With ``--secure`` every fit round runs SecAgg+ instead: a fake participant reports its
example count (``push_fit_report``) and answers the five ``secagg`` stage tasks with a
``SecureSession`` over the same precomputed update, as ``fedshield participant`` does.
``--both`` runs the plain and the secure federation back to back for each ``(d, n)``,
and the secure line carries their ratios (``secure_over_plain``).

It prints one JSON object per line on stdout, one per ``(d, n)`` and mode; progress goes
to stderr. See ``benchmarks/README.md`` for every field. Run from the repository root::

    .venv/bin/python benchmarks/round_overhead.py            # d in {1e5, 1e6}, n in {5, 20}
    .venv/bin/python benchmarks/round_overhead.py --d 1e5 --n 5 --rounds 4
    .venv/bin/python benchmarks/round_overhead.py --both --d 1e6 --n 20 --rounds 3

Bytes are counted at two levels on each participant's TLS sockets (an ``SSLSocket``
subclass installed on the participant's ``SSLContext``): the plaintext HTTP/1.1 stream
(request and status lines, headers, bodies) and the TCP payload on the wire (TLS records
and handshakes), read from the kernel's ``TCP_INFO`` (``tcpi_bytes_sent`` and
``tcpi_bytes_received``). TCP/IP headers are not counted.

Nothing here asserts on time: the machine is shared and noisy. Compare the ratios of
one run (for example ``ratio_to_limit``), not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.config import FederationConfig, parse_config
from fedshield.errors import ProtocolError
from fedshield.federation.coordinator import utcnow
from fedshield.federation.kits import provision_federation, write_config
from fedshield.federation.launcher import ProcessGroup, start_coordinator
from fedshield.federation.secure_agent import SecureSession
from fedshield.identity import Kit, client_ssl_context, load_certificate, server_ssl_context
from fedshield.storage import Database, EventLog, EventRecord, RoundLog, RoundRecord
from fedshield.tensors import Layout, flatten
from fedshield.transport.client import CoordinatorClient, Credentials
from fedshield.transport.messages import SECAGG_STAGES, FitMeta, SecAggRefusal, TaskMessage

BENCH_DIR = Path(__file__).resolve().parent
TASK = "synthetic_task:factory"
ENV_D = "FEDSHIELD_BENCH_D"
LONG_POLL_S = 2.0
NUM_EXAMPLES = 100  # every fake participant's example count (its SecAgg+ weight)
# SecAgg+ settings of --secure: the random update (|x| ~ 1e-3) is never clipped, and the
# ring of 32 bits holds the sum of n <= 20 weights of NUM_EXAMPLES <= max_weight.
SECURE_AGGREGATION = {"enabled": True, "clip_range": 10.0, "stage_timeout_s": 60.0}

# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked at offset 120 and
# tcpi_bytes_received at 128 (Linux >= 4.1/4.2); u64 tcpi_bytes_sent at 200 and
# tcpi_bytes_retrans at 208 (Linux >= 4.19).
_TCP_INFO_LEN = 256
_OFF_BYTES_ACKED = 120
_OFF_BYTES_RECEIVED = 128
_OFF_BYTES_SENT = 200
_OFF_BYTES_RETRANS = 208


def log(message: str) -> None:
    """Progress on stderr (stdout carries only JSON lines)."""
    print(f"[round_overhead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- byte counting ---------------------------------------------------------------------


def tcp_bytes(sock: socket.socket) -> tuple[int, int, int]:
    """Return ``(sent, received, retransmitted)`` TCP payload bytes from ``TCP_INFO``.

    ``sent`` counts every payload byte once (``tcpi_bytes_sent - tcpi_bytes_retrans``);
    retransmitted bytes are returned separately.
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    received = struct.unpack_from("<Q", info, _OFF_BYTES_RECEIVED)[0]
    if len(info) >= _OFF_BYTES_RETRANS + 8:
        sent, retrans = struct.unpack_from("<QQ", info, _OFF_BYTES_SENT)
        return int(sent - retrans), int(received), int(retrans)
    # Older kernels: bytes_acked (which counts the SYN as one byte) and no retransmits.
    acked = struct.unpack_from("<Q", info, _OFF_BYTES_ACKED)[0]
    return int(max(0, acked - 1)), int(received), 0


@dataclass(frozen=True)
class Counters:
    """Cumulative byte counters of one participant."""

    http_sent: int = 0
    http_received: int = 0
    wire_sent: int = 0
    wire_received: int = 0
    wire_retransmitted: int = 0
    connections: int = 0
    body_sent: int = 0
    body_received: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            *(getattr(self, f) - getattr(other, f) for f in Counters.__dataclass_fields__)
        )


class ByteMeter:
    """Counts one participant's bytes on all of its TLS connections (one thread only).

    ``socket_class()`` returns an :class:`ssl.SSLSocket` subclass to install as the
    participant's ``SSLContext.sslsocket_class``. Plaintext is counted where
    ``SSLSocket`` moves application data (``send``, which ``sendall`` calls, and
    ``read``, which ``recv`` and ``recv_into`` call); wire bytes come from ``TCP_INFO``
    of every socket, read one last time just before a socket is closed.
    """

    def __init__(self) -> None:
        self.http_sent = 0
        self.http_received = 0
        self.connections = 0
        self._live: set[ssl.SSLSocket] = set()
        self._closed = (0, 0, 0)

    def socket_class(self) -> type[ssl.SSLSocket]:
        """Return the counting ``SSLSocket`` class bound to this meter."""
        meter = self

        class CountingSSLSocket(ssl.SSLSocket):
            @classmethod
            def _create(cls, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
                # ssl.SSLContext.wrap_socket builds every socket through this hook.
                sock: ssl.SSLSocket = super()._create(*args, **kwargs)  # type: ignore[misc]
                meter._live.add(sock)
                meter.connections += 1
                return sock

            def send(self, data: Any, flags: int = 0) -> int:
                sent = super().send(data, flags)
                meter.http_sent += sent
                return sent

            def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002
                got = super().read(len, buffer)
                meter.http_received += got if isinstance(got, int) else builtins_len(got)
                return got

            def close(self) -> None:
                meter._retire(self)
                super().close()

        return CountingSSLSocket

    def _retire(self, sock: ssl.SSLSocket) -> None:
        if sock in self._live:
            self._live.discard(sock)
            with contextlib.suppress(OSError):
                self._closed = _add(self._closed, tcp_bytes(sock))

    def wire(self) -> tuple[int, int, int]:
        """Return ``(sent, received, retransmitted)`` TCP payload bytes so far."""
        total = self._closed
        for sock in list(self._live):
            try:
                total = _add(total, tcp_bytes(sock))
            except OSError:  # closed without close() (garbage collected): bytes lost
                self._live.discard(sock)
        return total


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


builtins_len = len


# -- fake participants -----------------------------------------------------------------


@dataclass(frozen=True)
class RoundSample:
    """What one participant saw when its update for ``round`` was acknowledged.

    With secure aggregation the update is acknowledged with the last stage message
    (``unmask``). ``stages`` then holds, per SecAgg+ stage, when its task arrived and
    when the answer was acknowledged; ``bodies`` splits the round's body bytes
    ``(sent, received)`` by step: ``fit`` (the fit task, the model download, the report),
    then one entry per stage (its task message and its answer).
    """

    round: int
    attempt: int
    task_at: datetime
    acked_at: datetime
    counters: Counters
    cpu_s: float
    stages: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    bodies: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class FakeParticipant:
    """A participant that answers every fit task with a fixed random update.

    If a fit task asks for secure aggregation, the participant reports only its example
    count and then answers the round's ``secagg`` tasks with a
    :class:`~fedshield.federation.secure_agent.SecureSession`, as ``fedshield
    participant`` does (``fedshield.federation.agent``).
    """

    name: str
    kit_dir: Path
    url: str
    deadline: float
    seed: int
    federation: str = ""
    samples: list[RoundSample] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    end: str | None = None
    error: BaseException | None = None
    polls: int = 0

    def run(self) -> None:
        """Thread body: take part until the coordinator says the federation ended."""
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        kit = Kit.load(self.kit_dir)
        meter = ByteMeter()
        context = client_ssl_context(kit)
        context.sslsocket_class = meter.socket_class()
        signing_key = kit.signing_key()
        ca_cert = load_certificate(kit.ca_path)
        rng = np.random.default_rng(self.seed)
        update: dict[str, np.ndarray] | None = None
        vector: np.ndarray | None = None
        session: SecureSession | None = None
        pending: dict[str, Any] = {}  # the secure round in progress, until unmask
        client = CoordinatorClient(
            self.url,
            ssl_context=context,
            credentials=Credentials.from_kit(kit),
            timeout_s=60.0,
            max_retries=2,
            reconnect_timeout_s=20.0,
        )

        def snapshot() -> Counters:
            wire_sent, wire_received, wire_retransmitted = meter.wire()
            return Counters(
                http_sent=meter.http_sent,
                http_received=meter.http_received,
                wire_sent=wire_sent,
                wire_received=wire_received,
                wire_retransmitted=wire_retransmitted,
                connections=meter.connections,
                body_sent=client.bytes_sent,
                body_received=client.bytes_received,
            )

        with client:
            while time.monotonic() < self.deadline:
                self.polls += 1
                received_before = client.bytes_received
                task = client.next_task(wait_s=LONG_POLL_S)
                if task is None:
                    continue
                if task.kind in ("finished", "failed"):
                    self.end = task.kind if task.kind == "finished" else f"failed: {task.reason}"
                    return
                task_at = utcnow()
                if task.kind == "secagg":
                    session = self._secure_stage(client, session, task, pending, received_before)
                    if session is not None and session.done:
                        session = None
                        self.samples.append(
                            RoundSample(
                                round=pending["round"],
                                attempt=pending["attempt"],
                                task_at=pending["task_at"],
                                acked_at=pending["stages"]["unmask"][1],
                                counters=snapshot(),
                                cpu_s=time.thread_time(),
                                stages=dict(pending["stages"]),
                                bodies=dict(pending["bodies"]),
                            )
                        )
                        pending.clear()
                    continue
                if task.kind != "fit":
                    raise RuntimeError(f"{self.name}: unexpected {task.kind} task")
                assert task.round is not None and task.attempt is not None
                assert task.model_sha3 is not None
                sent_before = client.bytes_sent
                weights = client.fetch_task_model(task)
                if update is None:  # precomputed once: small random float32 values
                    update = {
                        k: (1e-3 * rng.standard_normal(v.shape)).astype(np.float32)
                        for k, v in weights.items()
                    }
                    vector = flatten(update, Layout.of(weights), dtype=np.float32)
                meta = FitMeta(
                    round=task.round,
                    attempt=task.attempt,
                    model_sha3=task.model_sha3,
                    num_examples=NUM_EXAMPLES,
                    metrics={"train_loss": 1.0},
                )
                if not task.secure_aggregation:
                    client.push_update(meta, update)
                    self.samples.append(
                        RoundSample(
                            round=task.round,
                            attempt=task.attempt,
                            task_at=task_at,
                            acked_at=utcnow(),
                            counters=snapshot(),
                            cpu_s=time.thread_time(),
                        )
                    )
                    continue
                # Only the count and metrics go out now; the update only inside SecAgg+.
                client.push_fit_report(meta)
                assert vector is not None
                session = SecureSession(
                    name=self.name,
                    federation=self.federation,
                    round=task.round,
                    attempt=task.attempt,
                    update=vector,
                    num_examples=NUM_EXAMPLES,
                    signing_key=signing_key,
                    ca_cert=ca_cert,
                    clock=utcnow,
                )
                pending.clear()
                pending.update(
                    round=task.round,
                    attempt=task.attempt,
                    task_at=task_at,
                    stages={},
                    bodies={
                        "fit": (
                            client.bytes_sent - sent_before,
                            client.bytes_received - received_before,
                        )
                    },
                )
        self.end = "deadline"

    def _secure_stage(
        self,
        client: CoordinatorClient,
        session: SecureSession | None,
        task: TaskMessage,
        pending: dict[str, Any],
        received_before: int,
    ) -> SecureSession | None:
        """Answer one SecAgg+ stage like ``agent._secure_stage``; return the session."""
        assert task.round is not None and task.attempt is not None and task.stage is not None
        task_at = utcnow()
        if session is None or not session.matches(task.round, task.attempt):
            reason = "this site holds no update for that round (it restarted or did not train)"
            self.refusals.append(f"round {task.round} {task.stage}: {reason}")
            client.refuse_secagg(
                task.round, task.attempt, SecAggRefusal(stage=task.stage, reason=reason)
            )
            return session
        try:
            body, content_type = session.answer(task.stage, task.secagg)
        except ProtocolError as exc:
            self.refusals.append(f"round {task.round} {task.stage}: {exc.message}")
            refusal = SecAggRefusal(stage=task.stage, reason=exc.message[:1000])
            client.refuse_secagg(task.round, task.attempt, refusal)
            pending.clear()
            return None
        sent_before = client.bytes_sent
        client.push_secagg(task.round, task.attempt, task.stage, body, content_type)
        pending["stages"][task.stage] = (task_at, utcnow())
        pending["bodies"][task.stage] = (
            client.bytes_sent - sent_before,
            client.bytes_received - received_before,
        )
        return session


# -- coordinator CPU -------------------------------------------------------------------


class CpuSampler:
    """Samples a process's CPU time (user + system) from ``/proc`` with wall-clock times."""

    def __init__(self, pid: int, *, period_s: float = 0.05) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []  # (POSIX time, cpu seconds)
        self._stop = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _read(self) -> float | None:
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime

    def _loop(self) -> None:
        while not self._stop.is_set():
            cpu = self._read()
            if cpu is None:
                return
            self.samples.append((time.time(), cpu))
            self._stop.wait(self.period_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cpu_at(self, when: datetime) -> float | None:
        """CPU seconds used by ``when`` (linear interpolation between samples)."""
        t = when.timestamp()
        samples = self.samples
        if len(samples) < 2 or t < samples[0][0] or t > samples[-1][0]:
            return None
        times = [s[0] for s in samples]
        return float(np.interp(t, times, [s[1] for s in samples]))


# -- the physical limit ------------------------------------------------------------------


def _recv_exact(sock: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:], min(len(view) - got, 1 << 20))
        if k == 0:
            raise ConnectionError("peer closed the connection")
        got += k


def tls_loopback_limit(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    count: int,
    nbytes: int,
    trials: int = 3,
) -> float:
    """Best time to move ``count`` uploads then ``count`` downloads of ``nbytes`` each.

    One TLS 1.3 connection over loopback, plain :mod:`ssl` sockets, the same
    certificates as the federation; the handshake is done before the clock starts.
    The server is a thread of this process (``ssl`` releases the GIL while it works).
    """
    payload = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(60)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                buf = memoryview(bytearray(nbytes))
                for _ in range(trials):
                    for _ in range(count):
                        _recv_exact(tls, buf)
                    for _ in range(count):
                        tls.sendall(payload)
        except BaseException as exc:
            failure.append(exc)

    server = threading.Thread(target=serve, name="tls-limit-server", daemon=True)
    server.start()
    best = math.inf
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            if tls.version() != "TLSv1.3":
                raise RuntimeError(f"expected TLS 1.3, got {tls.version()}")
            buf = memoryview(bytearray(nbytes))
            for _ in range(trials):
                start = time.perf_counter()
                for _ in range(count):
                    tls.sendall(payload)
                for _ in range(count):
                    _recv_exact(tls, buf)
                best = min(best, time.perf_counter() - start)
    finally:
        server.join(timeout=60)
        listener.close()
    if failure:
        raise RuntimeError(f"TLS limit server failed: {failure[0]!r}")
    return best


# -- one case --------------------------------------------------------------------------


def make_config(*, n: int, rounds: int, secure: bool = False) -> FederationConfig:
    """The federation file of one case: ``n`` participants, all of them in every round.

    With ``secure``, every fit round runs SecAgg+ (``SECURE_AGGREGATION``); the config
    check refuses it if the ring cannot hold the sum of ``n`` weighted updates.
    """
    return parse_config(
        {
            "federation": {"name": "bench-round-overhead", "seed": 7},
            "task": {"name": TASK, "local_epochs": 1},
            "data": {"dataset": "digits", "partition": "iid", "server_test_fraction": 0.0},
            "participants": {"count": n},
            "rounds": {
                "count": rounds,
                "min_participants": n,
                "min_available": n,
                "fit_timeout_s": 120.0,
                "join_timeout_s": 120.0,
                "max_retries": 0,
                "final_evaluation": False,
            },
            "coordinator": {"host": "127.0.0.1", "port": 0, "long_poll_s": LONG_POLL_S},
            "transport": {
                "max_payload_bytes": 256 * 2**20,
                "request_timeout_s": 60.0,
                "max_retries": 2,
                "reconnect_timeout_s": 20.0,
            },
            "secure_aggregation": SECURE_AGGREGATION if secure else {"enabled": False},
            # The round's overhead, not DP-SGD's (whose cost is per-record gradients).
            "privacy": {"mode": "off"},
        },
        source="round_overhead",
    )


@contextlib.contextmanager
def task_environment(d: int) -> Iterator[None]:
    """Set ``FEDSHIELD_BENCH_D`` and put ``benchmarks/`` on ``PYTHONPATH`` (restored after)."""
    saved = {k: os.environ.get(k) for k in (ENV_D, "PYTHONPATH")}
    os.environ[ENV_D] = str(d)
    paths = [str(BENCH_DIR), *filter(None, (saved["PYTHONPATH"] or "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_ELAPSED = re.compile(r"round\s+(\d+)/\d+\s.*elapsed ([0-9.]+)s")


def logged_elapsed(log_path: Path) -> dict[int, float]:
    """Round -> ``elapsed`` printed by the coordinator (open to commit done, 0.1 s steps)."""
    if not log_path.exists():
        return {}
    out: dict[int, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _ELAPSED.search(line)
        if match:
            out[int(match.group(1))] = float(match.group(2))
    return out


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def secs(a: datetime, b: datetime) -> float:
    """Seconds from ``a`` to ``b``."""
    return (b - a).total_seconds()


def steady_rounds(rounds: int) -> list[int]:
    """Rounds 2..R (round 1 includes connection warm-up); ``[1]`` if there is no other."""
    return list(range(2, rounds + 1)) or [1]


def run_case(
    *, d: int, n: int, rounds: int, root: Path, budget_s: float, secure: bool = False
) -> dict[str, Any]:
    """Run one federation of ``n`` fake participants on a ``d``-parameter model."""
    started = time.monotonic()
    case_dir = root / f"d{d}_n{n}{'_secure' if secure else ''}"
    case_dir.mkdir(parents=True)
    config = make_config(n=n, rounds=rounds, secure=secure)
    config_path = case_dir / "federation.toml"
    write_config(config, config_path)
    kits = provision_federation(config, out_dir=case_dir / "kits", base_dir=case_dir, now=utcnow())
    group = ProcessGroup(case_dir / "logs")
    sampler: CpuSampler | None = None
    participants: list[FakeParticipant] = []
    try:
        with task_environment(d):
            port = start_coordinator(
                group,
                config_path=config_path,
                kit_dir=kits.coordinator_dir,
                workdir=case_dir,
                host="127.0.0.1",
                timeout_s=120.0,
            )
        coordinator_proc = group.procs["coordinator"]
        sampler = CpuSampler(coordinator_proc.pid)
        sampler.start()
        url = f"https://127.0.0.1:{port}"
        deadline = started + budget_s
        participants = [
            FakeParticipant(name, kit_dir, url, deadline, seed=i, federation=config.federation.name)
            for i, (name, kit_dir) in enumerate(kits.participant_dirs.items())
        ]
        threads = [
            threading.Thread(target=p.run, name=f"fake-{p.name}", daemon=True) for p in participants
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 30.0)
        stuck = [t.name for t in threads if t.is_alive()]
        errors = [f"{p.name}: {p.error!r}" for p in participants if p.error is not None]
        if stuck or errors:
            raise RuntimeError(
                f"participants failed: {errors[:3]} stuck: {stuck[:3]}\n"
                f"coordinator log:\n{group.tail('coordinator', 15)}"
            )
        refusals = [f"{p.name}: {r}" for p in participants for r in p.refusals]
        if refusals:  # a participant left a secure round: its samples are incomplete
            raise RuntimeError(f"participants refused secure aggregation: {refusals[:3]}")
        ends = {p.end for p in participants}
        if ends != {"finished"}:
            raise RuntimeError(f"federation did not finish: {sorted(map(str, ends))}")
        with contextlib.suppress(Exception):
            coordinator_proc.wait(timeout=30)
    finally:
        if sampler is not None:
            sampler.stop()
        group.stop()

    db = Database.for_workdir(case_dir / "coordinator")
    try:
        records = RoundLog(db).list()
        events = [e for e in EventLog(db).list() if e.action.startswith("secagg.")]
    finally:
        db.close()
    fits = sorted(
        (r for r in records if r.kind == "fit" and r.status == "committed"),
        key=lambda r: r.number,
    )
    if [r.number for r in fits] != list(range(1, rounds + 1)) or len(records) != rounds:
        raise RuntimeError(f"unexpected round log: {[(r.number, r.status) for r in records]}")
    secagg_events = secagg_by_round(events, rounds=rounds) if secure else {}

    server_ctx = server_ssl_context(Kit.load(kits.coordinator_dir))
    client_ctx = client_ssl_context(Kit.load(next(iter(kits.participant_dirs.values()))))
    limit_s = tls_loopback_limit(server_ctx, client_ctx, count=n, nbytes=4 * d)

    result = summarize(
        d=d,
        n=n,
        rounds=rounds,
        fits=fits,
        participants=participants,
        sampler=sampler,
        elapsed=logged_elapsed(case_dir / "logs" / "coordinator.log"),
        limit_s=limit_s,
        secure=secure,
    )
    if secure:
        result.update(
            summarize_secure(
                d=d,
                rounds=rounds,
                fits=fits,
                participants=participants,
                events=secagg_events,
                upload_bytes=result["upload_bytes_per_participant"],
                download_bytes=result["download_bytes_per_participant"],
            )
        )
    result["wall_s"] = round(time.monotonic() - started, 2)
    return result


def summarize(
    *,
    d: int,
    n: int,
    rounds: int,
    fits: list[RoundRecord],
    participants: list[FakeParticipant],
    sampler: CpuSampler | None,
    elapsed: dict[int, float],
    limit_s: float,
    secure: bool = False,
) -> dict[str, Any]:
    """Turn the round log and the participants' samples into the JSON line."""
    raw = 4 * d
    by_round = {r.number: r for r in fits}
    steady = steady_rounds(rounds)
    open_to_close = [secs(by_round[r].started_at, by_round[r].finished_at) for r in steady]  # type: ignore[arg-type]
    # Start of round r to start of round r + 1: the full period, including aggregation,
    # the commit and the driver's sleep. Round R has no successor.
    cycles = [
        secs(by_round[r].started_at, by_round[r + 1].started_at)
        for r in steady
        if r + 1 in by_round
    ]
    samples = {p.name: {s.round: s for s in p.samples} for p in participants}
    last_ack = {r: max(samples[p][r].acked_at for p in samples) for r in steady}
    first_task = {r: min(samples[p][r].task_at for p in samples) for r in steady}
    transfer = [secs(by_round[r].started_at, last_ack[r]) for r in steady]
    # The coordinator times its own aggregation and commit into the round log.
    agg_commit = [
        by_round[r].metrics["coordinator_aggregate_s"] + by_round[r].metrics["coordinator_commit_s"]
        for r in steady
    ]
    dispatch_lag = [secs(by_round[r].started_at, first_task[r]) for r in steady]

    def per_round(r: int, name: str) -> Counters:
        mine = samples[name]
        previous = mine[r - 1].counters if r - 1 in mine else Counters()
        return mine[r].counters - previous

    def mean_bytes(rs: Sequence[int], attr: str) -> float:
        """Median over rounds of the mean over participants."""
        return float(
            statistics.median(
                statistics.fmean(getattr(per_round(r, p), attr) for p in samples) for r in rs
            )
        )

    def cpu_per_round(rs: Sequence[int]) -> float:
        values = []
        for r in rs:
            total = 0.0
            for p in samples:
                prev = samples[p][r - 1].cpu_s if r - 1 in samples[p] else 0.0
                total += samples[p][r].cpu_s - prev
            values.append(total)
        return float(statistics.median(values))

    coordinator_cpu: list[float] = []
    if sampler is not None:
        for r in steady:
            if r + 1 in by_round:
                a = sampler.cpu_at(by_round[r].started_at)
                b = sampler.cpu_at(by_round[r + 1].started_at)
                if a is not None and b is not None:
                    coordinator_cpu.append(b - a)

    upload = mean_bytes(steady, "wire_sent")
    download = mean_bytes(steady, "wire_received")
    median_open_to_close = _median(open_to_close)
    median_cycle = _median(cycles)
    logged = [elapsed[r] for r in steady if r in elapsed]
    return {
        "benchmark": "round_overhead",
        "d": d,
        "n": n,
        "rounds": rounds,
        "secure_aggregation": secure,
        "steady_rounds": len(steady),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "coordinator_s_per_round_median": _r(median_open_to_close),
        "cycle_s_per_round_median": _r(median_cycle),
        "aggregate_commit_s": _r(_median(agg_commit)),
        "aggregate_commit_share_of_cycle": _r(
            None
            if not agg_commit or not median_cycle
            else statistics.median(agg_commit) / median_cycle,
            3,
        ),
        "transfer_s": _r(_median(transfer)),
        "dispatch_lag_s": _r(_median(dispatch_lag)),
        "coordinator_log_elapsed_s_median": _median(logged),
        "coordinator_cpu_s_per_round": _r(_median(coordinator_cpu)),
        "participants_cpu_s_per_round": _r(cpu_per_round(steady)),
        "upload_bytes_per_participant": round(upload),
        "download_bytes_per_participant": round(download),
        "upload_ratio": _r(upload / raw, 5),
        "download_ratio": _r(download / raw, 5),
        "http_upload_ratio": _r(mean_bytes(steady, "http_sent") / raw, 5),
        "http_download_ratio": _r(mean_bytes(steady, "http_received") / raw, 5),
        "body_upload_ratio": _r(mean_bytes(steady, "body_sent") / raw, 5),
        "body_download_ratio": _r(mean_bytes(steady, "body_received") / raw, 5),
        "upload_retransmitted_ratio": _r(mean_bytes(steady, "wire_retransmitted") / raw, 5),
        "new_connections_per_participant": _r(mean_bytes(steady, "connections"), 3),
        "round1_upload_ratio": _r(mean_bytes([1], "wire_sent") / raw, 5),
        "round1_download_ratio": _r(mean_bytes([1], "wire_received") / raw, 5),
        "bytes_goal_met": upload / raw <= 1.05 and download / raw <= 1.05,
        "tls_loopback_limit_s": _r(limit_s, 5),
        "ratio_to_limit": _r(
            None if median_open_to_close is None else median_open_to_close / limit_s, 2
        ),
        "cycle_ratio_to_limit": _r(None if median_cycle is None else median_cycle / limit_s, 2),
        "per_round_open_to_close_s": [_r(v, 3) for v in open_to_close],
        "per_round_cycle_s": [_r(v, 3) for v in cycles],
    }


@dataclass(frozen=True)
class SecAggEvents:
    """The coordinator's ``secagg.start`` and ``secagg.finish`` events of one fit round."""

    start: EventRecord
    finish: EventRecord


def secagg_by_round(events: Sequence[EventRecord], *, rounds: int) -> dict[int, SecAggEvents]:
    """Pair each round's ``secagg.start`` with its ``secagg.finish``; raise on a failure."""
    failed = [e for e in events if e.action == "secagg.fail"]
    if failed:
        raise RuntimeError(f"secure aggregation failed: {[e.details for e in failed[:3]]}")
    found: dict[int, dict[str, EventRecord]] = {}
    for event in events:
        number = int(event.resource.removeprefix("round/"))
        found.setdefault(number, {})[event.action] = event
    out = {
        r: SecAggEvents(e["secagg.start"], e["secagg.finish"])
        for r, e in found.items()
        if {"secagg.start", "secagg.finish"} <= set(e)
    }
    if sorted(out) != list(range(1, rounds + 1)):
        raise RuntimeError(f"secagg events for rounds {sorted(found)}, expected 1..{rounds}")
    return out


def summarize_secure(
    *,
    d: int,
    rounds: int,
    fits: list[RoundRecord],
    participants: list[FakeParticipant],
    events: dict[int, SecAggEvents],
    upload_bytes: int,
    download_bytes: int,
) -> dict[str, Any]:
    """The secure-mode fields: where a SecAgg+ round's time goes, and its bytes by step.

    Times come from two clocks of one machine: the coordinator's (the round log and the
    ``secagg.*`` events) and the participants' (when a task arrived, when an answer was
    acknowledged). ``upload_bytes`` and ``download_bytes`` are the wire bytes per
    participant per round that :func:`summarize` measured.
    """
    by_round = {r.number: r for r in fits}
    steady = steady_rounds(rounds)
    samples = {p.name: {s.round: s for s in p.samples} for p in participants}

    def median_over(values: Any) -> float | None:
        return _r(_median([float(v) for v in values]))

    start = {r: events[r].start.time for r in steady}
    finish = {r: events[r].finish.time for r in steady}
    closed: dict[int, datetime] = {}
    for r in steady:
        finished_at = by_round[r].finished_at
        assert finished_at is not None, "a committed round has a finish time"
        closed[r] = finished_at
    open_to_close = [secs(by_round[r].started_at, closed[r]) for r in steady]
    secagg = [secs(start[r], finish[r]) for r in steady]

    # Each stage's span: from the previous boundary (secagg.start, then the last
    # acknowledged answer of the previous stage) to its own last acknowledged answer;
    # its dispatch: from that boundary until the first participant holds the stage's task.
    stage_spans: dict[str, list[float]] = {stage: [] for stage in SECAGG_STAGES}
    stage_dispatch: dict[str, list[float]] = {stage: [] for stage in SECAGG_STAGES}
    for r in steady:
        boundary = start[r]
        for stage in SECAGG_STAGES:
            got = min(samples[p][r].stages[stage][0] for p in samples)
            acked = max(samples[p][r].stages[stage][1] for p in samples)
            stage_dispatch[stage].append(secs(boundary, got))
            stage_spans[stage].append(secs(boundary, acked))
            boundary = acked

    steps = ["fit", *SECAGG_STAGES]

    def body(step: str, index: int) -> float:
        return float(
            statistics.median(
                statistics.fmean(samples[p][r].bodies.get(step, (0, 0))[index] for p in samples)
                for r in steady
            )
        )

    masked = 4 * (d + 1)  # ring_bits = 32: one 4-byte element per value, plus the weight
    setup = events[steady[0]].start.details
    survivors = [len(events[r].finish.details.get("survivors", [])) for r in events]
    refused = sum(len(events[r].finish.details.get("refused", {})) for r in events)
    return {
        "secagg_k": setup.get("k"),
        "secagg_t": setup.get("t"),
        "secagg_value_bits": setup.get("value_bits"),
        "secagg_survivors_min": min(survivors),
        "secagg_refused": refused,
        "open_to_secagg_start_s": median_over(
            secs(by_round[r].started_at, start[r]) for r in steady
        ),
        "report_to_secagg_finish_s": median_over(secagg),
        "secagg_finish_to_commit_s": median_over(secs(finish[r], closed[r]) for r in steady),
        "secagg_share_of_round": _r(
            _median([a / b for a, b in zip(secagg, open_to_close, strict=True) if b > 0]), 3
        ),
        "secagg_stage_s": {stage: median_over(v) for stage, v in stage_spans.items()},
        "secagg_stage_dispatch_s": {stage: median_over(v) for stage, v in stage_dispatch.items()},
        "masked_input_bytes": masked,
        "upload_beyond_masked_bytes": upload_bytes - masked,
        "download_beyond_model_bytes": download_bytes - 4 * d,
        "body_bytes_by_step": {
            step: {"sent": round(body(step, 0)), "received": round(body(step, 1))} for step in steps
        },
        "per_round_secagg_s": [_r(v, 3) for v in secagg],
    }


# -- main ------------------------------------------------------------------------------


def _count(text: str) -> int:
    value = float(text.replace("_", ""))
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(value)


def secure_over_plain(secure: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Ratios of a secure case to the plain case of the same ``(d, n)`` and run."""

    def ratio(key: str) -> float | None:
        a, b = secure.get(key), plain.get(key)
        return None if a is None or not b else round(a / b, 3)

    return {
        "secure_over_plain": ratio("coordinator_s_per_round_median"),
        "secure_over_plain_cycle": ratio("cycle_s_per_round_median"),
        "secure_over_plain_upload": ratio("upload_bytes_per_participant"),
        "secure_over_plain_download": ratio("download_bytes_per_participant"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run every ``(d, n)`` case and print one JSON line each; 1 if any case failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=_count, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--n", type=_count, nargs="+", default=[5, 20])
    parser.add_argument("--rounds", type=_count, default=10, help="rounds per case (>= 3)")
    parser.add_argument("--case-budget-s", type=float, default=150.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp dir")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--secure", action="store_true", help="run with SecAgg+ on")
    mode.add_argument(
        "--both", action="store_true", help="plain then secure for each (d, n), with ratios"
    )
    args = parser.parse_args(argv)
    modes = [False, True] if args.both else [args.secure]
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 is warm-up; cycles need a next round)")
    failed = False
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fs-bench-")))
        else:
            root = args.workdir
            root.mkdir(parents=True, exist_ok=True)
        for d in args.d:
            for n in args.n:
                plain: dict[str, Any] | None = None
                for secure in modes:
                    label = f"d={d} n={n} secure={secure}"
                    log(f"{label} rounds={args.rounds} ...")
                    try:
                        result = run_case(
                            d=d,
                            n=n,
                            rounds=args.rounds,
                            root=root,
                            budget_s=args.case_budget_s,
                            secure=secure,
                        )
                    except Exception as exc:  # one failed case must not hide the others
                        failed = True
                        result = {
                            "benchmark": "round_overhead",
                            "d": d,
                            "n": n,
                            "secure_aggregation": secure,
                            "error": repr(exc),
                        }
                        log(f"{label} failed: {exc}")
                    if not secure:
                        plain = result
                    elif plain is not None and "error" not in plain and "error" not in result:
                        result.update(secure_over_plain(result, plain))
                    print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
