"""Provision a federation from its config: certificates plus each site's participant.toml."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fedshield import _toml
from fedshield.config import FederationConfig
from fedshield.identity import KitSpec, ProvisionResult, provision

__all__ = ["provision_federation", "write_config"]


def write_config(config: FederationConfig, path: Path) -> None:
    """Write ``config`` as a federation TOML file that :func:`load_config` reads back."""
    document = config.model_dump(mode="json")
    path.write_text(_toml.dumps(document), encoding="utf-8")


def provision_federation(
    config: FederationConfig,
    *,
    out_dir: Path,
    base_dir: Path,
    coordinator_url: str | None = None,
    now: datetime,
    overwrite: bool = False,
) -> ProvisionResult:
    """Create the CA, the coordinator, admin and participant kits for ``config``.

    Each participant kit gets a ``participant.toml`` naming its federation, its task, its
    data (a CSV directory is made absolute against ``base_dir``) and where the
    coordinator is.
    """
    names = config.participants.resolved_names()
    url = coordinator_url or f"https://{config.coordinator.host}:{config.coordinator.port}"
    data = config.data.model_dump(mode="json")
    if data.get("csv_dir"):
        data["csv_dir"] = str((base_dir / data["csv_dir"]).resolve())
    if data.get("server_csv"):
        data["server_csv"] = str((base_dir / data["server_csv"]).resolve())
    extra: dict[str, dict[str, str]] = {}
    for index, name in enumerate(names):
        document = {
            "participant": {
                "name": name,
                "federation": config.federation.name,
                "coordinator": url,
                "task": config.task.name,
                "seed": config.federation.seed,
                "partition_index": index,
                "num_partitions": len(names),
                "long_poll_s": config.coordinator.long_poll_s,
            },
            "data": data,
            "transport": config.transport.model_dump(mode="json"),
        }
        extra[name] = {"participant.toml": _toml.dumps(document)}
    return provision(
        out_dir,
        federation=config.federation.name,
        participants=[KitSpec(name=n, organization=n, role="participant") for n in names],
        coordinator_hosts=config.coordinator.hosts,
        now=now,
        extra_files=extra,
        overwrite=overwrite,
    )
