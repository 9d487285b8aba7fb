"""Masking: policy validation, the PII scanner, table masking, the site's key and CSV load."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedshield import masking
from fedshield.errors import ConfigError
from fedshield.masking import (
    UnmaskedPIIError,
    canonical_json,
    load_key,
    load_policy,
    mask_table,
    parse_policy,
    policy_path_for,
    policy_sha3,
    pseudonymize,
    scan_column,
    scan_table,
    site_masking,
    truncate_dates,
    truncate_zips,
)
from fedshield.secagg import deterministic_random
from fedshield.training.datasets import read_csv_site

KEY = bytes(range(32))


def _policy(text: str) -> masking.MaskingPolicy:
    return parse_policy(tomllib.loads(textwrap.dedent(text)))


def test_public_surface() -> None:
    assert set(masking.__all__) == {
        "ACTIONS",
        "KEY_BYTES",
        "KIT_KEY_FILE",
        "POLICY_SUFFIX",
        "ColumnRule",
        "Finding",
        "MaskedTable",
        "MaskingPolicy",
        "SiteMasking",
        "UnmaskedPIIError",
        "bucket_numbers",
        "canonical_json",
        "check_coverage",
        "load_key",
        "load_policy",
        "mask_table",
        "parse_policy",
        "perturb",
        "policy_path_for",
        "policy_sha3",
        "pseudonymize",
        "scan_column",
        "scan_table",
        "site_masking",
        "truncate_dates",
        "truncate_zips",
    }


# ---------------------------------------------------------------------------- policy


FULL = """
    version = 1
    unlisted = "keep"
    [columns.name]
    action = "drop"
    [columns.mrn]
    action = "pseudonymize"
    [columns.dob]
    action = "generalize"
    kind = "date"
    to = "year"
    [columns.zip]
    action = "generalize"
    kind = "zip"
    digits = 3
    [columns.age]
    action = "generalize"
    kind = "number"
    edges = [0, 18, 40, 65, 90]
    [columns.size]
    action = "perturb"
    noise = "laplace"
    scale = 0.5
    bound = 2.0
    [allow_unmasked]
    clinic_phone = "the clinic's switchboard, not a patient's"
"""


def test_policy_parses_with_defaults_filled_in() -> None:
    policy = _policy(FULL)
    assert policy.columns["mrn"].params == {"length": 32, "namespace": "default"}
    assert not policy.columns["mrn"].feature
    assert policy.columns["dob"].feature  # a year is a number
    assert not policy.columns["zip"].feature
    assert policy.columns["age"].feature and policy.columns["age"].params["edges"] == [
        0.0,
        18.0,
        40.0,
        65.0,
        90.0,
    ]
    assert policy.columns["size"].params["bound"] == 2.0
    assert policy.allow_unmasked == {"clinic_phone": "the clinic's switchboard, not a patient's"}
    assert policy.rule_for("other").action == "keep" and policy.rule_for("other").feature


def test_policy_hash_is_of_the_canonical_form() -> None:
    policy = _policy(FULL)
    digest = policy_sha3(policy)
    assert digest == hashlib.sha3_256(canonical_json(policy).encode()).hexdigest()
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    # Order, comments and explicit defaults do not change the hash ...
    reordered = _policy(
        """
        # comment
        [allow_unmasked]
        clinic_phone = "the clinic's switchboard, not a patient's"
        [columns.size]
        bound = 2.0
        scale = 0.5
        noise = "laplace"
        action = "perturb"
        [columns.age]
        kind = "number"
        action = "generalize"
        edges = [0, 18.0, 40, 65, 90]
        [columns.zip]
        action = "generalize"
        kind = "zip"
        digits = 3
        feature = false
        [columns.dob]
        action = "generalize"
        kind = "date"
        to = "year"
        [columns.mrn]
        action = "pseudonymize"
        length = 32
        [columns.name]
        action = "drop"
        """
    )
    assert policy_sha3(reordered) == digest
    # ... a change of meaning does.
    changed = _policy(FULL.replace("digits = 3", "digits = 2"))
    assert policy_sha3(changed) != digest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colums = 1", r"unknown top-level key\(s\) \['colums'\]"),
        ("version = 2", "version must be 1"),
        ('unlisted = "hide"', 'unlisted must be "keep" or "drop"'),
        ('[columns.a]\naction = "hash"', r"column 'a': action must be one of"),
        ('[columns.a]\nmode = "drop"', r"column 'a': action must be one of"),
        ('[columns.a]\naction = "drop"\nfeature = true', r"unknown parameter\(s\) \['feature'\]"),
        ('[columns.a]\naction = "generalize"', "generalize needs kind"),
        ('[columns.a]\naction = "generalize"\nkind = "number"', "exactly one of edges"),
        (
            '[columns.a]\naction = "generalize"\nkind = "number"\nedges = [3, 1]',
            "strictly increasing",
        ),
        ('[columns.a]\naction = "generalize"\nkind = "number"\nwidth = -1', "width must be > 0"),
        ('[columns.a]\naction = "generalize"\nkind = "date"\nto = "day"', 'to = "year" or'),
        (
            '[columns.a]\naction = "generalize"\nkind = "date"\nto = "month"\nfeature = true',
            "cannot be a model feature",
        ),
        (
            '[columns.a]\naction = "generalize"\nkind = "zip"\ndigits = 0',
            r"digits must be .*\[1, 9\]",
        ),
        ('[columns.a]\naction = "perturb"\nbound = 1', 'noise = "uniform" or "laplace"'),
        ('[columns.a]\naction = "perturb"\nnoise = "uniform"', "perturb needs bound"),
        ('[columns.a]\naction = "perturb"\nnoise = "laplace"\nbound = 1', "needs scale"),
        (
            '[columns.a]\naction = "perturb"\nnoise = "uniform"\nbound = 1\nscale = 1',
            "scale is only used",
        ),
        ('[columns.a]\naction = "perturb"\nnoise = "uniform"\nbound = inf', "must be finite"),
        ('[columns.a]\naction = "pseudonymize"\nfeature = true', "cannot be a model feature"),
        ('[columns.a]\naction = "pseudonymize"\nlength = 8', r"length must be .*\[16, 64\]"),
        ('[allow_unmasked]\na = ""', "needs a reason"),
        ("[allow_unmasked]\na = 3", "needs a reason"),
        ('[columns.a]\naction = "drop"\n[allow_unmasked]\na = "fine, really"', "at once"),
    ],
)
def test_policy_validation_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_policy(tomllib.loads(text))
    assert info.value.hint  # every error says how to fix it


# --------------------------------------------------------------------------- scanner


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("patient_name", "person name"),
        ("PatientName", "person name"),
        ("Surname", "person name"),
        ("E-Mail", "email"),
        ("contact_email", "email"),
        ("mobile", "phone"),
        ("SSN", "national or record id"),
        ("mrn", "national or record id"),
        ("social_security_no", "national or record id"),
        ("dob", "date of birth"),
        ("date_of_birth", "date of birth"),
        ("DateOfBirth", "date of birth"),
        ("zip", "zip code"),
        ("postcode", "zip code"),
        ("home_address", "address"),
    ],
)
def test_scanner_flags_by_name(column: str, kind: str) -> None:
    finding = scan_column(column, ["1", "2"])
    assert finding is not None and finding.kind == kind
    assert "column name" in finding.reason


NAMES = [
    f"{f} {last}" for f in ("Maria", "John", "Aisha", "Chen") for last in ("Lopez", "Kim", "Okafor")
]


@pytest.mark.parametrize(
    ("cells", "kind"),
    [
        (["12.5", "ok", "write to ana@example.org"], "email"),
        (["123-45-6789", "n/a"], "national or record id"),
        (["AB 12 34 56 C", "n/a"], "national or record id"),
        (["(201) 555-0123", "+44 20 7946 0958", "555.010.0199"], "phone"),
        (["1980-01-02", "1975-12-30", "2001-07-04"], "date"),
        (["02/01/1980", "30.12.1975"], "date"),
        (NAMES, "person name"),
    ],
)
def test_scanner_flags_by_content(cells: list[str], kind: str) -> None:
    finding = scan_column("c1", cells)
    assert finding is not None and finding.kind == kind
    for cell in cells:  # a finding never quotes a cell
        assert cell not in finding.reason


@pytest.mark.parametrize(
    "cells",
    [
        ["1.5", "2", "-3e4", "17.99", "1001.0"],  # numbers, however formatted
        ["left", "right", "left", "right"],
        ["Left Breast", "Right Breast"] * 10,  # capitalised but a repeated category
        ["benign", "Malignant", ""],
    ],
)
def test_scanner_leaves_ordinary_columns_alone(cells: list[str]) -> None:
    assert scan_column("site_of_tumor", cells) is None


def test_scanner_leaves_the_breast_cancer_features_alone() -> None:
    from fedshield.training.datasets import _load_raw

    x, _, _, names = _load_raw("breast_cancer")
    rows = [[repr(float(v)) for v in row] for row in x[:50]]
    assert scan_table(names, rows) == ()


# ----------------------------------------------------------------------------- table

HEADER = ["name", "email", "mrn", "dob", "zip", "age", "size", "target"]
ROWS = [
    ["Maria Lopez", "maria@example.org", "MRN-1", "1980-03-14", "02139", "34", "1.0", "0"],
    ["John Kim", "john@example.org", "MRN-2", "1955-11-02", "94110", "71", "2.0", "1"],
    ["Maria Lopez", "maria@example.org", "MRN-1", "1980-03-14", "02139", "34", "3.0", "0"],
]


def test_mask_table_applies_every_action() -> None:
    policy = _policy(
        """
        [columns.name]
        action = "drop"
        [columns.email]
        action = "drop"
        [columns.mrn]
        action = "pseudonymize"
        [columns.dob]
        action = "generalize"
        kind = "date"
        to = "year"
        [columns.zip]
        action = "generalize"
        kind = "zip"
        digits = 3
        [columns.age]
        action = "generalize"
        kind = "number"
        width = 10
        [columns.size]
        action = "perturb"
        noise = "uniform"
        bound = 0.5
        """
    )
    out = mask_table(
        HEADER,
        ROWS,
        policy=policy,
        label_column="target",
        key=KEY,
        rng=deterministic_random(b"t"),
    )
    assert out.header == ("mrn", "dob", "zip", "age", "size", "target")
    assert out.features == ("dob", "age", "size")
    assert out.columns["dob"] == ["1980", "1955", "1980"]
    assert out.columns["zip"] == ["021", "941", "021"]
    assert out.columns["age"] == ["30.0", "70.0", "30.0"]
    sizes = [float(v) for v in out.columns["size"]]
    assert all(abs(s - o) <= 0.5 for s, o in zip(sizes, (1.0, 2.0, 3.0), strict=True))
    pseudonyms = out.columns["mrn"]
    assert pseudonyms[0] == pseudonyms[2] != pseudonyms[1]
    expected = hmac.new(
        KEY, b"fedshield/masking/v1/pseudonym\x00default\x00MRN-1", hashlib.sha256
    ).hexdigest()[:32]
    assert pseudonyms[0] == expected  # known answer: HMAC-SHA256, label, namespace, value
    assert {f.column for f in out.findings} == {"name", "email", "mrn", "dob", "zip"}
    assert out.actions["name"] == "drop" and out.actions["size"] == "perturb"


def test_unmasked_pii_is_refused_with_a_clear_message() -> None:
    policy = _policy('[columns.name]\naction = "drop"\n[columns.email]\naction = "keep"\n')
    with pytest.raises(UnmaskedPIIError) as info:
        mask_table(HEADER, ROWS, policy=policy, label_column="target", policy_path="p.toml")
    message = info.value.message
    assert message.startswith("refusing to train: 4 column(s) look identifying")
    for column in ("'email'", "'mrn'", "'dob'", "'zip'"):
        assert column in message
    assert "'name'" not in message  # it is dropped
    assert "column name contains the word 'email'" in message
    assert "maria@example.org" not in message and "MRN-1" not in message
    assert "p.toml" in info.value.hint and "[allow_unmasked]" in info.value.hint
    assert '[columns.email]\n  action = "drop"' in info.value.hint
    assert info.value.exit_code == 2


def test_no_policy_refuses_flagged_columns_and_allow_unmasked_lets_them_through() -> None:
    header, rows = ["zip", "x", "target"], [["02139", "1", "0"], ["94110", "2", "1"]]
    with pytest.raises(UnmaskedPIIError, match="and there is no masking policy"):
        mask_table(header, rows, policy=None, label_column="target")
    allowed = _policy('[allow_unmasked]\nzip = "only the clinic zip, same for all"\n')
    out = mask_table(header, rows, policy=allowed, label_column="target")
    assert out.features == ("zip", "x")
    dropped = _policy('unlisted = "drop"\n[columns.x]\naction = "keep"\n')
    out = mask_table(header, rows, policy=dropped, label_column="target")
    assert out.features == ("x",) and out.actions["zip"] == "drop"


def test_policy_must_fit_the_table() -> None:
    with pytest.raises(ConfigError, match=r"names column\(s\) \['nmae'\] that the data"):
        mask_table(
            HEADER, ROWS, policy=_policy('[columns.nmae]\naction = "drop"'), label_column="target"
        )
    with pytest.raises(ConfigError, match="names the label column 'target'"):
        mask_table(
            HEADER, ROWS, policy=_policy('[columns.target]\naction = "drop"'), label_column="target"
        )
    bad = _policy(
        '[columns.name]\naction = "generalize"\nkind = "number"\nwidth = 5\n'
        '[allow_unmasked]\nemail = "test only"\nmrn = "test only"\ndob = "test only"\n'
        'zip = "test only"'
    )
    with pytest.raises(ConfigError, match=r"column 'name', row 1: not a number") as info:
        mask_table(HEADER, ROWS, policy=bad, label_column="target")
    assert "Maria" not in info.value.message


def test_transforms_reject_bad_cells_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="row 2: not an ISO date") as info:
        truncate_dates(["1980-01-01", "14 March 1980"], to="year")
    assert "March" not in info.value.message
    with pytest.raises(ConfigError, match="row 1: a zip code shorter"):
        truncate_zips(["12"], digits=3)
    assert truncate_zips(["02139-4307", "sw1a 1aa", ""], digits=3) == ["021", "SW1", ""]
    assert truncate_dates(["1980-03-14", "1980-03", ""], to="month") == ["1980-03", "1980-03", ""]
    with pytest.raises(ConfigError, match="32 bytes"):
        pseudonymize(["a"], key=b"short")
    assert pseudonymize(["", "  "], key=KEY) == ["", ""]


# ------------------------------------------------------------------------ site files


def test_key_is_created_0600_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "kit" / "masking.key"
    key = load_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key  # stable
    assert load_key(tmp_path / "other.key") != key  # another site, another key
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible to group or others") as info:
        load_key(path)
    assert info.value.hint == f"chmod 600 {path}"
    os.chmod(path, 0o600)
    path.write_text("nothex\n")
    with pytest.raises(ConfigError, match="not 32 bytes of hex"):
        load_key(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(tmp_path / "none.key", create=False)


def test_site_masking_resolves_the_policy_and_loads_the_key_only_when_needed(
    tmp_path: Path,
) -> None:
    csv_dir = tmp_path / "data"
    csv_dir.mkdir()
    path = policy_path_for(participant="h1", csv_dir=csv_dir, configured=None, base_dir=tmp_path)
    assert path == csv_dir / "h1.masking.toml"
    configured = policy_path_for(
        participant="h1", csv_dir=csv_dir, configured="pol/{participant}.toml", base_dir=tmp_path
    )
    assert configured == tmp_path / "pol" / "h1.toml"
    none = site_masking(policy_path=path, key_path=tmp_path / "k")
    assert none.policy is None and none.policy_sha3 is None
    with pytest.raises(ConfigError, match="does not exist"):
        site_masking(policy_path=configured, key_path=tmp_path / "k", required=True)
    path.write_text('[columns.zip]\naction = "drop"\n')
    dropped = site_masking(policy_path=path, key_path=tmp_path / "k")
    assert dropped.key is None and not (tmp_path / "k").exists()
    path.write_text('[columns.mrn]\naction = "pseudonymize"\n')
    keyed = site_masking(policy_path=path, key_path=tmp_path / "k")
    assert keyed.key is not None and (tmp_path / "k").exists()
    assert keyed.key.hex() not in repr(keyed)
    path.write_text('[columns.mrn]\naction = "pseudonymise"\n')
    with pytest.raises(ConfigError, match=rf"{path}: masking policy column 'mrn': action"):
        load_policy(path)
    path.write_text("[columns.mrn\n")
    with pytest.raises(ConfigError, match="not readable TOML"):
        load_policy(path)


def test_read_csv_site_masks_before_the_feature_matrix(tmp_path: Path) -> None:
    lines = ["name,mrn,dob,x1,x2,target"]
    for i in range(20):
        lines.append(f"Person {chr(65 + i)}ovak,MRN-{i},19{50 + i}-01-02,{i},{2 * i},{i % 2}")
    csv_path = tmp_path / "h1.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UnmaskedPIIError, match="no masking policy") as info:
        read_csv_site(csv_path, label_column="target", test_fraction=0.25, seed=0)
    assert info.value.message.startswith(f"CSV file {csv_path}: refusing to train")
    policy = tmp_path / "h1.masking.toml"
    policy.write_text(
        '[columns.name]\naction = "drop"\n[columns.mrn]\naction = "pseudonymize"\n'
        '[columns.dob]\naction = "generalize"\nkind = "date"\nto = "year"\nfeature = false\n'
    )
    spec = site_masking(policy_path=policy, key_path=tmp_path / "k")
    train, test = read_csv_site(
        csv_path, label_column="target", test_fraction=0.25, seed=0, masking=spec
    )
    assert train.x.shape == (15, 2) and test.x.shape == (5, 2)
    # x2 = 2 * x1 survives standardization exactly: only x1 and x2 are features.
    assert np.allclose(train.x[:, 0], train.x[:, 1], atol=1e-5)
