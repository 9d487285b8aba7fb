"""Write one CSV file and one masking policy per hospital for examples/breast_cancer.toml.

The rows come from scikit-learn's breast cancer data set (shipped with the package),
split across the hospitals with a Dirichlet(0.5) label skew; a held-out
``server_test.csv`` is written for the coordinator's evaluation.

Like a real hospital extract, each hospital's file also carries identifying columns
(patient name, e-mail, phone, date of birth, zip code, medical record number). They are
synthetic: generated from the federation seed, names from short built-in lists, e-mails
at example.org, phone numbers in the fictional 555-01xx range. Next to each CSV the
script writes ``<hospital>.masking.toml``, the hospital's own masking policy: every
identifying column is dropped, pseudonymized or generalized before training, and none
of them becomes a model feature. Without the policy the participant refuses to train
(try deleting one). See docs/masking.md.

    python examples/breast_cancer_sites.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedshield.config import load_config
from fedshield.masking.site import POLICY_SUFFIX, load_policy
from fedshield.training.datasets import write_site_csvs

HERE = Path(__file__).resolve().parent

# What every hospital does with its identifying columns. Direct identifiers go; the
# record number becomes a keyed pseudonym (to link the site's records, not a feature);
# the date of birth keeps its year and the zip code its first three digits, as HIPAA's
# Safe Harbor allows -- kept in the masked table, not fed to the model.
BASE_POLICY = """\
# Masking policy of {name}: applied by {name}'s participant to {name}.csv before
# training. Written by examples/breast_cancer_sites.py; see docs/masking.md.
version = 1
unlisted = "keep"          # the 30 tumour measurements stay model features

[columns.patient_name]
action = "drop"

[columns.email]
action = "drop"

[columns.phone]
action = "drop"

[columns.mrn]
action = "pseudonymize"    # HMAC-SHA256 under {name}'s own key; never a feature
length = 32

[columns.date_of_birth]
action = "generalize"
kind = "date"
to = "{dob}"
feature = false

[columns.zip]
{zip}
"""
# Hospitals differ in what their own governance asks for.
CHOICES = (
    {"dob": "year", "zip": 'action = "generalize"\nkind = "zip"\ndigits = 3'},
    {"dob": "month", "zip": 'action = "generalize"\nkind = "zip"\ndigits = 2'},
    {"dob": "year", "zip": 'action = "drop"'},
)


def main() -> None:
    config = load_config(HERE / "breast_cancer.toml")
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / (config.data.csv_dir or "sites")
    names = config.participants.resolved_names()
    paths = write_site_csvs(
        out,
        dataset="breast_cancer",
        names=names,
        alpha=0.5,
        seed=config.federation.seed,
        identifying=True,
    )
    for index, name in enumerate(names):
        policy = out / f"{name}{POLICY_SUFFIX}"
        policy.write_text(
            BASE_POLICY.format(name=name, **CHOICES[index % len(CHOICES)]), encoding="utf-8"
        )
        load_policy(policy)  # what the participant will read must be valid
        paths[f"{name} policy"] = policy
    for name, path in paths.items():
        print(f"{name:>20}  {path}")


if __name__ == "__main__":
    main()
