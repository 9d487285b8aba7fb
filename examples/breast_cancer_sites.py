"""Write one CSV file per hospital for examples/breast_cancer.toml.

The rows come from scikit-learn's breast cancer data set (shipped with the package),
split across the hospitals with a Dirichlet(0.5) label skew; a held-out
``server_test.csv`` is written for the coordinator's evaluation.

    python examples/breast_cancer_sites.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedshield.config import load_config
from fedshield.training.datasets import write_site_csvs

HERE = Path(__file__).resolve().parent


def main() -> None:
    config = load_config(HERE / "breast_cancer.toml")
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / (config.data.csv_dir or "sites")
    paths = write_site_csvs(
        out,
        dataset="breast_cancer",
        names=config.participants.resolved_names(),
        alpha=0.5,
        seed=config.federation.seed,
    )
    for name, path in paths.items():
        print(f"{name:>12}  {path}")


if __name__ == "__main__":
    main()
