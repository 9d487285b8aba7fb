"""The access policy file: custom roles in TOML.

Format (every key required; unknown keys are errors)::

    version = 1

    [roles.data-steward]
    description = "Reads the privacy ledger and the audit log for the DPO"
    permissions = ["health:read", "status:read", "audit:read", "privacy_ledger:read"]

Built-in roles (admin, coordinator, participant, auditor, observer) are always present
and cannot be redefined; see :mod:`fedshield.policy.rbac` for the permissions and the
rules a custom role must follow.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedshield.errors import ConfigError
from fedshield.policy.rbac import Permission, Policy, check_role_name

__all__ = ["POLICY_VERSION", "load_policy", "parse_policy", "policy_path"]

POLICY_VERSION = 1
_MAX_BYTES = 1 << 20
_HINT = "See docs/access.md for the policy file format."


def parse_policy(document: dict[str, Any], *, source: str = "policy") -> Policy:
    """Build a :class:`Policy` from a parsed policy document.

    Raises
    ------
    ConfigError
        If the document is malformed; the message names ``source`` and the key.
    """
    unknown = sorted(set(document) - {"version", "roles"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}", hint=_HINT)
    if document.get("version") != POLICY_VERSION:
        raise ConfigError(
            f"{source}: version must be {POLICY_VERSION}, got {document.get('version')!r}",
            hint=_HINT,
        )
    roles = document.get("roles", {})
    if not isinstance(roles, dict):
        raise ConfigError(f"{source}: [roles] must be a table of roles", hint=_HINT)
    custom: dict[str, list[Permission]] = {}
    for name, table in roles.items():
        where = f"{source}: [roles.{name}]"
        try:
            check_role_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table", hint=_HINT)
        extra = sorted(set(table) - {"description", "permissions"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}", hint=_HINT)
        description = table.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string", hint=_HINT)
        permissions = table.get("permissions")
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise ConfigError(
                f"{where}: permissions must be a list of 'resource:action' strings", hint=_HINT
            )
        try:
            custom[name] = [Permission.parse(p) for p in permissions]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
    try:
        return Policy(custom)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc


def load_policy(path: Path | None) -> Policy:
    """Read a policy file; ``None`` gives the built-in roles only.

    Raises
    ------
    ConfigError
        If the file cannot be read, is not TOML, or is not a valid policy.
    """
    if path is None:
        return Policy()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read access policy {path}: {exc.strerror}",
            hint="Fix access.policy in the federation file (relative paths are relative "
            "to that file).",
        ) from exc
    if len(data) > _MAX_BYTES:
        raise ConfigError(f"access policy {path} is over {_MAX_BYTES} bytes", hint=_HINT)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"access policy {path} is not valid TOML: {exc}", hint=_HINT) from exc
    # Hashed from the bytes parsed here: the audit names exactly the policy in force.
    return parse_policy(document, source=str(path)).from_source(data)


def policy_path(access_policy: str | None, base_dir: Path) -> Path | None:
    """Resolve ``[access] policy`` against the directory of the federation file."""
    if access_policy is None:
        return None
    return (base_dir / access_policy).resolve()
