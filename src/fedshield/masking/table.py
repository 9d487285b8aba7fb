"""Apply a masking policy to a table of text cells: scan, refuse or mask, then choose features.

:func:`mask_table` is the whole of masking for one table, and it is pure: the key and
the random source are parameters.

1. The policy is checked against the header: a column it names that the table lacks,
   or the label column, is an error (a typo must not leave a column unmasked).
2. The PII scanner (:mod:`fedshield.masking.scanner`) looks at every column but the
   label. A flagged column must be masked by the policy (``drop``, ``pseudonymize``,
   ``generalize``, ``perturb``, or dropped by ``unlisted = "drop"``) or listed in
   ``allow_unmasked`` with a reason. Otherwise :class:`UnmaskedPIIError` names every
   such column, why it was flagged and the TOML that fixes it: the site does not train.
3. Each column is transformed; dropped columns disappear.
4. The feature columns are those whose rule says ``feature`` (header order); the label
   column is carried separately. Pseudonyms stay in the masked table (to link the
   site's records) and never become features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedshield.errors import ConfigError
from fedshield.masking.policy import ColumnRule, MaskingPolicy
from fedshield.masking.scanner import Finding, scan_table
from fedshield.masking.transforms import (
    bucket_numbers,
    perturb,
    pseudonymize,
    truncate_dates,
    truncate_zips,
)
from fedshield.secagg.randomness import SecureRandom

__all__ = ["MaskedTable", "UnmaskedPIIError", "check_coverage", "mask_table"]

_EMPTY = MaskingPolicy(columns={})


class UnmaskedPIIError(ConfigError):
    """A column the PII scanner flags is neither masked nor allowed by the policy."""


@dataclass(frozen=True)
class MaskedTable:
    """A table after masking.

    Attributes
    ----------
    header : tuple of str
        The columns that remain (dropped ones are gone), in the input's order.
    columns : dict of str to list of str
        The masked cells by column.
    features : tuple of str
        The columns that enter the model's feature matrix, in header order.
    label_column : str
        The label column (unchanged, not a feature).
    actions : dict of str to str
        What happened to every input column (``"drop"``, ``"pseudonymize"``, ...).
    findings : tuple of Finding
        What the scanner flagged (each one masked or allowed).
    """

    header: tuple[str, ...]
    columns: Mapping[str, list[str]]
    features: tuple[str, ...]
    label_column: str
    actions: Mapping[str, str]
    findings: tuple[Finding, ...]


def _fix_hint(findings: Sequence[Finding], policy_path: str | None) -> str:
    where = f"in {policy_path}" if policy_path else "in the site's masking policy"
    lines = [f"Mask each column {where}, e.g."]
    for f in findings:
        lines.append(f'  [columns.{_toml_key(f.column)}]\n  action = "drop"')
    lines.append(
        "or, if keeping it unmasked is right, say why:\n  [allow_unmasked]\n  "
        + "\n  ".join(f'{_toml_key(f.column)} = "<reason>"' for f in findings)
    )
    lines.append("See docs/masking.md.")
    return "\n".join(lines)


def _toml_key(column: str) -> str:
    if column and all(c.isascii() and (c.isalnum() or c in "_-") for c in column):
        return column
    escaped = column.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def check_coverage(
    findings: Sequence[Finding],
    policy: MaskingPolicy | None,
    *,
    policy_path: str | None = None,
) -> None:
    """Raise unless every flagged column is masked or explicitly allowed unmasked.

    Raises
    ------
    UnmaskedPIIError
        Naming every uncovered column, the scanner's reason and the fix.
    """
    rules = policy or _EMPTY
    bare = [
        f
        for f in findings
        if not rules.rule_for(f.column).masks and f.column not in rules.allow_unmasked
    ]
    if not bare:
        return
    listed = "; ".join(f"{f.column!r} looks like {f.kind} ({f.reason})" for f in bare)
    missing = "" if policy is not None else " and there is no masking policy"
    raise UnmaskedPIIError(
        f"refusing to train: {len(bare)} column(s) look identifying but are not masked"
        f"{missing}: {listed}",
        hint=_fix_hint(bare, policy_path),
    )


def _check_names(header: Sequence[str], policy: MaskingPolicy, label_column: str) -> None:
    present = set(header)
    unknown = sorted(policy.named() - present)
    if unknown:
        raise ConfigError(
            f"masking policy names column(s) {unknown} that the data does not have; "
            f"its columns are {list(header)}",
            hint="Fix the column name in the policy (names are case-sensitive), or remove "
            "the rule.",
        )
    if label_column in policy.named():
        raise ConfigError(
            f"masking policy names the label column {label_column!r}",
            hint="The label is never masked or allowed; remove it from the policy.",
        )


def _apply(
    rule: ColumnRule, cells: list[str], *, key: bytes | None, rng: SecureRandom | None
) -> list[str]:
    params = rule.params
    if rule.action == "keep":
        return cells
    if rule.action == "pseudonymize":
        if key is None:
            raise ConfigError(f"column {rule.column!r} is pseudonymized but no key was given")
        return pseudonymize(
            cells, key=key, length=int(params["length"]), namespace=str(params["namespace"])
        )
    if rule.action == "perturb":
        if rng is None:
            raise ConfigError(f"column {rule.column!r} is perturbed but no random source was given")
        numbers = _numbers(rule.column, cells)
        noisy = perturb(
            numbers, noise=params["noise"], bound=params["bound"], scale=params["scale"], rng=rng
        )
        return [repr(float(v)) for v in noisy]
    kind = params["kind"]
    if kind == "number":
        buckets = bucket_numbers(
            _numbers(rule.column, cells),
            edges=params["edges"],
            width=params["width"],
            origin=params["origin"],
        )
        return [repr(float(v)) for v in buckets]
    if kind == "date":
        return truncate_dates(cells, to=params["to"])
    return truncate_zips(cells, digits=int(params["digits"]))


def _numbers(column: str, cells: list[str]) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float64)
    for row, cell in enumerate(cells, start=1):
        try:
            out[row - 1] = float(cell)
        except ValueError:
            raise ConfigError(
                f"column {column!r}, row {row}: not a number, so it cannot be perturbed or "
                "bucketed",
                hint="Use another action for this column (drop, pseudonymize, generalize "
                "date/zip).",
            ) from None
    return out


def mask_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    policy: MaskingPolicy | None,
    label_column: str,
    key: bytes | None = None,
    rng: SecureRandom | None = None,
    policy_path: str | None = None,
) -> MaskedTable:
    """Scan ``rows``, refuse uncovered PII, and return the masked table.

    Parameters
    ----------
    header : sequence of str
        Column names (unique).
    rows : sequence of sequences of str
        The cells, each row as long as the header.
    policy : MaskingPolicy or None
        The site's policy; None masks nothing (and refuses any flagged column).
    label_column : str
        The label column: never scanned, masked or a feature.
    key : bytes or None
        The site's pseudonym key (needed if the policy pseudonymizes).
    rng : SecureRandom or None
        The random source (needed if the policy perturbs).
    policy_path : str or None
        Where the policy is (or would be), for messages only.

    Raises
    ------
    UnmaskedPIIError
        If a flagged column is neither masked nor allowed.
    ConfigError
        If the policy names a column the table lacks or the label, or a cell cannot be
        masked as the policy says (the message names the column and row, not the value).
    """
    if len(set(header)) != len(header):
        raise ConfigError(f"the data has duplicate column names: {list(header)}")
    if label_column not in header:
        raise ConfigError(f"the data has no label column {label_column!r}")
    rules = policy or _EMPTY
    _check_names(header, rules, label_column)
    findings = scan_table(header, rows, skip=(label_column,))
    check_coverage(findings, policy, policy_path=policy_path)
    columns: dict[str, list[str]] = {}
    actions: dict[str, str] = {}
    features: list[str] = []
    kept: list[str] = []
    for index, column in enumerate(header):
        cells = [row[index] for row in rows]
        if column == label_column:
            columns[column] = cells
            kept.append(column)
            continue
        rule = rules.rule_for(column)
        actions[column] = rule.action
        if rule.action == "drop":
            continue
        try:
            columns[column] = _apply(rule, cells, key=key, rng=rng)
        except ConfigError as exc:
            if exc.message.startswith("column "):
                raise
            raise ConfigError(f"column {column!r}, {exc.message}", hint=exc.hint) from exc
        kept.append(column)
        if rule.feature:
            features.append(column)
    return MaskedTable(
        header=tuple(kept),
        columns=columns,
        features=tuple(features),
        label_column=label_column,
        actions=actions,
        findings=findings,
    )
