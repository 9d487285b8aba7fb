"""Split a dataset's indices among simulated participants.

Three partitioners, all pure numpy and deterministic for a given ``seed``:

* :func:`iid` -- a uniform random split into near-equal parts;
* :func:`dirichlet` -- label skew after Hsu, Qi and Brown, "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification" (2019): for every
  class, the share of that class each partition receives is drawn from
  ``Dir(alpha * 1)``. Small ``alpha`` (0.1) gives each partition few classes; large
  ``alpha`` (100) approaches IID;
* :func:`shards` -- pathological non-IID after McMahan et al., "Communication-Efficient
  Learning of Deep Networks from Decentralized Data" (2017): sort by label, cut into
  ``num_partitions * shards_per_partition`` shards and deal each partition a few.

Every function returns one sorted ``int64`` index array per partition. Together they
are disjoint, cover ``0 .. n - 1`` exactly, and none is empty; when that is impossible
(more partitions than samples) a :class:`~fedshield.errors.ConfigError` says so.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedshield.errors import ConfigError

__all__ = ["PartitionName", "dirichlet", "iid", "partition", "shards"]

PartitionName = Literal["iid", "dirichlet", "shards"]

_DIRICHLET_MAX_TRIES = 100


def _check_count(num_samples: int, *, num_partitions: int, per_partition: int = 1) -> None:
    if isinstance(num_partitions, bool) or num_partitions < 1:
        raise ConfigError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_samples < num_partitions * per_partition:
        raise ConfigError(
            f"cannot give {num_partitions} partitions at least {per_partition} sample(s) "
            f"each from {num_samples} samples",
            hint="Use fewer participants or a larger dataset.",
        )


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ConfigError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"labels must be integer class ids, got dtype {arr.dtype}")
    return arr


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(num_samples: int, *, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split ``range(num_samples)`` uniformly at random into near-equal parts.

    Parameters
    ----------
    num_samples : int
        Number of samples to split.
    num_partitions : int
        Number of parts; sizes differ by at most one.
    seed : int
        Seed (>= 0) of the shuffle.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per partition.

    Raises
    ------
    ConfigError
        If ``num_partitions < 1`` or there are fewer samples than partitions.
    """
    _check_seed(seed)
    _check_count(num_samples, num_partitions=num_partitions)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return _finish(np.array_split(perm, num_partitions))


def dirichlet(
    labels: np.ndarray,
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split with per-class proportions drawn from a symmetric Dirichlet (Hsu et al. 2019).

    For each class the class's (shuffled) samples are cut by proportions
    ``p ~ Dir(alpha, ..., alpha)`` over the partitions. The draw is repeated (up to 100
    times) until every partition holds at least ``min_size`` samples; if that still
    fails, samples are moved one at a time from the largest partition to the smallest,
    which is deterministic and changes the label mix as little as possible.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer class ids, one per sample.
    num_partitions : int
        Number of partitions.
    alpha : float
        Concentration (> 0). Smaller means more label skew.
    seed : int
        Seed (>= 0) of all draws.
    min_size : int, default 1
        Minimum number of samples per partition (>= 1).

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per partition.

    Raises
    ------
    ConfigError
        If ``alpha <= 0``, ``min_size < 1`` or ``len(labels) < num_partitions * min_size``.
    """
    _check_seed(seed)
    arr = _check_labels(labels)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    if isinstance(min_size, bool) or min_size < 1:
        raise ConfigError(f"min_size must be >= 1, got {min_size}")
    _check_count(arr.size, num_partitions=num_partitions, per_partition=min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(arr)
    parts: list[list[int]] = []
    for _ in range(_DIRICHLET_MAX_TRIES):
        parts = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(arr == c))
            proportions = rng.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = (np.cumsum(proportions)[:-1] * idx.size).astype(np.int64)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return _finish([np.asarray(p) for p in parts])
    # Fix-up: the guard above ensures enough samples exist, so this terminates.
    while True:
        sizes = [len(p) for p in parts]
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= min_size:
            break
        largest = int(np.argmax(sizes))
        parts[smallest].append(parts[largest].pop())
    return _finish([np.asarray(p) for p in parts])


def shards(
    labels: np.ndarray,
    *,
    num_partitions: int,
    shards_per_partition: int,
    seed: int,
) -> list[np.ndarray]:
    """Sort by label, cut into shards and deal them out (McMahan et al. 2017).

    Samples are shuffled, stably sorted by label, cut into
    ``num_partitions * shards_per_partition`` contiguous near-equal shards, and each
    partition receives ``shards_per_partition`` shards chosen at random. With two shards
    per partition, most partitions see only two classes.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer class ids, one per sample.
    num_partitions : int
        Number of partitions.
    shards_per_partition : int
        Shards each partition receives (>= 1).
    seed : int
        Seed (>= 0) of the shuffles.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per partition.

    Raises
    ------
    ConfigError
        If ``shards_per_partition < 1`` or there are fewer samples than shards.
    """
    _check_seed(seed)
    arr = _check_labels(labels)
    if isinstance(shards_per_partition, bool) or shards_per_partition < 1:
        raise ConfigError(f"shards_per_partition must be >= 1, got {shards_per_partition}")
    _check_count(arr.size, num_partitions=num_partitions, per_partition=shards_per_partition)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(arr.size)
    by_label = perm[np.argsort(arr[perm], kind="stable")]
    pieces = np.array_split(by_label, num_partitions * shards_per_partition)
    order = rng.permutation(len(pieces)).reshape(num_partitions, shards_per_partition)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in order])


def partition(
    name: PartitionName,
    labels: np.ndarray,
    *,
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    shards_per_partition: int = 2,
) -> list[np.ndarray]:
    """Split ``labels``' indices with the partitioner called ``name``.

    Parameters
    ----------
    name : {"iid", "dirichlet", "shards"}
        Which partitioner to use.
    labels : np.ndarray
        1-D integer class ids, one per sample (only the length is used by ``"iid"``).
    num_partitions : int
        Number of partitions.
    seed : int
        Seed (>= 0).
    alpha : float, default 0.5
        Dirichlet concentration (``"dirichlet"`` only).
    shards_per_partition : int, default 2
        Shards per partition (``"shards"`` only).

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per partition.

    Raises
    ------
    ConfigError
        If ``name`` is unknown or the chosen partitioner rejects its arguments.
    """
    arr = _check_labels(labels)
    if name == "iid":
        return iid(arr.size, num_partitions=num_partitions, seed=seed)
    if name == "dirichlet":
        return dirichlet(arr, num_partitions=num_partitions, alpha=alpha, seed=seed)
    if name == "shards":
        return shards(
            arr,
            num_partitions=num_partitions,
            shards_per_partition=shards_per_partition,
            seed=seed,
        )
    raise ConfigError(f"unknown partitioner {name!r}; expected one of 'iid', 'dirichlet', 'shards'")
