"""Access control: roles, permissions, the policy file and which decisions are audited.

Deny by default: a caller's role (its certificate's ``OU``) must hold the permission an
endpoint needs. See :mod:`fedshield.policy.rbac` for the built-in roles,
:mod:`fedshield.policy.file` for custom roles and :mod:`fedshield.policy.decisions` for
what reaches the audit log. docs/access.md has the full table.
"""

from __future__ import annotations

from fedshield.policy.decisions import ALWAYS_AUDITED_RESOURCES, DecisionLog
from fedshield.policy.file import POLICY_VERSION, load_policy, parse_policy, policy_path
from fedshield.policy.rbac import (
    ACTIONS,
    ADMIN_OPERATIONS,
    BUILTIN_ROLES,
    RESOURCES,
    Decision,
    Permission,
    Policy,
    check_role_name,
)

__all__ = [
    "ACTIONS",
    "ADMIN_OPERATIONS",
    "ALWAYS_AUDITED_RESOURCES",
    "BUILTIN_ROLES",
    "POLICY_VERSION",
    "RESOURCES",
    "Decision",
    "DecisionLog",
    "Permission",
    "Policy",
    "check_role_name",
    "load_policy",
    "parse_policy",
    "policy_path",
]
