"""Provision a federation from its config: certificates plus each site's participant.toml."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fedshield import _toml
from fedshield.config import FederationConfig
from fedshield.identity import KitSpec, ProvisionResult, provision
from fedshield.policy import load_policy, policy_path

__all__ = ["absolute_data_paths", "provision_federation", "write_config"]


def absolute_data_paths(config: FederationConfig, base_dir: Path) -> FederationConfig:
    """Return ``config`` with its CSV paths resolved against ``base_dir``.

    Relative paths in a federation file are relative to that file; a copy written
    elsewhere (the demo's workdir, a participant kit) must carry absolute ones.
    """
    data = config.data
    update: dict[str, str] = {}
    if data.csv_dir:
        update["csv_dir"] = str((base_dir / data.csv_dir).resolve())
    if data.server_csv:
        update["server_csv"] = str((base_dir / data.server_csv).resolve())
    if data.masking_policy:
        update["masking_policy"] = str((base_dir / data.masking_policy).resolve())
    access = config.access
    if access.policy is not None:
        # The access policy file is relative to the federation file too.
        policy = str((base_dir / access.policy).resolve())
        config = config.model_copy(update={"access": access.model_copy(update={"policy": policy})})
    if not update:
        return config
    return config.model_copy(update={"data": data.model_copy(update=update)})


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
    coordinator is, and the federation's ``[privacy]`` settings as the site's own
    starting point (``planned_rounds`` filled in from ``rounds.count``): the site may
    edit them, and its file, not the coordinator, decides.
    """
    names = config.participants.resolved_names()
    url = coordinator_url or f"https://{config.coordinator.host}:{config.coordinator.port}"
    data = absolute_data_paths(config, base_dir).data.model_dump(mode="json")
    privacy = config.privacy.model_dump(mode="json")
    if privacy["planned_rounds"] is None:
        privacy["planned_rounds"] = config.rounds.count
    floor = None
    if config.participant_dp.noise in ("local", "distributed"):
        from fedshield.federation.coordinator import participant_dp_policy

        policy = participant_dp_policy(config)
        # The site adds at least the noise the federation was planned with, whatever a
        # (compromised) coordinator asks later; the site may change it.
        floor = policy.noise_multiplier if policy is not None else None
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
                "batch_size": config.task.batch_size,
                # A site provisioned for secure aggregation refuses to send an update
                # in the clear, whatever a (compromised) coordinator asks later.
                "require_secure_aggregation": config.secure_aggregation.enabled,
                # ... nor take part in a secure sum over fewer sites than this.
                "secure_min_participants": max(
                    2, min(len(names), config.secure_aggregation.min_group_size or 3)
                ),
                **({"min_participant_noise": floor} if floor is not None else {}),
            },
            "data": data,
            "transport": config.transport.model_dump(mode="json"),
            # The site's own privacy budget; it may change it (the site decides).
            "privacy": privacy,
        }
        extra[name] = {"participant.toml": _toml.dumps(document)}
    # Custom roles must be in the access policy before a kit may carry one.
    access = load_policy(policy_path(config.access.policy, base_dir))
    staff = [
        KitSpec(name=k.name, organization=k.organization or k.name, role=k.role)
        for k in config.access.kits
    ]
    return provision(
        out_dir,
        federation=config.federation.name,
        participants=[
            *(KitSpec(name=n, organization=n, role="participant") for n in names),
            *staff,
        ],
        roles=tuple(access.roles),
        coordinator_hosts=config.coordinator.hosts,
        now=now,
        extra_files=extra,
        overwrite=overwrite,
    )
