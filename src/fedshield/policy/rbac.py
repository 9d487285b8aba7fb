"""Role-based access control: permissions, the built-in roles and the decision.

A *permission* is an action on a resource, written ``"resource:action"``
(``"models:read"``, ``"participants:revoke"``). A *role* is a set of permissions. A
:class:`Policy` maps role names to roles and decides, deny by default: a role that is
not in the policy, or a permission the role does not list, is denied.

The role of a caller is the ``OU`` of its certificate, which the federation CA signed;
nothing the caller sends can change it.

Built-in roles (fixed; a policy file adds roles but never redefines these):

==============  =====================================================================
admin           manage participants (enroll, revoke, quarantine, release), roll back
                models, read models, status, the audit log, compliance evidence, the
                privacy ledger and the config; never trains or submits updates
coordinator     health and status (the coordinator's own certificate)
participant     fetch the global model, long-poll for its tasks, submit its own update
                and evaluation, fetch its own audit receipts (the name comes from its
                certificate: never another's)
auditor         the audit log, compliance evidence, the privacy ledger and status;
                never model weights or updates
observer        health and status
==============  =====================================================================

*Admin operations* (``participants:enroll|revoke|quarantine|release``,
``models:rollback``, ``config:write``) belong to ``admin`` alone: a custom role that
lists one is refused when the policy is loaded. ``updates:read`` (someone else's update)
is granted to no role and cannot be.

This module is pure: no files, clocks or I/O (see :mod:`fedshield.policy.file`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fedshield.errors import ConfigError

__all__ = [
    "ACTIONS",
    "ADMIN_OPERATIONS",
    "BUILTIN_ROLES",
    "RESOURCES",
    "ROLE_NAME_RE",
    "Decision",
    "Permission",
    "Policy",
    "check_role_name",
]

RESOURCES: tuple[str, ...] = (
    "health",
    "status",
    "rounds",
    "models",
    "updates",
    "audit",
    "compliance",
    "participants",
    "privacy_ledger",
    "config",
    "receipts",
)
"""Every resource a permission can name."""

ACTIONS: tuple[str, ...] = (
    "read",
    "write",
    "enroll",
    "revoke",
    "quarantine",
    "release",
    "rollback",
)
"""Every action a permission can name."""

ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""What a role name looks like (it travels in a certificate ``OU``)."""


@dataclass(frozen=True, order=True)
class Permission:
    """An action on a resource, e.g. ``Permission("models", "read")``."""

    resource: str
    action: str

    def __post_init__(self) -> None:
        """Refuse an unknown resource or action."""
        if self.resource not in RESOURCES:
            raise ConfigError(
                f"unknown resource {self.resource!r} in permission {self}",
                hint=f"Resources: {', '.join(RESOURCES)}.",
            )
        if self.action not in ACTIONS:
            raise ConfigError(
                f"unknown action {self.action!r} in permission {self}",
                hint=f"Actions: {', '.join(ACTIONS)}.",
            )

    @classmethod
    def parse(cls, text: str) -> Permission:
        """Parse ``"resource:action"``.

        Raises
        ------
        ConfigError
            If the text is not ``resource:action`` with a known resource and action.
        """
        resource, sep, action = text.partition(":")
        if not sep or not resource or not action:
            raise ConfigError(
                f"a permission is written 'resource:action', got {text!r}",
                hint="For example 'status:read' or 'audit:read'.",
            )
        return cls(resource, action)

    def __str__(self) -> str:
        """Return ``resource:action``."""
        return f"{self.resource}:{self.action}"


def _perms(*texts: str) -> frozenset[Permission]:
    return frozenset(Permission.parse(t) for t in texts)


ADMIN_OPERATIONS: frozenset[Permission] = _perms(
    "participants:enroll",
    "participants:revoke",
    "participants:quarantine",
    "participants:release",
    "models:rollback",
    "config:write",
)
"""Permissions only the built-in ``admin`` role holds."""

_NEVER: frozenset[Permission] = _perms("updates:read")

BUILTIN_ROLES: Mapping[str, frozenset[Permission]] = MappingProxyType(
    {
        "admin": ADMIN_OPERATIONS
        | _perms(
            "health:read",
            "status:read",
            "models:read",
            "participants:read",
            "audit:read",
            "compliance:read",
            "privacy_ledger:read",
            "config:read",
        ),
        "coordinator": _perms("health:read", "status:read"),
        "participant": _perms(
            "health:read",
            "rounds:read",
            "rounds:write",
            "models:read",
            "updates:write",
            "receipts:read",
        ),
        "auditor": _perms(
            "health:read", "status:read", "audit:read", "compliance:read", "privacy_ledger:read"
        ),
        "observer": _perms("health:read", "status:read"),
    }
)
"""The built-in roles and their permissions."""


def check_role_name(name: str) -> str:
    """Return ``name`` if it is a well-formed role name.

    Raises
    ------
    ConfigError
        If it is not 1 to 32 characters of ``a-z 0-9 _ -`` starting with a letter.
    """
    if not ROLE_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"role name must be 1 to 32 characters of a-z 0-9 _ - starting with a "
            f"letter, got {name!r}",
            hint="Role names go into certificates (OU); use e.g. 'data-steward'.",
        )
    return name


@dataclass(frozen=True)
class Decision:
    """The outcome of one access check.

    Attributes
    ----------
    allowed
        Whether the action may go ahead.
    role
        The caller's role.
    permission
        What was asked for.
    reason
        Why, in words a caller may see (it names no internals).
    """

    allowed: bool
    role: str
    permission: Permission
    reason: str


class Policy:
    """Roles and their permissions; decides deny by default.

    Parameters
    ----------
    custom_roles
        Extra roles: name to permissions. Names must be well formed and not a built-in
        role; permissions may not include admin operations or ``updates:read``.
    source_sha3
        SHA3-256 (hex) of the policy file the roles were read from, if any (what the
        coordinator audits as the policy in force).

    Raises
    ------
    ConfigError
        If a custom role breaks one of those rules.
    """

    def __init__(
        self,
        custom_roles: Mapping[str, Iterable[Permission]] | None = None,
        *,
        source_sha3: str | None = None,
    ) -> None:
        self.source_sha3 = source_sha3
        roles = dict(BUILTIN_ROLES)
        for name, permissions in (custom_roles or {}).items():
            check_role_name(name)
            if name in BUILTIN_ROLES:
                raise ConfigError(
                    f"role {name!r} is built in and cannot be redefined",
                    hint="Give the custom role another name.",
                )
            granted = frozenset(permissions)
            forbidden = sorted(str(p) for p in granted & (ADMIN_OPERATIONS | _NEVER))
            if forbidden:
                raise ConfigError(
                    f"role {name!r} may not hold {', '.join(forbidden)}: admin operations "
                    "belong to the admin role only, and no role reads another's update",
                    hint="Remove them from the role, or use an admin kit for those tasks.",
                )
            roles[name] = granted
        self._roles: Mapping[str, frozenset[Permission]] = MappingProxyType(roles)

    @property
    def roles(self) -> Mapping[str, frozenset[Permission]]:
        """Every role (built-in first) and its permissions."""
        return self._roles

    def from_source(self, data: bytes) -> Policy:
        """Return the same roles, marked as read from a file holding ``data``."""
        custom = {name: self._roles[name] for name in self.custom_roles}
        return Policy(custom, source_sha3=hashlib.sha3_256(data).hexdigest())

    @property
    def custom_roles(self) -> tuple[str, ...]:
        """The names of the roles the policy file added."""
        return tuple(name for name in self._roles if name not in BUILTIN_ROLES)

    def decide(self, role: str, permission: Permission) -> Decision:
        """Decide whether ``role`` may do ``permission``; deny by default."""
        granted = self._roles.get(role)
        if granted is None:
            return Decision(False, role, permission, f"role {role!r} is not in the access policy")
        if permission not in granted:
            return Decision(
                False, role, permission, f"role {role!r} does not have permission {permission}"
            )
        return Decision(True, role, permission, "granted by the access policy")
