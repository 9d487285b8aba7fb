"""A site's masking policy: what happens to each column of its table before training.

A policy is a TOML document the site writes (it never comes from the coordinator)::

    version = 1
    unlisted = "keep"            # or "drop": columns the policy does not name

    [columns.patient_name]
    action = "drop"

    [columns.mrn]
    action = "pseudonymize"      # keyed HMAC-SHA256, site-local key; never a feature
    length = 32                  # hex characters kept (16-64)

    [columns.date_of_birth]
    action = "generalize"
    kind = "date"
    to = "year"                  # or "month"

    [columns.zip]
    action = "generalize"
    kind = "zip"
    digits = 3

    [columns.age]
    action = "generalize"
    kind = "number"
    edges = [0, 18, 40, 65, 90]  # or width = 10 (and origin = 0)

    [columns.tumor_size]
    action = "perturb"
    noise = "laplace"            # or "uniform"
    scale = 0.5                  # Laplace only
    bound = 2.0                  # |noise| <= bound, always

    [allow_unmasked]
    clinic_phone = "the clinic's switchboard number, not a patient's"

Every column rule may say ``feature = true|false``: whether the masked column goes into
the model's feature matrix. The default is true for ``keep``, ``perturb``, numbers and
years; false for pseudonyms, months and zip prefixes (they are not numbers). A
pseudonym can never be a feature: it exists to link records within the site.

Validation is strict (:func:`parse_policy`): an unknown key, action, kind or a bad
parameter is a :class:`~fedshield.errors.ConfigError` naming the column and the
constraint. Checks against a table (a column the policy names that the table lacks)
are in :mod:`fedshield.masking.table`.

:func:`policy_sha3` hashes the policy's canonical form (every parameter explicit,
sorted keys, no comments): two files that mean the same thing hash the same. This hash,
never the data or the key, is what the participant reports and the audit log keeps.
This module is pure: no files, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedshield.errors import ConfigError

__all__ = [
    "ACTIONS",
    "ColumnRule",
    "MaskingPolicy",
    "canonical_json",
    "parse_policy",
    "policy_sha3",
]

Action = Literal["drop", "keep", "pseudonymize", "generalize", "perturb"]
ACTIONS: tuple[Action, ...] = ("drop", "keep", "pseudonymize", "generalize", "perturb")
"""Every action a column rule may name."""

MASKING: frozenset[str] = frozenset({"drop", "pseudonymize", "generalize", "perturb"})
"""The actions that mask a column (``keep`` does not)."""

_FORMAT = "fedshield.masking/v1"
_HINT = "See docs/masking.md for the policy format."
_SHA3 = re.compile(r"^[0-9a-f]{64}$")

# Allowed parameters per action (and per generalize kind), with their defaults.
_PARAMS: dict[str, dict[str, Any]] = {
    "drop": {},
    "keep": {"feature": True},
    "pseudonymize": {"feature": False, "length": 32, "namespace": "default"},
    "perturb": {"feature": True, "noise": None, "bound": None, "scale": None},
    "generalize:number": {"feature": True, "edges": None, "width": None, "origin": 0.0},
    "generalize:date": {"feature": None, "to": None},
    "generalize:zip": {"feature": False, "digits": None},
}
_KINDS = ("number", "date", "zip")


@dataclass(frozen=True)
class ColumnRule:
    """What happens to one column.

    Attributes
    ----------
    column : str
        The column's name in the table header.
    action : {"drop", "keep", "pseudonymize", "generalize", "perturb"}
        The action.
    params : dict
        Every parameter of the action, defaults filled in (see the module docstring);
        for ``generalize`` it holds ``kind``.
    feature : bool
        Whether the masked column enters the model's feature matrix (always False for
        ``drop`` and ``pseudonymize``).
    """

    column: str
    action: Action
    params: Mapping[str, Any] = field(default_factory=dict)
    feature: bool = False

    @property
    def masks(self) -> bool:
        """True when the rule changes the values (anything but ``keep``)."""
        return self.action in MASKING


@dataclass(frozen=True)
class MaskingPolicy:
    """A validated masking policy (build it with :func:`parse_policy`).

    Attributes
    ----------
    columns : dict of str to ColumnRule
        The rules, by column name.
    unlisted : {"keep", "drop"}
        What happens to a column the policy does not name.
    allow_unmasked : dict of str to str
        Columns the PII scanner may flag that the site keeps unmasked, with its reason.
    """

    columns: Mapping[str, ColumnRule]
    unlisted: Literal["keep", "drop"] = "keep"
    allow_unmasked: Mapping[str, str] = field(default_factory=dict)

    def rule_for(self, column: str) -> ColumnRule:
        """Return the rule of ``column``; an unnamed column gets the ``unlisted`` action."""
        rule = self.columns.get(column)
        if rule is not None:
            return rule
        if self.unlisted == "drop":
            return ColumnRule(column=column, action="drop")
        return ColumnRule(column=column, action="keep", params={"feature": True}, feature=True)

    def named(self) -> frozenset[str]:
        """Return every column the policy names (rules and ``allow_unmasked``)."""
        return frozenset(self.columns) | frozenset(self.allow_unmasked)


def _fail(where: str, message: str, hint: str = _HINT) -> ConfigError:
    return ConfigError(f"masking policy {where}: {message}", hint=hint)


def _finite(value: object, *, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"{key} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(where, f"{key} must be finite, got {value!r}")
    return number


def _positive(value: object, *, where: str, key: str) -> float:
    number = _finite(value, where=where, key=key)
    if number <= 0:
        raise _fail(where, f"{key} must be > 0, got {value!r}")
    return number


def _integer(value: object, *, where: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _parse_rule(column: str, table: object) -> ColumnRule:
    where = f"column {column!r}"
    if not isinstance(table, Mapping):
        raise _fail(
            where,
            f"expected a table, got {type(table).__name__}",
            hint=f'Write [columns.{column}] with action = "drop" (or another action).',
        )
    action = table.get("action")
    if action not in ACTIONS:
        raise _fail(
            where,
            f"action must be one of {list(ACTIONS)}, got {action!r}",
            hint='Every [columns.NAME] table needs action = "drop", "keep", "pseudonymize", '
            '"generalize" or "perturb".',
        )
    key = str(action)
    given = {k: v for k, v in table.items() if k != "action"}
    if action == "generalize":
        kind = given.pop("kind", None)
        if kind not in _KINDS:
            raise _fail(
                where,
                f"generalize needs kind = one of {list(_KINDS)}, got {kind!r}",
                hint='kind = "number" (edges or width), "date" (to = "year"|"month") or '
                '"zip" (digits = N).',
            )
        key = f"generalize:{kind}"
    allowed = _PARAMS[key]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise _fail(
            where,
            f"unknown parameter(s) {unknown} for {key.replace(':', ' ')}; "
            f"allowed: {sorted(allowed) or 'none'}",
        )
    params: dict[str, Any] = {**allowed, **given}
    if key.startswith("generalize:"):
        params["kind"] = key.split(":", 1)[1]
    check = _CHECKS.get(key)
    if check is not None:
        check(params, where)
    feature = params.pop("feature", False)
    if not isinstance(feature, bool):
        raise _fail(where, f"feature must be true or false, got {feature!r}")
    if feature and action == "pseudonymize":
        raise _fail(
            where,
            "a pseudonymized column cannot be a model feature (pseudonyms are strings that "
            "link records within this site)",
            hint="Remove feature = true; to learn from the column, generalize it instead.",
        )
    if feature and key == "generalize:zip":
        raise _fail(
            where,
            "a zip prefix cannot be a model feature (it is a category, not a number)",
            hint="Remove feature = true.",
        )
    return ColumnRule(column=column, action=action, params=params, feature=feature)


def _check_pseudonymize(params: dict[str, Any], where: str) -> None:
    params["length"] = _integer(params["length"], where=where, key="length", low=16, high=64)
    namespace = params["namespace"]
    if not isinstance(namespace, str) or not 1 <= len(namespace) <= 64:
        raise _fail(where, f"namespace must be a string of 1-64 characters, got {namespace!r}")


def _check_perturb(params: dict[str, Any], where: str) -> None:
    noise = params["noise"]
    if noise not in ("uniform", "laplace"):
        raise _fail(
            where,
            f'perturb needs noise = "uniform" or "laplace", got {noise!r}',
            hint='Add noise = "uniform" and bound = B (the largest change to a value).',
        )
    if params["bound"] is None:
        raise _fail(where, "perturb needs bound (> 0): no value moves further than that")
    params["bound"] = _positive(params["bound"], where=where, key="bound")
    if noise == "laplace":
        if params["scale"] is None:
            raise _fail(where, "laplace noise needs scale (> 0), the Laplace b parameter")
        params["scale"] = _positive(params["scale"], where=where, key="scale")
    elif params["scale"] is not None:
        raise _fail(where, 'scale is only used with noise = "laplace"; uniform uses bound')


def _check_number(params: dict[str, Any], where: str) -> None:
    edges, width = params["edges"], params["width"]
    if (edges is None) == (width is None):
        raise _fail(
            where,
            "generalize number needs exactly one of edges (a list) or width (> 0)",
            hint="edges = [0, 18, 40, 65, 90] buckets into [0,18) [18,40) ... [90,+inf); "
            "width = 10 buckets into tens.",
        )
    if edges is not None:
        if not isinstance(edges, list) or len(edges) < 2:
            raise _fail(where, f"edges must be a list of at least 2 numbers, got {edges!r}")
        values = [_finite(e, where=where, key="edges") for e in edges]
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise _fail(where, f"edges must be strictly increasing, got {edges!r}")
        params["edges"] = values
        if params["origin"] != 0.0:
            raise _fail(where, "origin is only used with width")
    else:
        params["width"] = _positive(width, where=where, key="width")
    params["origin"] = _finite(params["origin"], where=where, key="origin")


def _check_date(params: dict[str, Any], where: str) -> None:
    to = params["to"]
    if to not in ("year", "month"):
        raise _fail(where, f'generalize date needs to = "year" or "month", got {to!r}')
    if params["feature"] is None:
        params["feature"] = to == "year"
    if params["feature"] is True and to == "month":
        raise _fail(
            where,
            'a month ("YYYY-MM") is not a number and cannot be a model feature',
            hint='Use to = "year" for a numeric feature, or feature = false.',
        )


def _check_zip(params: dict[str, Any], where: str) -> None:
    params["digits"] = _integer(params["digits"], where=where, key="digits", low=1, high=9)


_CHECKS = {
    "pseudonymize": _check_pseudonymize,
    "perturb": _check_perturb,
    "generalize:number": _check_number,
    "generalize:date": _check_date,
    "generalize:zip": _check_zip,
}


def parse_policy(document: Mapping[str, Any]) -> MaskingPolicy:
    """Validate a parsed TOML document and return the policy.

    Parameters
    ----------
    document : mapping
        The TOML document (``tomllib.loads`` output).

    Returns
    -------
    MaskingPolicy
        The validated policy, every parameter explicit.

    Raises
    ------
    ConfigError
        On an unknown key, action or kind, a missing or bad parameter, an
        ``allow_unmasked`` entry without a reason, or a column both masked and allowed
        unmasked. The message names the column and the constraint.
    """
    unknown = sorted(set(document) - {"version", "unlisted", "columns", "allow_unmasked"})
    if unknown:
        raise _fail(
            "",
            f"unknown top-level key(s) {unknown}",
            hint="A policy has version, unlisted, [columns.NAME] tables and [allow_unmasked].",
        )
    version = document.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise _fail("", f"version must be 1, got {version!r}")
    unlisted = document.get("unlisted", "keep")
    if unlisted not in ("keep", "drop"):
        raise _fail("", f'unlisted must be "keep" or "drop", got {unlisted!r}')
    columns = document.get("columns", {})
    if not isinstance(columns, Mapping):
        raise _fail("", "columns must be a table of [columns.NAME] tables")
    rules = {str(name): _parse_rule(str(name), table) for name, table in columns.items()}
    allow = document.get("allow_unmasked", {})
    if not isinstance(allow, Mapping):
        raise _fail(
            "",
            'allow_unmasked must be a table of column = "reason"',
            hint='[allow_unmasked]\nclinic_phone = "why keeping it unmasked is acceptable"',
        )
    allowed: dict[str, str] = {}
    for name, reason in allow.items():
        where = f"allow_unmasked.{name}"
        if not isinstance(reason, str) or len(reason.strip()) < 3:
            raise _fail(
                where,
                "needs a reason (a string) saying why the column may stay unmasked",
                hint=f'{name} = "the reason a reviewer will read"',
            )
        rule = rules.get(str(name))
        if rule is not None and rule.masks:
            raise _fail(
                where,
                f"column {name!r} is masked ({rule.action}) and allowed unmasked at once",
                hint="Remove one of the two.",
            )
        allowed[str(name)] = reason.strip()
    return MaskingPolicy(columns=rules, unlisted=unlisted, allow_unmasked=allowed)


def canonical_json(policy: MaskingPolicy) -> str:
    """Return the canonical form of ``policy``: sorted-key JSON, every parameter explicit.

    Comments, key order and defaults left implicit in the file do not change it.
    """
    document = {
        "format": _FORMAT,
        "unlisted": policy.unlisted,
        "columns": {
            name: {"action": rule.action, "feature": rule.feature, **dict(rule.params)}
            for name, rule in policy.columns.items()
        },
        "allow_unmasked": dict(policy.allow_unmasked),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def policy_sha3(policy: MaskingPolicy) -> str:
    """Return the SHA3-256 of :func:`canonical_json` (UTF-8), 64 lowercase hex characters."""
    digest = hashlib.sha3_256(canonical_json(policy).encode("utf-8")).hexdigest()
    assert _SHA3.match(digest)
    return digest
