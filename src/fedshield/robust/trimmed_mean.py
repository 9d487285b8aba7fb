"""The coordinate-wise trimmed mean.

Yin, Chen, Ramchandran and Bartlett, 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018.

In every coordinate the ``k`` largest and the ``k`` smallest of the ``n`` values are
dropped and the remaining ``n - 2k`` are averaged. ``k = f`` (``num_byzantine``) by
default; with ``beta``, ``k = floor(beta * n)``, where ``beta * n`` is first rounded to
9 decimals so that a representation error (``0.29 * 100 == 28.999999999999996``) does
not drop a row.

Assumption: ``n >= 2f + 1`` and ``k >= f``: at least as many values are trimmed from
each side as there can be Byzantine ones. Then every coordinate lies between the
smallest and the largest honest value.

What misuse breaks: trimming fewer than ``f`` per side (a ``beta`` below ``f / n``)
lets one attacker value through per coordinate, so the output is unbounded; that is
refused. Trimming many honest values costs accuracy under heterogeneous (non-IID) data,
and in-range attacks (ALIE) still bias each coordinate.

Weights: not honoured (weights must be None or all equal).

Float32 updates are sorted as float32, one column block at a time
(:func:`sorted_columns`, shared with the median), and only the kept values are
converted: the result is exactly that of the float64 copy (the kept values are summed in
float64 in ascending order, as ``np.sort(x, axis=0)[k:n-k].mean(axis=0)`` does),
without an ``(n, d)`` float64 copy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError
from fedshield.robust._checks import (
    Floats,
    bad_values_first,
    check_extremes,
    need,
    prepare_unchecked,
    uniform_only,
)

__all__ = [
    "BOUNDED_INFLUENCE",
    "NAME",
    "WEIGHTED",
    "aggregate",
    "central_mean",
    "column_blocks",
    "requirement",
    "sorted_columns",
    "trim_count",
]

NAME: Final = "trimmed_mean"
BOUNDED_INFLUENCE: Final = True
"""Each coordinate stays within the honest values' range when ``k >= f``."""
WEIGHTED: Final = False

# Values per sorted block: 1 MiB of float32 (2 MiB of float64), about one L2 cache.
_BLOCK_VALUES = 1 << 18


def requirement(n: int, num_byzantine: int) -> None:
    """Raise ConfigError unless ``n >= 2f + 1`` (``f`` values can be trimmed per side)."""
    need(
        n >= 2 * num_byzantine + 1,
        NAME,
        "n >= 2f + 1",
        n,
        num_byzantine,
        "trimming f values from each side must leave at least one value",
    )


def trim_count(n: int, num_byzantine: int, beta: Any = None) -> int:
    """Return ``k``, the number of values trimmed from each side of each coordinate.

    Raises
    ------
    ConfigError
        If ``beta`` is not a number in ``[0, 0.5)`` or gives ``k < num_byzantine``.
    """
    if beta is None:
        return num_byzantine
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= float(beta) < 0.5:
        raise ConfigError(f"beta must be a number in [0, 0.5), got {beta!r}")
    k = math.floor(round(float(beta) * n, 9))
    if k < num_byzantine:
        raise ConfigError(
            f"trimmed_mean with beta={beta} trims k={k} of n={n} per side, fewer than "
            f"num_byzantine={num_byzantine}: beta must be >= num_byzantine / n"
        )
    return k


def aggregate(
    updates: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    num_byzantine: int = 0,
    beta: float | None = None,
) -> npt.NDArray[np.float64]:
    """Return the coordinate-wise trimmed mean of the ``(n, d)`` updates, shape ``(d,)``.

    Parameters
    ----------
    updates : array_like, shape (n, d)
        One flattened update per row, finite.
    weights : array_like, shape (n,), optional
        Must be None or all equal: the trimmed mean is unweighted.
    num_byzantine : int
        ``f``; needs ``n >= 2f + 1``. Trimmed per side unless ``beta`` is given.
    beta : float, optional
        Fraction of the ``n`` values trimmed from each side, in ``[0, 0.5)``;
        ``k = floor(beta * n)`` must be ``>= f``. Default: ``k = f``.

    Raises
    ------
    PayloadError
        If the updates or weights are malformed.
    ConfigError
        If ``n < 2f + 1``, ``beta`` is out of range or trims fewer than ``f``, or the
        weights are not uniform.
    """
    x, w, f = prepare_unchecked(updates, weights, num_byzantine, requirement)
    with bad_values_first(x):
        uniform_only(w, NAME)
        k = trim_count(x.shape[0], f, beta)
    return central_mean(x, k)


def column_blocks(n: int, d: int) -> Iterator[slice]:
    """Split ``d`` columns into slices of about ``2**18 / n`` columns.

    The last slice is never a lone column: numpy sums an ``(m, 1)`` array pairwise, not
    row after row as it does wider ones, so a lone column would be rounded differently.
    """
    step = max(2, _BLOCK_VALUES // n)
    start = 0
    while start < d:
        stop = d if d - start <= step + 1 else start + step
        yield slice(start, stop)
        start = stop


def sorted_columns(x: Floats) -> Iterator[tuple[slice, Floats]]:
    """Yield ``(columns, ordered)`` per column block of ``x``, each column sorted.

    ``ordered[j]`` is column ``columns.start + j`` of ``x`` sorted ascending, in ``x``'s
    own dtype (a float32 value converts to float64 exactly, so the order is that of the
    float64 copy). The block is transposed into a buffer, reused by the next block, so
    that every column is contiguous: sorting them is several times faster than
    ``numpy.median``'s strided partition of a C-ordered ``(n, d)`` matrix. The two ends
    of each sorted column (a sort puts NaN last) check the values.

    Raises
    ------
    PayloadError
        If a value of ``x`` is NaN, infinite or > 2**128 in magnitude.
    """
    n, d = x.shape
    buffer = np.empty(n * min(max(2, _BLOCK_VALUES // n) + 1, d), dtype=x.dtype)
    for columns in column_blocks(n, d):
        part = x[:, columns]
        ordered = buffer[: part.size].reshape(part.shape[::-1])
        ordered[...] = part.T
        ordered.sort(axis=1)
        check_extremes(ordered[:, 0], ordered[:, -1], x)
        yield columns, ordered


def central_mean(x: Floats, k: int) -> npt.NDArray[np.float64]:
    """Return, per column, the float64 mean of the values left when ``k`` are cut per end.

    Exactly ``np.sort(x64, axis=0)[k:n-k].mean(axis=0)`` for a C-ordered
    ``x64 = x.astype(float64)`` (``x64.mean(axis=0)`` when ``k == 0``): the kept values
    are summed in float64 row after row, in ascending order (in input order for
    ``k == 0``), then divided by their number. ``x`` (float32 or float64, ``n > 2k``,
    any layout) is never copied whole: only the kept values of one column block at a
    time are converted.

    Raises
    ------
    PayloadError
        If a value of ``x`` is NaN, infinite or > 2**128 in magnitude.
    """
    n, d = x.shape
    m = n - 2 * k
    result = np.empty(d)
    buffer = np.empty(m * min(max(2, _BLOCK_VALUES // n) + 1, d))

    def mean_of_rows(rows: Floats, columns: slice) -> None:
        kept = buffer[: rows.size].reshape(rows.shape)
        kept[...] = rows  # C-ordered float64, so that numpy sums row after row
        out = result[columns]
        np.add.reduce(kept, axis=0, out=out)
        out /= m

    if k == 0:
        for columns in column_blocks(n, d):
            part = x[:, columns]
            check_extremes(part.min(axis=0), part.max(axis=0), x)
            mean_of_rows(part, columns)
    else:
        for columns, ordered in sorted_columns(x):
            mean_of_rows(ordered[:, k : n - k].T, columns)
    return result
