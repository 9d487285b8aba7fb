"""Edge data masking of a participant's tabular data, before training.

A site writes a masking policy (TOML, :mod:`fedshield.masking.policy`) that says, per
column: drop, pseudonymize (keyed HMAC-SHA256, site-local key), generalize (number
buckets, dates to year or month, zip prefixes), perturb (bounded noise) or keep. A PII
scanner (:mod:`fedshield.masking.scanner`) flags columns that look identifying by name
and content; a flagged column the policy neither masks nor explicitly allows stops the
site before it trains (:func:`mask_table`). The participant loads its CSV through
:func:`fedshield.training.datasets.read_csv_site`, which masks the table before the
feature matrix is built, and reports only :func:`policy_sha3` for the audit log.

Masking is not anonymization: pseudonyms link a site's records, generalized values
still narrow people down, and the model is protected by differential privacy, not by
masking. See docs/masking.md.

The core (policy, scanner, transforms, table) is pure; :mod:`fedshield.masking.site`
is the thin edge that reads the policy file and the site's key.
"""

from fedshield.masking.policy import (
    ACTIONS,
    ColumnRule,
    MaskingPolicy,
    canonical_json,
    parse_policy,
    policy_sha3,
)
from fedshield.masking.scanner import Finding, scan_column, scan_table
from fedshield.masking.site import (
    KIT_KEY_FILE,
    POLICY_SUFFIX,
    SiteMasking,
    load_key,
    load_policy,
    policy_path_for,
    site_masking,
)
from fedshield.masking.table import MaskedTable, UnmaskedPIIError, check_coverage, mask_table
from fedshield.masking.transforms import (
    KEY_BYTES,
    bucket_numbers,
    perturb,
    pseudonymize,
    truncate_dates,
    truncate_zips,
)

__all__ = [
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
]
