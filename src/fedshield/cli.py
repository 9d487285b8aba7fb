"""The ``fedshield`` command line (typer + rich).

Every command turns fedshield errors into one message, a hint and the error's exit code
(see :mod:`fedshield.errors`); no user ever sees a traceback. ``FEDSHIELD_DEBUG=1`` shows
the traceback of an unexpected error for bug reports.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedshield.config import FederationConfig, load_config, parse_config
from fedshield.errors import ConfigError, FedshieldError

__all__ = ["app", "main"]

_T = TypeVar("_T")

# typer >= 0.23 vendors click; older typer uses click itself. Take the classes from
# typer so that usage errors are caught whichever it is.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)

app = typer.Typer(
    name="fedshield",
    help="Secure cross-silo federated learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Inspect, export and roll back committed model versions.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
participants_app = typer.Typer(
    help="Participants: list, enroll, revoke, quarantine, release; trust scores.",
    no_args_is_help=True,
)
app.add_typer(participants_app, name="participants")

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

JsonOpt = Annotated[
    str | None,
    typer.Option("--json", help="Write a machine-readable summary to PATH ('-' for stdout)."),
]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Coordinator working directory.")]


def _console(json_path: str | None) -> Console:
    # With --json - the summary owns stdout; human progress goes to stderr.
    return _err if json_path == "-" else _out


def _emit_json(json_path: str | None, summary: dict[str, Any]) -> None:
    if json_path is None:
        return
    text = json.dumps(summary, indent=2, sort_keys=True)
    if json_path == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        Path(json_path).write_text(text + "\n", encoding="utf-8")


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _round_line(entry: dict[str, Any], total: int) -> str:
    metrics = entry.get("metrics", {})
    kind = entry.get("kind", "fit")
    answered = len(entry.get("answered", []))
    asked = answered + len(entry.get("dropped", []))
    elapsed = entry.get("elapsed_s")
    tail = f"  elapsed {elapsed:.1f}s" if elapsed is not None else ""
    if entry.get("status") not in ("committed", "done"):
        return (
            f"round {entry['round']:>3}  attempt {entry.get('attempt', 1)}  "
            f"[yellow]{entry.get('status')}[/]: {entry.get('reason')}"
        )
    if kind == "evaluate":
        return (
            f"final evaluation  participants {answered}/{asked}  "
            f"accuracy {_fmt(metrics.get('accuracy'))}{tail}"
        )
    accuracy = metrics.get("server_accuracy", metrics.get("eval_accuracy"))
    if "epsilon_max" in metrics:  # DP: the training loss stays at the sites
        spent = f"epsilon <= {_fmt(metrics['epsilon_max'], '.3f')}"
    else:
        spent = f"loss {_fmt(metrics.get('train_loss'))}"
    line = (
        f"round {entry['round']:>3}/{total}  participants {answered}/{asked}  "
        f"{spent}  accuracy {_fmt(accuracy)}{tail}"
    )
    if entry.get("reason"):  # who refused this round (e.g. a spent privacy budget)
        line += f"\n           [yellow]{escape(str(entry['reason']))}[/]"
    return line


_PLAIN_WARNING = (
    "[bold yellow]warning[/]: secure aggregation is OFF: the coordinator sees every "
    "participant's update in the clear (see docs/secagg.md)"
)


_NO_DP_WARNING = (
    "[bold yellow]warning[/]: differential privacy is OFF (\\[privacy] mode = 'off'): "
    "participants' updates can reveal their training records"
)


def _privacy_line(cfg: FederationConfig) -> str:
    privacy = cfg.privacy
    if not privacy.enabled:
        return "differential privacy OFF"
    return (
        f"sample-level DP (epsilon <= {privacy.target_epsilon:g}, "
        f"delta {privacy.target_delta:g} per site)"
    )


def _without_dp(cfg: FederationConfig) -> FederationConfig:
    privacy = cfg.privacy.model_copy(update={"mode": "off"})
    return FederationConfig.model_validate({**cfg.model_dump(), "privacy": privacy.model_dump()})


def _load(config: Path | None, *, participants: int | None, rounds: int | None) -> FederationConfig:
    cfg = load_config(config) if config is not None else parse_config({}, source="defaults")
    if participants is not None:
        cfg = cfg.with_participants(participants)
    if rounds is not None:
        cfg = cfg.with_rounds(rounds)
    return cfg


def _summary_table(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="fedshield summary", show_header=False)
    for key in (
        "federation",
        "rounds_completed",
        "final_accuracy",
        "model_version",
        "model_sha3",
        "participants",
        "transport",
        "wall_s",
        "workdir",
    ):
        if key in summary:
            table.add_row(key, str(summary[key]))
    per = summary.get("per_participant_accuracy") or {}
    if per:
        table.add_row(
            "per-participant accuracy", ", ".join(f"{k} {v:.3f}" for k, v in sorted(per.items()))
        )
    privacy = summary.get("privacy") or {}
    if privacy:
        table.add_row(
            "privacy spent (epsilon / budget)",
            ", ".join(
                f"{k} {_fmt(v.get('epsilon'), '.3f')}/{_fmt(v.get('budget'), 'g')}"
                if v.get("dp")
                else f"{k} [yellow]no DP[/]"
                for k, v in sorted(privacy.items())
            ),
        )
    console.print(table)


# -- demo and simulate -------------------------------------------------------------------


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Fresh working directory.")] = Path(
        "fedshield-demo"
    ),
    config: Annotated[Path | None, typer.Option(help="Federation TOML (default: digits).")] = None,
    participants: Annotated[int | None, typer.Option(help="Number of participants.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Number of rounds.")] = None,
    plain_aggregation: Annotated[
        bool,
        typer.Option(
            "--plain-aggregation",
            help="Turn secure aggregation off (insecure: the coordinator sees every update).",
        ),
    ] = False,
    no_dp: Annotated[
        bool,
        typer.Option(
            "--no-dp",
            help="Train without differential privacy (insecure: updates can reveal records).",
        ),
    ] = False,
    json_path: JsonOpt = None,
) -> None:
    """Run a whole secure federation on this machine: one process per organization.

    Secure aggregation (SecAgg+) is on unless --plain-aggregation is given or the
    config says ``enabled = false``. Every site trains with sample-level differential
    privacy (DP-SGD, its own budget: ``[privacy]``) unless --no-dp is given or the
    config says ``mode = "off"``.
    """
    from fedshield.federation.launcher import run_demo

    cfg = _load(config, participants=participants, rounds=rounds)
    if plain_aggregation:
        secure = cfg.secure_aggregation.model_copy(update={"enabled": False})
        cfg = FederationConfig.model_validate(
            {**cfg.model_dump(), "secure_aggregation": secure.model_dump()}
        )
    if no_dp:
        cfg = _without_dp(cfg)
    cfg = cfg.model_copy(update={"coordinator": cfg.coordinator.model_copy(update={"port": 0})})
    if cfg.rounds.min_available is None:
        # Every organization of the demo starts at once: let round 1 wait for all of them.
        count = len(cfg.participants.resolved_names())
        rounds_cfg = cfg.rounds.model_copy(update={"min_available": count})
        cfg = cfg.model_copy(update={"rounds": rounds_cfg})
    console = _console(json_path)
    names = cfg.participants.resolved_names()
    console.print(
        f"[bold]fedshield demo[/]: {len(names)} participants, {cfg.rounds.count} rounds, "
        f"task {cfg.task.name!r}, mutual TLS 1.3 on {cfg.coordinator.host}, secure "
        f"aggregation {'on' if cfg.secure_aggregation.enabled else 'OFF'}, "
        f"{_privacy_line(cfg)}"
    )
    if not cfg.secure_aggregation.enabled:
        console.print(_PLAIN_WARNING)
    if not cfg.privacy.enabled:
        console.print(_NO_DP_WARNING)
    base_dir = config.parent if config is not None else Path.cwd()
    result = run_demo(
        cfg,
        workdir=workdir.resolve(),
        base_dir=base_dir,
        on_round=lambda e: console.print(_round_line(e, cfg.rounds.count)),
    )
    _summary_table(console, result.summary)
    _emit_json(json_path, result.summary)


@app.command()
def simulate(
    config: Annotated[Path, typer.Argument(help="Federation TOML file.")],
    participants: Annotated[
        int | None, typer.Option(help="Override the participant count.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to keep the model registry and the sites' privacy ledgers "
            "(default: a temporary directory)."
        ),
    ] = None,
    no_dp: Annotated[
        bool,
        typer.Option(
            "--no-dp",
            help="Train without differential privacy (insecure: updates can reveal records).",
        ),
    ] = False,
    json_path: JsonOpt = None,
) -> None:
    """Run the same round logic in one process, without a network.

    Every site trains under the config's ``[privacy]`` (sample-level DP by default) and
    keeps its privacy ledger in WORKDIR/privacy/.
    """
    import tempfile

    from fedshield.federation.coordinator import Committed
    from fedshield.federation.round import RoundEvaluated, RoundRetried
    from fedshield.federation.simulation import run_simulation

    cfg = _load(config, participants=participants, rounds=rounds)
    if no_dp:
        cfg = _without_dp(cfg)
    console = _console(json_path)
    console.print(f"[bold]fedshield simulate[/]: {_privacy_line(cfg)}")
    if not cfg.privacy.enabled:
        console.print(_NO_DP_WARNING)

    def report(event: object) -> None:
        if isinstance(event, Committed):
            console.print(
                _round_line(
                    {
                        "round": event.round,
                        "status": "committed",
                        "answered": event.answered,
                        "dropped": event.dropped,
                        "metrics": event.metrics,
                        "elapsed_s": event.elapsed_s,
                        "reason": "; ".join(
                            f"{p} refused: {r}" for p, r in sorted(event.rejected.items())
                        ),
                    },
                    cfg.rounds.count,
                )
            )
        elif isinstance(event, RoundEvaluated):
            console.print(
                _round_line(
                    {
                        "round": event.round,
                        "kind": "evaluate",
                        "status": "done",
                        "answered": event.answered,
                        "dropped": event.dropped,
                        "metrics": event.metrics,
                    },
                    cfg.rounds.count,
                )
            )
        elif isinstance(event, RoundRetried):
            console.print(f"round {event.round}: retrying ({event.reason})")

    with tempfile.TemporaryDirectory(prefix="fedshield-sim-") as tmp:
        target = workdir.resolve() if workdir is not None else Path(tmp)
        result = run_simulation(cfg, workdir=target, base_dir=config.parent, on_report=report)
    summary = {
        "federation": cfg.federation.name,
        "rounds_completed": result.rounds_completed,
        "final_accuracy": None
        if result.final_accuracy is None
        else round(result.final_accuracy, 4),
        "per_participant_accuracy": {
            k: round(v, 4) for k, v in result.per_participant_accuracy.items()
        },
        "model_version": result.model_version,
        "model_sha3": result.model_sha3,
        "participants": result.participants,
        "wall_s": round(result.wall_s, 3),
        "transport": "in-process",
        "secure_aggregation": result.secure_aggregation,
        "privacy": result.privacy,
    }
    _summary_table(console, {k: v for k, v in summary.items() if k != "per_participant_accuracy"})
    _emit_json(json_path, summary)


# -- red team -------------------------------------------------------------------------------


def _names(option: str, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{option} is empty", hint=f"Pass {option} a,b,c (comma-separated).")
    return names


def _param_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def _params(option: str, items: list[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, param = key.strip().partition(".")
        if not (sep and dot and name and param and value.strip()):
            raise ConfigError(
                f"{option} {item!r} is not NAME.KEY=VALUE",
                hint=f"For example {option} sign_flip.scale=1",
            )
        out.setdefault(name, {})[param] = _param_value(value.strip())
    return out


def _cell_text(cell: Any) -> str:
    if cell.status == "not_applicable":
        return "[dim]n/a[/]"
    if cell.final_accuracy is None:
        return "-"
    text = f"{100 * cell.final_accuracy:.1f}"
    if cell.accuracy_drop is not None:
        text += f" ({-100 * cell.accuracy_drop:+.1f})"
    if cell.attack_success_rate is not None:
        text += f" ASR {100 * cell.attack_success_rate:.0f}%"
    if cell.status == "failed":
        text += " [yellow]stopped[/]"
    return text


@app.command()
def redteam(
    config: Annotated[Path, typer.Argument(help="Federation TOML file.")],
    attacks: Annotated[
        str | None,
        typer.Option(help="Comma-separated attacks (default: all ten); 'none' always runs."),
    ] = None,
    defenses: Annotated[
        str | None, typer.Option(help="Comma-separated robust rules (default: all eleven).")
    ] = None,
    malicious_fraction: Annotated[
        float, typer.Option(help="Share of malicious participants, ceil(fraction * N).")
    ] = 0.2,
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    participants: Annotated[
        int | None, typer.Option(help="Override the participant count.")
    ] = None,
    secure_groups: Annotated[
        int | None,
        typer.Option(help="Group-wise SecAgg+ with G groups (default: plain aggregation)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Chooses the attackers (default: the federation seed).")
    ] = None,
    attack_param: Annotated[
        list[str] | None,
        typer.Option(help="Override an attack's parameter, NAME.KEY=VALUE (repeatable)."),
    ] = None,
    defense_param: Annotated[
        list[str] | None,
        typer.Option(help="Set a rule's [robust] param, RULE.KEY=VALUE (repeatable)."),
    ] = None,
    json_path: JsonOpt = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG heatmap to PATH.")] = None,
) -> None:
    """Run every attack against every defence in simulation (evaluation only).

    Each cell is a full simulated federation with the first ceil(fraction * N)
    participants of a seeded random order malicious. See docs/redteam.md.
    """
    from fedshield.attacks.redteam import (
        CLEAN,
        DEFAULT_ATTACKS,
        DEFAULT_DEFENSES,
        plot_heatmap,
        run_redteam,
    )

    cfg = _load(config, participants=participants, rounds=rounds)
    console = _console(json_path)
    chosen_attacks = _names("--attacks", attacks) or list(DEFAULT_ATTACKS)
    chosen_defenses = _names("--defenses", defenses) or list(DEFAULT_DEFENSES)
    defense_params: dict[str, dict[str, float]] = {}
    for rule, values in _params("--defense-param", defense_param).items():
        for key, value in values.items():
            if not isinstance(value, int | float):
                raise ConfigError(
                    f"--defense-param {rule}.{key} must be a number, got {value!r}",
                    hint="For example --defense-param centered_clipping.tau=0.5",
                )
            defense_params.setdefault(rule, {})[key] = float(value)
    attack_params = _params("--attack-param", attack_param)
    n = len(cfg.participants.resolved_names())
    console.print(
        f"[bold]fedshield redteam[/]: {cfg.task.name!r}, {n} participants, "
        f"{cfg.rounds.count} rounds, malicious fraction {malicious_fraction}, "
        f"{len(chosen_attacks) + 1} x {len(chosen_defenses)} cells"
    )

    def progress(cell: Any) -> None:
        console.print(
            f"{cell.attack:>14} vs {cell.defense:<17} {_cell_text(cell)}"
            f"  [dim]{cell.wall_s:.1f}s{'  ' + cell.reason if cell.reason else ''}[/]",
            soft_wrap=True,
        )

    report = run_redteam(
        cfg,
        base_dir=config.parent,
        attacks=chosen_attacks,
        defenses=chosen_defenses,
        malicious_fraction=malicious_fraction,
        secure_groups=secure_groups,
        seed=seed,
        attack_params=attack_params,
        defense_params=defense_params,
        on_cell=progress,
    )
    settings = report.settings
    table = Table(
        title=(
            f"final accuracy % (change vs the clean run); {len(settings['malicious'])} of "
            f"{settings['participants']} malicious; secure aggregation "
            f"{settings['secure_aggregation']}"
        )
    )
    table.add_column("attack")
    for defense in report.defenses:
        table.add_column(defense, justify="right")
    for attack in report.attacks:
        label = "none (clean)" if attack == CLEAN else attack
        table.add_row(label, *(_cell_text(report.cell(attack, d)) for d in report.defenses))
    console.print(table)
    if plot is not None:
        plot_heatmap(report, plot)
        console.print(f"heatmap written to {plot}")
    _emit_json(json_path, report.to_json())


# -- a real multi-organization setup --------------------------------------------------------


@app.command()
def provision(
    config: Annotated[Path, typer.Argument(help="Federation TOML file.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the CA and the kits.")],
    coordinator_url: Annotated[str | None, typer.Option(help="URL participants will use.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing federation in OUT.")] = False,
) -> None:
    """Create the federation CA, the coordinator kit and one kit per organization."""
    from fedshield.federation.coordinator import utcnow
    from fedshield.federation.kits import provision_federation

    cfg = load_config(config)
    result = provision_federation(
        cfg,
        out_dir=out,
        base_dir=config.parent,
        coordinator_url=coordinator_url,
        now=utcnow(),
        overwrite=force,
    )
    _out.print(f"federation CA     {result.ca_cert_path}")
    _out.print(f"coordinator kit   {result.coordinator_dir}")
    _out.print(f"admin kit         {result.admin_dir}")
    for name, path in result.participant_dirs.items():
        _out.print(f"participant kit   {path}  ({name})")
    _out.print("Give each organization its own kit folder; keep ca/ca.key offline.")


@app.command()
def coordinator(
    config: Annotated[Path, typer.Option(help="Federation TOML file.")],
    kit: Annotated[Path, typer.Option(help="The coordinator kit from `fedshield provision`.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    host: Annotated[str | None, typer.Option(help="Listen address (default from config).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here once listening.")
    ] = None,
) -> None:
    """Run the coordinator service (HTTPS, client certificates required)."""
    from fedshield.federation.coordinator import Committed, Coordinator, utcnow
    from fedshield.federation.service import CoordinatorService
    from fedshield.identity import Kit, server_ssl_context
    from fedshield.policy import load_policy, policy_path
    from fedshield.transport.server import serve

    cfg = load_config(config)
    policy = load_policy(policy_path(cfg.access.policy, config.parent))
    kit_obj = Kit.load(kit)
    kit_hint = "Use the kits/coordinator folder that `fedshield provision` wrote for this config."
    if kit_obj.role != "coordinator":
        raise ConfigError(
            f"--kit {kit} is a {kit_obj.role} kit; the coordinator needs its own", hint=kit_hint
        )
    if kit_obj.federation != cfg.federation.name:
        raise ConfigError(
            f"--kit belongs to federation {kit_obj.federation!r}, the config is "
            f"for {cfg.federation.name!r}",
            hint=kit_hint,
        )
    # Bind first: a port in use is reported before the task and the workdir are touched.
    bind_host = host or cfg.coordinator.host
    bind_port = cfg.coordinator.port if port is None else port
    sock = _bind(bind_host, bind_port)
    try:
        core = Coordinator(cfg, workdir=workdir, base_dir=config.parent, now=utcnow())
    except BaseException:
        sock.close()
        raise
    if core.resumed_from is not None:
        _out.print(
            f"resuming from model version {core.resumed_from} "
            f"after {core.machine.completed_rounds} committed rounds"
        )
    total = cfg.rounds.count

    def report(event: object) -> None:
        if isinstance(event, Committed):
            _out.print(
                _round_line(
                    {
                        "round": event.round,
                        "status": "committed",
                        "answered": event.answered,
                        "dropped": event.dropped,
                        "metrics": event.metrics,
                        "elapsed_s": event.elapsed_s,
                    },
                    total,
                )
            )

    service = CoordinatorService(
        core,
        config=cfg,
        signing_key=kit_obj.signing_key(),
        name=kit_obj.name,
        on_report=report,
        policy=policy,
    )
    bound = sock.getsockname()[1]
    _record_listen(core, kit_obj, host=bind_host, port=bound)
    _record_policy(core, policy, policy_path(cfg.access.policy, config.parent))
    if not cfg.secure_aggregation.enabled:
        _out.print(_PLAIN_WARNING)
    if not cfg.privacy.enabled:
        _out.print(
            _NO_DP_WARNING + " (the federation's default; each site's participant.toml decides)"
        )
    _out.print(
        f"coordinator for {cfg.federation.name!r} listening on https://{bind_host}:{bound} "
        "(TLS 1.3, client certificates required)"
    )
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.replace(ready_file)
    try:
        serve(service, ssl_context=server_ssl_context(kit_obj), sock=sock)
    finally:
        sock.close()
        core.close()
    if core.machine.failure:
        raise FedshieldError(core.machine.failure)
    _out.print(
        f"federation {service.end.kind if service.end else 'stopped'}; "
        f"head is model version {core.machine.head.version}"
    )


def _record_listen(core: Any, kit: Any, *, host: str, port: int) -> None:
    """Audit how the coordinator is reached: TLS 1.3, client certificates, its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from fedshield.federation.coordinator import utcnow

    cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(kit.ca_path.read_bytes())
    core.events.record(
        actor=core.actor,
        action="transport.listen",
        resource=f"https://{host}:{port}",
        outcome="ok",
        details={
            "tls": "TLSv1.3",
            "client_certificates": "required",
            "certificate_sha256": cert.fingerprint(hashes.SHA256()).hex(),
            "certificate_not_after": cert.not_valid_after_utc.isoformat(),
            "ca_sha256": ca.fingerprint(hashes.SHA256()).hex(),
        },
        now=utcnow(),
    )


def _record_policy(core: Any, policy: Any, path: Path | None) -> None:
    """Audit the access policy in force: its file's SHA3-256 and its custom roles."""
    from fedshield.federation.coordinator import utcnow

    core.events.record(
        actor=core.actor,
        action="policy.load",
        resource="access-policy",
        outcome="ok",
        details={
            # The hash of the bytes load_policy parsed: the file is read once.
            "policy_sha3": policy.source_sha3,
            "source": "built-in roles only" if path is None else path.name,
            "custom_roles": list(policy.custom_roles),
        },
        now=utcnow(),
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP, and without it every small reply waits ~40 ms for Nagle.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason}",
            hint="Pick another --port, or stop what is using it.",
        ) from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


@app.command()
def participant(
    kit: Annotated[Path, typer.Option(help="This organization's kit folder.")],
    coordinator_url: Annotated[
        str | None, typer.Option("--coordinator", help="Override the coordinator URL.")
    ] = None,
) -> None:
    """Take part in a federation: pull work, train locally, push updates."""
    from fedshield.federation.agent import load_participant_file, run_agent
    from fedshield.identity import Kit

    kit_obj = Kit.load(kit)
    settings = load_participant_file(kit)
    _out.print(
        f"participant {kit_obj.name!r} of {kit_obj.federation!r}: "
        f"connecting to {coordinator_url or settings.participant.coordinator}"
    )
    result = run_agent(
        kit_obj,
        settings,
        coordinator_url=coordinator_url,
        on_message=lambda m: _out.print(f"{kit_obj.name}: {escape(m)}"),
    )
    refused = (
        f", declined {result.rounds_refused} (privacy budget spent)"
        if result.rounds_refused
        else ""
    )
    _out.print(
        f"{kit_obj.name}: done ({result.end}); trained {result.rounds_trained} rounds{refused}"
    )


# -- identity: distributed provisioning -----------------------------------------------------

identity_app = typer.Typer(
    help="Distributed provisioning: a site makes its keys and a CSR, the admin signs it.",
    no_args_is_help=True,
)
app.add_typer(identity_app, name="identity")


@identity_app.command("csr")
def identity_csr(
    name: Annotated[str, typer.Option("--name", help="The entity name (certificate CN).")],
    org: Annotated[str, typer.Option("--org", help="The organization (certificate O).")],
    federation: Annotated[str, typer.Option("--federation", help="The federation id.")],
    out: Annotated[Path, typer.Option("--out", help="The new kit directory (at the site).")],
    role: Annotated[str, typer.Option("--role", help="The role (certificate OU).")] = (
        "participant"
    ),
) -> None:
    """Make this site's keys and a certificate signing request; keys never leave OUT."""
    from fedshield.identity.csr import make_request

    result = make_request(out, federation=federation, name=name, organization=org, role=role)
    _out.print(f"keys and request written to {escape(str(result.kit_dir))}")
    _out.print(
        f"send only {escape(str(result.request_path))} to the federation admin; put the "
        "cert.pem and ca.crt you get back into the same directory"
    )


@identity_app.command("sign")
def identity_sign(
    request: Annotated[Path, typer.Argument(help="The site's request.csr.")],
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (ca.crt, ca.key).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the certificate.")],
    valid_days: Annotated[int, typer.Option(min=1, help="Lifetime in days.")] = 825,
    policy: Annotated[
        Path | None, typer.Option(help="The access policy, if the role is a custom one.")
    ] = None,
) -> None:
    """Sign a site's CSR with the federation CA (admin); prints who it vouches for."""
    from fedshield.identity import load_certificate, load_private_key, write_certificate
    from fedshield.identity.csr import sign_request
    from fedshield.policy import load_policy

    try:
        data = request.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {request}: {exc.strerror}") from exc
    roles = tuple(load_policy(policy).roles)
    cert, identity = sign_request(
        data,
        load_private_key(ca / "ca.key"),
        load_certificate(ca / "ca.crt"),
        now=_utcnow(),
        valid_days=valid_days,
        roles=roles,
    )
    write_certificate(out, cert)
    _out.print(
        f"signed {escape(identity.name)} ({escape(identity.organization)}, role "
        f"{escape(identity.role)}), certificate sha256 {identity.fingerprint_sha256}, "
        f"valid until {identity.not_after.isoformat()}"
    )
    _out.print(f"certificate written to {escape(str(out))}; send it and ca/ca.crt to the site")


@identity_app.command("rotate")
def identity_rotate(
    kit: Annotated[Path, typer.Option("--kit", help="The kit to re-key (in place).")],
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (ca.crt, ca.key).")],
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="The coordinator's workdir: revoke the old certificate there."
        ),
    ] = None,
    grace_s: Annotated[
        float, typer.Option(min=0.0, help="Seconds the old certificate stays valid.")
    ] = 3600.0,
    valid_days: Annotated[int, typer.Option(min=1, help="Lifetime in days.")] = 825,
) -> None:
    """Give an entity a new key pair and certificate; revoke the old one after a grace period."""
    from datetime import timedelta

    from fedshield.identity import Kit, load_certificate, load_private_key
    from fedshield.identity.rotate import rotate_kit
    from fedshield.storage import EventLog
    from fedshield.storage.identity import Revocations

    db = _database(workdir) if workdir is not None else None
    now = _utcnow()
    try:
        rotation = rotate_kit(
            Kit.load(kit, now=now),
            load_private_key(ca / "ca.key"),
            load_certificate(ca / "ca.crt"),
            now=now,
            valid_days=valid_days,
        )
        _out.print(
            f"{escape(rotation.new.name)}: new certificate {rotation.new.fingerprint_sha256} "
            f"(valid until {rotation.new.not_after.isoformat()}); the old one is "
            f"{escape(str(kit))}/cert.pem.previous"
        )
        if db is None:
            _out.print(
                "the old certificate stays valid until it expires: pass --workdir on the "
                "coordinator host to revoke it"
            )
            return
        effective = now + timedelta(seconds=grace_s)
        Revocations(db).revoke(
            rotation.old.name,
            reason=f"rotated to {rotation.new.fingerprint_sha256[:16]}",
            actor=_local_actor(),
            now=now,
            fingerprint_sha256=rotation.old.fingerprint_sha256,
            serial=rotation.old.serial,
            effective_at=effective,
        )
        EventLog(db).record(
            actor=_local_actor(),
            action="identity.rotate",
            resource=f"participant/{rotation.old.name}",
            outcome="ok",
            details={
                "old_cert_sha256": rotation.old.fingerprint_sha256,
                "new_cert_sha256": rotation.new.fingerprint_sha256,
                "old_revoked_at": effective.isoformat(),
            },
            now=now,
        )
        _out.print(f"the old certificate is refused from {effective.isoformat()} on")
    finally:
        if db is not None:
            db.close()


# -- models ---------------------------------------------------------------------------------


def _registry(workdir: Path) -> Any:
    from fedshield.storage import BlobStore, Database, ModelRegistry

    if not (workdir / "fedshield.db").exists():
        raise ConfigError(
            f"{workdir} holds no fedshield database",
            hint="Pass the coordinator's --workdir (for the demo: fedshield-demo/coordinator).",
        )
    return ModelRegistry(Database.for_workdir(workdir), BlobStore(workdir / "models"))


def _database(workdir: Path) -> Any:
    from fedshield.storage import Database

    if not (workdir / "fedshield.db").exists():
        raise ConfigError(
            f"{workdir} holds no fedshield database",
            hint="Pass the coordinator's --workdir (for the demo: fedshield-demo/coordinator).",
        )
    return Database.for_workdir(workdir)


@participants_app.command("scores")
def participants_scores(
    workdir: WorkdirOpt = Path("fedshield-coordinator"), json_path: JsonOpt = None
) -> None:
    """Show each participant's latest trust and anomaly score, and who is quarantined."""
    from fedshield.federation.coordinator import QUARANTINE_ACTIONS
    from fedshield.storage import EventLog, RoundLog

    db = _database(workdir)
    try:
        rounds = [r for r in RoundLog(db).list() if r.kind == "fit" and r.status == "committed"]
        jailed: dict[str, int] = {}
        for event in EventLog(db).since(0, QUARANTINE_ACTIONS):
            name = event.resource.removeprefix("participant/")
            if event.action == "participant.quarantine":
                jailed[name] = int(event.details.get("round") or 0)  # type: ignore[call-overload]
            else:
                jailed.pop(name, None)
    finally:
        db.close()
    latest: dict[str, dict[str, float | int]] = {}
    for record in rounds:
        for key, value in record.metrics.items():
            name, _, metric = key.rpartition(".")
            if metric in ("trust", "trust_score") and name:
                entry = latest.setdefault(name, {})
                entry[metric] = value
                entry["round"] = record.number
    rows = [
        {
            "participant": name,
            "round": latest.get(name, {}).get("round"),
            "trust": latest.get(name, {}).get("trust"),
            "score": latest.get(name, {}).get("trust_score"),
            "quarantined": name in jailed,
            "quarantined_in_round": jailed.get(name),
        }
        for name in sorted(set(latest) | set(jailed))
    ]
    if json_path is not None:
        _emit_json(json_path, {"participants": rows})
        return
    if not rows:
        _out.print("no trust scores: they need a robust rule with secure aggregation off")
        return
    table = Table("participant", "round", "trust", "last score", "")
    for r in rows:
        table.add_row(
            str(r["participant"]),
            str(r["round"]),
            _fmt(r["trust"], ".3f"),
            _fmt(r["score"], ".3f"),
            f"[bold red]quarantined (round {r['quarantined_in_round']})[/]"
            if r["quarantined"]
            else "",
        )
    _out.print(table)


KitOpt = Annotated[
    Path | None,
    typer.Option(
        "--kit",
        help="Act over the admin API of a running coordinator with this kit (an admin kit) "
        "instead of on --workdir locally.",
    ),
]
CoordinatorOpt = Annotated[
    str | None,
    typer.Option("--coordinator", help="The coordinator's URL (with --kit)."),
]


def _utcnow() -> datetime:
    # Not federation.coordinator.utcnow: importing it loads torch, seconds for a CLI call.
    return datetime.now(UTC)


def _local_actor() -> str:
    return f"cli:{os.environ.get('USER', 'admin')}"


def _admin_client(kit: Path, coordinator_url: str | None) -> Any:
    from fedshield.identity import Kit
    from fedshield.transport.admin_client import AdminClient

    if coordinator_url is None:
        raise ConfigError(
            "--kit needs --coordinator URL (the address of the running coordinator)",
            hint="For example --coordinator https://coordinator.example.org:8443",
        )
    return AdminClient.for_kit(Kit.load(kit), coordinator_url)


def _administration(workdir: Path, config: Any = None) -> Any:
    from fedshield.federation.admin import Administration

    return Administration(_database(workdir), config=config, models_dir=workdir / "models")


def _admin_call(
    workdir: Path,
    kit: Path | None,
    coordinator_url: str | None,
    *,
    local: Callable[[Any], _T],
    remote: Callable[[Any], _T],
    config: Any = None,
) -> _T:
    """Run one admin operation: over the admin API with ``--kit``, else on ``--workdir``.

    ``remote`` gets an :class:`~fedshield.transport.admin_client.AdminClient`, ``local``
    an :class:`~fedshield.federation.admin.Administration` on the workdir's database
    (with ``config`` when the operation needs the federation config).
    """
    if kit is not None:
        with _admin_client(kit, coordinator_url) as client:
            return remote(client)
    admin = _administration(workdir, config)
    try:
        return local(admin)
    finally:
        admin.db.close()


@participants_app.command("list")
def participants_list(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """List participants with their status: enrolled, revoked, quarantined, trust."""
    rows: list[dict[str, Any]] = _admin_call(
        workdir,
        kit,
        coordinator_url,
        local=lambda admin: [r.to_json() for r in admin.participants()],
        remote=lambda client: client.participants(),
    )
    if json_path is not None:
        _emit_json(json_path, {"participants": rows})
        return
    if not rows:
        _out.print("no participants recorded yet")
        return
    table = Table("participant", "status", "organization", "trust", "last seen")
    for r in rows:
        style = {"revoked": "bold red", "quarantined": "bold yellow"}.get(r["status"], "")
        status = f"[{style}]{r['status']}[/]" if style else r["status"]
        table.add_row(
            escape(r["name"]),
            status,
            escape(r["organization"] or ""),
            _fmt(r["trust"], ".3f"),
            (r["last_seen"] or "")[:19],
        )
    _out.print(table)


_MAX_CSR_READ_BYTES = 64 * 1024 + 1  # one byte over the CSR limit: sign_request refuses it


def _read_csr(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_CSR_READ_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the CSR {path}: {exc.strerror}",
            hint="Pass the request.csr the site made with `fedshield identity csr`.",
        ) from exc


def _running_config(workdir: Path, config: Path) -> Any:
    """Load ``config`` and check it is the one the coordinator on ``workdir`` last started with.

    The enrollment's limits come from it: a different file would check other limits
    than the coordinator enforces.
    """
    from fedshield.federation.coordinator import config_digest
    from fedshield.storage import EventLog

    cfg = load_config(config)
    db = _database(workdir)
    try:
        starts = EventLog(db).since(0, ("coordinator.start",))
    finally:
        db.close()
    if starts and starts[-1].details.get("config_sha3") != config_digest(cfg):
        raise ConfigError(
            f"{config} is not the config the coordinator on {workdir} last started with "
            f"(audit entry {starts[-1].id})",
            hint="Pass the federation file the coordinator runs with, or enroll over its "
            "admin API (--kit ADMIN-KIT --coordinator URL).",
        )
    return cfg


@participants_app.command("enroll")
def participants_enroll(
    name: Annotated[str, typer.Argument(help="The new participant (its CSR's CN).")],
    csr: Annotated[
        Path, typer.Option("--csr", help="The site's request.csr (`fedshield identity csr`).")
    ],
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (ca.crt, ca.key).")],
    organization: Annotated[
        str | None,
        typer.Option("--organization", help="The site's organization; the CSR's O must match."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the certificate (default: cert.pem beside the CSR)."
        ),
    ] = None,
    valid_days: Annotated[int, typer.Option(min=1, help="Certificate lifetime in days.")] = 825,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The federation file the coordinator runs with (locally, for its "
            "participants and limits; not with --kit).",
        ),
    ] = None,
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Enroll a new participant from its CSR (admin); its keys never leave the site.

    Signs the CSR with the federation CA (here, where the CA key is), records the
    enrollment (durable, audited) on --workdir or, with --kit, over the running
    coordinator's admin API, and only then writes the certificate. A running
    coordinator accepts the participant at once (--kit) or within
    access.revocation_refresh_s (--workdir). Send the certificate and ca/ca.crt to the
    site, which puts them into its kit directory.
    """
    from cryptography.hazmat.primitives import serialization

    from fedshield.federation.admin import sign_enrollment
    from fedshield.identity import load_certificate, write_certificate

    target = out if out is not None else csr.parent / "cert.pem"
    if target.exists():
        raise ConfigError(
            f"{target} already exists", hint="Pass --out with a path that does not exist yet."
        )
    if kit is not None and config is not None:
        raise ConfigError(
            "--config is for enrolling locally; over the API the coordinator uses its own",
            hint="Drop --config, or drop --kit and --coordinator.",
        )
    if kit is None and config is None:
        raise ConfigError(
            "enrolling on --workdir needs --config (the federation file the coordinator runs "
            "with: its participants and limits)",
            hint="Pass --config FILE, or enroll over the admin API with --kit and --coordinator.",
        )
    cfg = _running_config(workdir, config) if config is not None else None
    now = _utcnow()
    cert = sign_enrollment(
        _read_csr(csr),
        name=name,
        organization=organization,
        ca_dir=ca,
        now=now,
        valid_days=valid_days,
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)

    def local(admin: Any) -> dict[str, Any]:
        record = admin.enroll(
            name,
            pem,
            ca_cert=load_certificate(ca / "ca.crt"),
            actor=_local_actor(),
            now=now,
            organization=organization,
        )
        return {
            "enrolled": record.name,
            "enrollment": record.id,
            "organization": record.organization,
            "cert_sha256": record.cert_sha256,
            "serial": record.serial,
            "not_after": record.not_after.isoformat(),
            "at": record.enrolled_at.isoformat(),
        }

    result = _admin_call(
        workdir,
        kit,
        coordinator_url,
        local=local,
        remote=lambda client: client.enroll(name, pem, organization=organization),
        config=cfg,
    )
    write_certificate(target, cert)
    result["certificate"] = str(target)
    if json_path is not None:
        _emit_json(json_path, result)
        return
    _out.print(
        f"enrolled {escape(name)} ({escape(str(result['organization']))}), certificate "
        f"sha256 {result['cert_sha256']}, serial {result['serial']}, valid until "
        f"{result['not_after']}"
    )
    when = (
        "the coordinator accepts it now"
        if kit is not None
        else f"a coordinator running on {escape(str(workdir))} accepts it within "
        "access.revocation_refresh_s"
    )
    _out.print(
        f"certificate written to {escape(str(target))}; send it and {escape(str(ca))}/ca.crt "
        f"to the site (cert.pem and ca.crt in its kit directory); {when}"
    )


@participants_app.command("revoke")
def participants_revoke(
    name: Annotated[str, typer.Argument(help="The participant whose certificates to revoke.")],
    reason: Annotated[str, typer.Option(help="Why; recorded with the revocation.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
) -> None:
    """Revoke a participant (admin): a running coordinator refuses its next request."""
    from fedshield.storage.identity import REFRESH_S

    _admin_call(
        workdir,
        kit,
        coordinator_url,
        local=lambda admin: admin.revoke(name, reason=reason, actor=_local_actor(), now=_utcnow()),
        remote=lambda client: client.revoke(name, reason=reason),
    )
    if kit is not None:
        _out.print(f"revoked {escape(name)}; the coordinator refuses its next request")
        return
    _out.print(
        f"revoked {escape(name)}; a coordinator running on {escape(str(workdir))} refuses "
        f"its requests within {REFRESH_S:g} s (access.revocation_refresh_s)"
    )


@participants_app.command("quarantine")
def participants_quarantine(
    name: Annotated[str, typer.Argument(help="The participant to keep out of rounds.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit log.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
) -> None:
    """Quarantine a participant (admin): it is not selected from the next round on."""
    _admin_call(
        workdir,
        kit,
        coordinator_url,
        local=lambda admin: admin.quarantine(
            name, reason=reason, actor=_local_actor(), now=_utcnow()
        ),
        remote=lambda client: client.quarantine(name, reason=reason),
    )
    _out.print(f"quarantined {escape(name)}; it is not selected from the next round on")


@participants_app.command("release")
def participants_release(
    name: Annotated[str, typer.Argument(help="The quarantined participant.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
) -> None:
    """Release a quarantined participant (admin): it may be selected again next round."""
    _admin_call(
        workdir,
        kit,
        coordinator_url,
        local=lambda admin: admin.release(name, actor=_local_actor(), now=_utcnow()),
        remote=lambda client: client.release(name),
    )
    _out.print(f"released {escape(name)}; a running coordinator takes it back from the next round")


@models_app.command("list")
def models_list(
    workdir: WorkdirOpt = Path("fedshield-coordinator"), json_path: JsonOpt = None
) -> None:
    """List committed model versions; the head is marked."""
    registry = _registry(workdir)
    head = registry.head()
    versions = registry.list()
    rows = [
        {
            "version": v.version,
            "parent": v.parent,
            "round": v.round,
            "sha3": v.sha3,
            "created_at": v.created_at.isoformat(),
            "metrics": v.metrics,
            "head": head is not None and v.version == head.version,
        }
        for v in versions
    ]
    if json_path is not None:
        _emit_json(json_path, {"versions": rows})
        return
    table = Table("version", "parent", "round", "sha3", "accuracy", "created", "")
    for r in rows:
        table.add_row(
            str(r["version"]),
            str(r["parent"]),
            str(r["round"]),
            r["sha3"][:16],
            _fmt(r["metrics"].get("server_accuracy")),
            r["created_at"][:19],
            "[bold]head[/]" if r["head"] else "",
        )
    _out.print(table)


@models_app.command("show")
def models_show(version: int, workdir: WorkdirOpt = Path("fedshield-coordinator")) -> None:
    """Show one model version in full."""
    registry = _registry(workdir)
    v = registry.get(version)
    _out.print_json(
        json.dumps(
            {
                "version": v.version,
                "parent": v.parent,
                "round": v.round,
                "sha3": v.sha3,
                "num_parameters": v.num_parameters,
                "metrics": v.metrics,
                "created_at": v.created_at.isoformat(),
                "note": v.note,
            }
        )
    )


@models_app.command("export")
def models_export(
    version: int,
    out: Annotated[Path, typer.Option("--out", help="File or directory to write.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
) -> None:
    """Export a model version as safetensors (plus a JSON sidecar)."""
    path = _registry(workdir).export(version, out)
    _out.print(f"exported model version {version} to {path}")


@models_app.command("rollback")
def models_rollback(
    version: int,
    reason: Annotated[str, typer.Option(help="Why; recorded with the rollback.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    kit: KitOpt = None,
    coordinator_url: CoordinatorOpt = None,
) -> None:
    """Make an earlier version the head that the next round starts from (admin)."""

    def local(admin: Any) -> tuple[int, str]:
        v = admin.rollback(version, reason=reason, actor=_local_actor(), now=_utcnow())
        return v.version, v.sha3

    def remote(client: Any) -> tuple[int, str]:
        result = client.rollback(version, reason=reason)
        return int(result["head"]), str(result["sha3"])

    head, sha3 = _admin_call(workdir, kit, coordinator_url, local=local, remote=remote)
    _out.print(f"head is now model version {head} ({sha3[:16]}); the next round starts from it")


# -- privacy --------------------------------------------------------------------------------

privacy_app = typer.Typer(
    help="Differential privacy: calibrate noise to a budget, report what was spent.",
    no_args_is_help=True,
)
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("calibrate")
def privacy_calibrate(
    epsilon: Annotated[float, typer.Option("--epsilon", help="Target epsilon (> 0).")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta, in (0, 1).")],
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds the budget must cover.")],
    sampling_rate: Annotated[
        float,
        typer.Option(
            "--sampling-rate", help="Participants per round / all participants, in (0, 1]."
        ),
    ],
    accountant: Annotated[
        str, typer.Option("--accountant", help="pld (tight) or rdp (Renyi DP).")
    ] = "pld",
    sampling: Annotated[
        str,
        typer.Option(
            "--sampling",
            help="poisson (each participant joins with that probability) or fixed "
            "(that share drawn without replacement; rdp only).",
        ),
    ] = "poisson",
    json_path: JsonOpt = None,
) -> None:
    """Find the smallest noise multiplier that keeps ROUNDS rounds within (epsilon, delta)."""
    import logging
    import math

    from fedshield.privacy import ACCOUNTANTS, calibrate
    from fedshield.privacy import epsilon as epsilon_for

    console = _console(json_path)
    # dp-accounting's RDP logs (through absl) each Renyi order it cannot evaluate and then
    # leaves out of the minimum, which keeps the bound valid; that is not the user's concern.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with console.status("calibrating the noise multiplier"):
            z = calibrate(
                target_epsilon=epsilon,
                target_delta=delta,
                sampling_rate=sampling_rate,
                rounds=rounds,
                accountant=accountant,  # type: ignore[arg-type]  # checked by calibrate
                sampling=sampling,  # type: ignore[arg-type]
            )
            achieved: dict[str, float | None] = {}
            for name in ACCOUNTANTS:
                if sampling == "fixed" and name == "pld":
                    achieved[name] = None  # PLD has no fixed-size sampling bound
                    continue
                value = epsilon_for(
                    noise_multiplier=z,
                    sampling_rate=sampling_rate,
                    rounds=rounds,
                    delta=delta,
                    accountant=name,
                    sampling=sampling,  # type: ignore[arg-type]
                )
                achieved[name] = value if math.isfinite(value) else None
    finally:
        absl_logger.setLevel(level)
    summary = {
        "noise_multiplier": z,
        "accountant": accountant,
        "sampling": sampling,
        "target_epsilon": epsilon,
        "target_delta": delta,
        "rounds": rounds,
        "sampling_rate": sampling_rate,
        "epsilon": achieved,
    }
    if json_path is not None:
        _emit_json(json_path, summary)
        return
    table = Table(title="fedshield privacy calibrate", show_header=False)
    table.add_row("noise multiplier", f"[bold]{z:.4f}[/]")
    for method, spent in achieved.items():
        mark = " (calibrated)" if method == accountant else ""
        table.add_row(f"epsilon, {method.upper()}{mark}", _fmt(spent))
    table.add_row("delta", f"{delta:g}")
    table.add_row("rounds", str(rounds))
    table.add_row("sampling", f"{sampling}, rate {sampling_rate:g}")
    _out.print(table)
    _out.print(
        "[dim]noise standard deviation = noise multiplier x sensitivity "
        f"({'2 x clip_norm, replace-one' if sampling == 'fixed' else 'clip_norm, add/remove-one'})"
        "[/]"
    )


@privacy_app.command("report")
def privacy_report(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    json_path: JsonOpt = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="Where to write the PNG plot (default: WORKDIR/privacy-report.png)."
        ),
    ] = None,
) -> None:
    """Show the epsilon each participant spent after every round, as a table and a plot.

    Sample-level DP as each site reported it (recomputed from its ledger where the
    ledger is in WORKDIR/privacy/), participant-level DP recomputed from the privacy
    events in the database.
    """
    from fedshield.federation.privacy_report import (
        DEFAULT_PLOT,
        load_report,
        plot_report,
        table,
    )

    console = _console(json_path)
    if not console.is_terminal:
        # Piped or redirected: never truncate a column to an assumed 80-character terminal.
        console = Console(stderr=console.stderr, highlight=False, width=10_000)
    report = load_report(workdir)
    plot_path = plot if plot is not None else workdir / DEFAULT_PLOT
    plot_report(report, plot_path)
    header, rows, footer = table(report)
    view = Table(title="epsilon spent after each round")
    for index, name in enumerate(header):
        view.add_column(escape(name), justify="left" if index == 0 else "right")
    for row in rows:
        view.add_row(*row)
    view.add_section()
    for row in footer:  # the budget and delta rows
        view.add_row(*(f"[dim]{cell}[/]" for cell in row))
    console.print(f"[bold]fedshield privacy report[/]: {escape(str(workdir))}", soft_wrap=True)
    console.print(view)
    console.print("[dim]— spent nothing that round[/]")
    if any(cell.endswith("*") for row in rows for cell in row):
        console.print(
            "[dim]* from the site's ledger only: spent in an attempt that did not count[/]"
        )
    for note in report.notes:
        console.print(f"[bold yellow]note[/]: {escape(note)}", soft_wrap=True)
    console.print(f"plot written to {escape(str(plot_path))}", soft_wrap=True)
    if json_path is not None:
        summary = {**report.to_json(), "plot": str(plot_path)}
        try:
            _emit_json(json_path, summary)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the JSON report {json_path}: {exc.strerror or exc}",
                hint="Pass --json a path in a writable directory, or '-' for stdout.",
            ) from exc


# -- audit ----------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="Verify and export the tamper-evident audit log; cut participants' receipts.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

PublicKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        help="The audit public key to trust (64 hex); default: WORKDIR/audit.pub.",
    ),
]


def _trusted_key(workdir: Path, public_key: str | None) -> Any:
    from fedshield.storage.audit import AUDIT_PUB_FILE, parse_public_key, read_public_key

    if public_key is not None:
        return parse_public_key(public_key)
    return read_public_key(workdir / AUDIT_PUB_FILE)


def _read_receipt(path: Path) -> Any:
    from fedshield.audit import Receipt

    try:
        return Receipt.from_json(json.loads(path.read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read receipt {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not an audit receipt: {exc}") from exc


@audit_app.command("verify")
def audit_verify(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    public_key: PublicKeyOpt = None,
    receipt: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipt",
            help="A participant's receipt: its tree head must match the log (catches a "
            "truncated tail). Repeatable.",
        ),
    ] = None,
    all_signatures: Annotated[
        bool,
        typer.Option(
            "--all-signatures",
            help="Also check one by one the entry signatures a verified tree head already "
            "vouches for (same verdict; one Ed25519 verification per entry).",
        ),
    ] = False,
    json_path: JsonOpt = None,
) -> None:
    """Check the audit chain, every signature and tree head; name the first bad entry.

    An entry signature covered by a verified tree head (which signs the digest of every
    signature under it) is checked through that head; the others one by one.
    """
    from fedshield.audit import verify_receipt
    from fedshield.errors import AuditError
    from fedshield.storage.audit import AuditLog

    key = _trusted_key(workdir, public_key)
    heads = []
    for path in receipt or []:
        kept = _read_receipt(path)
        try:
            verify_receipt(kept, key)
        except AuditError as exc:
            raise AuditError(
                f"receipt {path} does not verify under the trusted audit key",
                check="receipt",
                hint="A forged or foreign receipt proves nothing about this log.",
            ) from exc
        heads.append(kept.head)
    db = _database(workdir)
    try:
        report = AuditLog(db).verify(key, external_heads=heads, all_signatures=all_signatures)
    finally:
        db.close()
    summary = {
        "audit_verified": True,
        "entries": report.entries,
        "signatures_checked_one_by_one": report.signatures_checked,
        "tree_heads": report.tree_heads,
        "receipts": report.external_heads,
        "root": report.root,
    }
    if json_path is not None:
        _emit_json(json_path, summary)
        return
    _out.print(
        f"OK: {report.entries} entries, {report.tree_heads} tree heads"
        + (f", {report.external_heads} receipts" if report.external_heads else "")
        + f" verified; root {report.root[:16]}..."
    )


@audit_app.command("export")
def audit_export(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    format: Annotated[str, typer.Option("--format", help="Only 'jsonl'.")] = "jsonl",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Export every audit entry with its hash and signature, one JSON object per line."""
    from fedshield.storage.audit import AuditLog

    if format != "jsonl":
        raise ConfigError(f"--format must be 'jsonl', got {format!r}")
    db = _database(workdir)
    try:
        log = AuditLog(db)
        if out is None:
            count = log.export_jsonl(sys.stdout)
        else:
            try:
                with out.open("w", encoding="utf-8") as handle:
                    count = log.export_jsonl(handle)
            except OSError as exc:
                raise ConfigError(
                    f"cannot write {out}: {exc.strerror or exc}",
                    hint="Pass --out a path in a writable directory.",
                ) from exc
            _err.print(f"exported {count} entries to {escape(str(out))}")
    finally:
        db.close()


@audit_app.command("receipt")
def audit_receipt(
    participant: Annotated[str, typer.Argument(help="The participant's name.")],
    round: Annotated[int, typer.Option("--round", min=1, help="A committed round.")],
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    out: Annotated[Path | None, typer.Option("--out", help="Write here, not stdout.")] = None,
) -> None:
    """Write PARTICIPANT's receipt for ROUND (its entry, inclusion proof, signed tree head)."""
    from fedshield.storage.audit import AuditLog

    db = _database(workdir)
    try:
        receipt = AuditLog(db).receipt(participant, round)
    finally:
        db.close()
    text = json.dumps(receipt.to_json(), indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        _err.print(f"receipt for {escape(participant)} round {round} written to {escape(str(out))}")


# -- compliance -----------------------------------------------------------------------------

compliance_app = typer.Typer(
    help="HIPAA and GDPR evidence from the audit log, the privacy ledger and the certificates.",
    no_args_is_help=True,
)
app.add_typer(compliance_app, name="compliance")

ComplianceConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="The federation TOML (default: WORKDIR/../federation.toml if present)."
    ),
]
KitsOpt = Annotated[
    Path | None,
    typer.Option(
        "--kits",
        help="The `fedshield provision --out` folder, the certificate store (default: "
        "WORKDIR/../kits if present).",
    ),
]
RotationOpt = Annotated[
    int,
    typer.Option(
        "--rotation-days",
        min=1,
        max=36500,
        help="Key rotation policy: a certificate older than this is a warning.",
    ),
]


def _compliance(
    workdir: Path,
    config: Path | None,
    kits: Path | None,
    public_key: str | None,
    rotation_days: int,
) -> tuple[Any, Any]:
    from fedshield.compliance import build_report, read_snapshot, resolve_workdir
    from fedshield.federation.coordinator import utcnow

    root = resolve_workdir(workdir)
    key = None if public_key is None else _trusted_key(root, public_key)
    snapshot = read_snapshot(
        root, now=utcnow(), config=config, kits=kits, public_key=key, rotation_days=rotation_days
    )
    return snapshot, build_report(snapshot)


def _print_controls(console: Console, report: Any) -> None:
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    view = Table(title=f"compliance controls: {escape(report.federation or report.workdir)}")
    view.add_column("control")
    view.add_column("status")
    view.add_column("evidence")
    for result in report.controls:
        bad = [e.id for e in result.evidence if e.status != "pass"] + list(result.missing)
        view.add_row(
            escape(result.control.key),
            f"[{colours[result.status]}]{result.status}[/]",
            escape(", ".join(bad) if bad else "all pass"),
        )
    console.print(view)
    for item in report.evidence:
        if item.status != "pass":
            console.print(
                f"[{colours[item.status]}]{item.status}[/] {escape(item.id)}: "
                f"{escape(item.summary)}",
                soft_wrap=True,
            )


@compliance_app.command("report")
def compliance_report(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")] = Path(
        "compliance-report.html"
    ),
    json_path: JsonOpt = None,
    config: ComplianceConfigOpt = None,
    kits: KitsOpt = None,
    public_key: PublicKeyOpt = None,
    rotation_days: RotationOpt = 365,
) -> None:
    """Build the compliance report: every control with pass, warn or fail and its evidence.

    Reads the audit log (verified), the privacy ledger, the model registry, the
    certificates and the config; never model weights or updates.
    """
    from fedshield.compliance import charts, render_html

    console = _console(json_path)
    snapshot, report = _compliance(workdir, config, kits, public_key, rotation_days)
    page = render_html(report, charts(snapshot))
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report {out}: {exc.strerror or exc}",
            hint="Pass --out a path in a writable directory.",
        ) from exc
    _print_controls(console, report)
    console.print(f"report written to {escape(str(out))}", soft_wrap=True)
    if json_path is not None:
        try:
            _emit_json(json_path, {**report.to_json(), "html": str(out)})
        except OSError as exc:
            raise ConfigError(
                f"cannot write the JSON report {json_path}: {exc.strerror or exc}",
                hint="Pass --json a path in a writable directory, or '-' for stdout.",
            ) from exc


@compliance_app.command("check")
def compliance_check(
    workdir: WorkdirOpt = Path("fedshield-coordinator"),
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help="A control that must not fail, e.g. 'HIPAA 164.312(b)' or 'GDPR Art. 25' "
            "(repeatable; default: every control).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat a warning as a failure too.")
    ] = False,
    json_path: JsonOpt = None,
    config: ComplianceConfigOpt = None,
    kits: KitsOpt = None,
    public_key: PublicKeyOpt = None,
    rotation_days: RotationOpt = 365,
) -> None:
    """Exit non-zero (12) when a required control fails: a continuous check for CI."""
    from fedshield.compliance import CONTROLS
    from fedshield.errors import ComplianceError

    known = {c.key: c for c in CONTROLS}
    wanted = list(known) if not require else require
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise ConfigError(
            f"unknown control {unknown[0]!r}",
            hint="Controls: " + "; ".join(known),
        )
    console = _console(json_path)
    _, report = _compliance(workdir, config, kits, public_key, rotation_days)
    bad_statuses = {"fail", "warn"} if strict else {"fail"}
    failing = [
        r.control.key
        for r in report.controls
        if r.control.key in wanted and r.status in bad_statuses
    ]
    _print_controls(console, report)
    if json_path is not None:
        _emit_json(
            json_path,
            {
                "ok": not failing,
                "required": wanted,
                "failing": failing,
                "controls": {r.control.key: r.status for r in report.controls},
            },
        )
    if failing:
        raise ComplianceError(
            f"{len(failing)} required controls fail: {', '.join(failing)}",
        )
    console.print(f"OK: {len(wanted)} required controls hold")


# -- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; translate errors into a message and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="fedshield", standalone_mode=False)
    except FedshieldError as exc:
        # Messages name config tables ("[privacy]"): print them, not parse them as markup.
        _err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
        if exc.hint:
            _err.print(f"[dim]hint:[/] {escape(exc.hint)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _err.print("interrupted")
        sys.exit(130)
    except _ClickException as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except Exception as exc:
        if os.environ.get("FEDSHIELD_DEBUG"):
            raise
        _err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", soft_wrap=True)
        _err.print(
            "[dim]hint:[/] this is a bug; rerun with FEDSHIELD_DEBUG=1 and report the traceback."
        )
        sys.exit(70)
    if code == 130:  # click turns Ctrl-C into a return code in non-standalone mode
        _err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
