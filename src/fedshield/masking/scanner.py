"""A PII scanner for tabular data: flag columns that look identifying, by name and content.

The scanner is a guard, not a classifier to trust blindly: it makes the site *decide*
about every column that looks identifying (mask it, or allow it with a reason) before
training starts. It errs on the side of flagging.

By name (the header, split into lower-case words; ``patientName``, ``date_of_birth`` and
``E-Mail`` all count):

* person names: ``name``, ``surname``, ``forename``, ``firstname``, ``lastname``, ...
* contact: ``email``/``mail``, ``phone``/``telephone``/``tel``/``mobile``/``fax``
* national and record ids: ``ssn``, ``mrn``, ``nhs``, ``passport``, ``nino``,
  "social security", "national id"
* dates of birth: ``dob``, ``birth``, ``birthday``, ``born``
* location: ``zip``, ``zipcode``, ``postcode``, ``postal``, ``address``, ``street``

By content (only cells that are not plain numbers, in the first ``sample`` rows):

* an e-mail address or a US social security number (``123-45-6789``) or a UK
  national insurance number in **any** cell flags the column;
* phone numbers (7-15 digits with ``+``, spaces, dashes, dots or parentheses), calendar
  dates (``YYYY-MM-DD``, ``DD/MM/YYYY``; HIPAA's Safe Harbor treats every date element
  but the year as identifying) or person names (two to four capitalised words, mostly
  distinct) in at least half of the non-empty cells flag it.

Findings never quote a cell: the reason says what was matched and how often.
This module is pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Finding", "scan_column", "scan_table"]

_NAME_WORDS: dict[str, frozenset[str]] = {
    "person name": frozenset(
        {
            "name",
            "names",
            "surname",
            "forename",
            "firstname",
            "lastname",
            "fullname",
            "givenname",
            "familyname",
            "maidenname",
            "middlename",
        }
    ),
    "email": frozenset({"email", "mail", "emailaddress"}),
    "phone": frozenset({"phone", "telephone", "tel", "mobile", "cellphone", "fax", "phonenumber"}),
    "national or record id": frozenset(
        {"ssn", "mrn", "nhs", "passport", "nino", "nir", "insee", "medicare", "medicaid"}
    ),
    "date of birth": frozenset({"dob", "birth", "birthdate", "birthday", "born", "dateofbirth"}),
    "zip code": frozenset({"zip", "zipcode", "postcode", "postal", "postalcode"}),
    "address": frozenset({"address", "street", "addr", "streetaddress"}),
}
_NAME_PAIRS: dict[tuple[str, str], str] = {
    ("social", "security"): "national or record id",
    ("national", "id"): "national or record id",
    ("record", "number"): "national or record id",
    ("patient", "id"): "national or record id",
}
# Substrings of the squashed header that identify a column even without separators.
_SQUASHED: dict[str, str] = {
    "email": "email",
    "phone": "phone",
    "surname": "person name",
    "firstname": "person name",
    "lastname": "person name",
    "fullname": "person name",
    "patientname": "person name",
    "dateofbirth": "date of birth",
    "birthdate": "date of birth",
    "zipcode": "zip code",
    "postcode": "zip code",
    "address": "address",
    "passport": "national or record id",
    "socialsecurity": "national or record id",
}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_DATE = re.compile(
    r"^(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{4}|\d{4}/\d{1,2}/\d{1,2})(?:[T ].*)?$"
)
_PHONE = re.compile(r"^\+?[\d\s().-]{7,24}$")
_PERSON = re.compile(r"^[A-Z][a-z'’-]+(?: [A-Z][a-z'’.-]*){1,3}$|^[A-Z][a-z'’-]+, [A-Z][a-z'’-]+$")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

_ANY = 1  # one match in any cell flags the column
_HALF = 0.5


@dataclass(frozen=True)
class Finding:
    """A column the scanner flags.

    Attributes
    ----------
    column : str
        The column's name.
    kind : str
        What it looks like: ``"person name"``, ``"email"``, ``"phone"``, ``"national or
        record id"``, ``"date of birth"``, ``"date"``, ``"zip code"`` or ``"address"``.
    reason : str
        Why, without quoting any cell (``"column name contains 'email'"``,
        ``"12 of 40 sampled cells contain an e-mail address"``).
    """

    column: str
    kind: str
    reason: str


def _words(column: str) -> list[str]:
    spaced = _CAMEL.sub(" ", column).lower()
    return [w for w in _WORD_SPLIT.split(spaced) if w]


def _by_name(column: str) -> Finding | None:
    words = _words(column)
    for word in words:
        for kind, vocabulary in _NAME_WORDS.items():
            if word in vocabulary:
                return Finding(column, kind, f"column name contains the word {word!r}")
    for (first, second), kind in _NAME_PAIRS.items():
        if any(a == first and b == second for a, b in zip(words, words[1:], strict=False)):
            return Finding(column, kind, f"column name contains {first!r} {second!r}")
    squashed = "".join(words)
    for part, kind in _SQUASHED.items():
        if part in squashed:
            return Finding(column, kind, f"column name contains {part!r}")
    return None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_phone(cell: str) -> bool:
    if not _PHONE.match(cell) or _DATE.match(cell):
        return False
    digits = sum(c.isdigit() for c in cell)
    separated = cell.startswith("+") or any(c in cell for c in " ()-.")
    return 7 <= digits <= 15 and separated


def scan_column(column: str, cells: Sequence[str]) -> Finding | None:
    """Return why ``column`` looks identifying, or None.

    Parameters
    ----------
    column : str
        The header name.
    cells : sequence of str
        The column's cells (a sample is enough).

    Returns
    -------
    Finding or None
        The first reason found (name first, then content).
    """
    named = _by_name(column)
    if named is not None:
        return named
    text = [c.strip() for c in cells if c.strip() and not _is_number(c.strip())]
    if not text:
        return None
    seen = len(text)
    for kind, pattern, what in (
        ("email", _EMAIL, "an e-mail address"),
        ("national or record id", _SSN, "a US social security number pattern"),
        ("national or record id", _NINO, "a UK national insurance number pattern"),
    ):
        hits = sum(1 for c in text if pattern.search(c))
        if hits >= _ANY:
            return Finding(column, kind, f"{hits} of {seen} text cells contain {what}")
    checks = (
        ("date", lambda c: bool(_DATE.match(c)), "look like calendar dates"),
        ("phone", _is_phone, "look like phone numbers"),
    )
    for kind, test, what in checks:
        hits = sum(1 for c in text if test(c))
        if hits >= _HALF * seen:
            return Finding(column, kind, f"{hits} of {seen} text cells {what}")
    names = [c for c in text if _PERSON.match(c)]
    distinct = len(set(names)) >= _HALF * len(names) if len(names) >= 10 else True
    if names and len(names) >= _HALF * seen and distinct:
        return Finding(
            column,
            "person name",
            f"{len(names)} of {seen} text cells look like person names "
            "(capitalised words, mostly distinct)",
        )
    return None


def scan_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    skip: Sequence[str] = (),
    sample: int = 1000,
) -> tuple[Finding, ...]:
    """Scan every column of a table (but ``skip``); return the findings in header order.

    Parameters
    ----------
    header : sequence of str
        Column names.
    rows : sequence of sequences of str
        The cells, each row as long as the header.
    skip : sequence of str
        Columns not to scan (the label column).
    sample : int, default 1000
        Rows read per column (the first ones).
    """
    found: list[Finding] = []
    head = rows[:sample]
    for index, column in enumerate(header):
        if column in skip:
            continue
        finding = scan_column(column, [row[index] for row in head if index < len(row)])
        if finding is not None:
            found.append(finding)
    return tuple(found)
