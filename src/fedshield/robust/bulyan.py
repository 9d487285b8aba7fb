"""Bulyan: Krum-based selection, then a coordinate-wise trimmed average around the median.

El Mhamdi, Guerraoui and Rouault, 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018.

1. Selection: ``theta = n - 2f`` updates are chosen one at a time; each round applies
   Krum to the updates not yet chosen (with the same ``f``, so ``|R| - f - 2``
   neighbours, at least 1, as Flower's ``aggregate_bulyan`` does for the last rounds
   where the formula reaches 0) and moves its choice to the selected set. Distances
   are computed once. Exact score ties are broken by the updates' values (see
   :func:`fedshield.robust._distances.rank`).
2. Aggregation: in each coordinate, the ``beta = theta - 2f`` selected values closest
   to the selected values' median are averaged. They are found by growing a window
   outwards from the median in sorted order, taking the closer neighbour each step and
   the lower one on an exact tie, so the result depends on the values only.

Assumption: ``n >= 4f + 3`` (so ``beta >= 3``): every coordinate of the output is then
within the range of the honest selected values, and the selection step bounds the
attackers' leeway in L2 norm as well (the paper's "strong" resilience).

What misuse breaks: with ``n < 4f + 3`` the selected set can hold a majority of
Byzantine updates in some coordinate; that is refused. Bulyan discards ``2f`` updates
and ``2f`` more values per coordinate, so under heterogeneous (non-IID) data it drifts
towards the majority's distribution.

Weights: not honoured (weights must be None or all equal).

Float32 updates are not copied to float64 whole: the distances convert one column block
at a time and only the selected rows are converted, so the result is exactly that of
the float64 copy.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from fedshield.robust._checks import Floats, bad_values_first, need, prepare_unchecked, uniform_only
from fedshield.robust._distances import krum_scores, pairwise_sq_distances, rank

__all__ = ["BOUNDED_INFLUENCE", "NAME", "WEIGHTED", "aggregate", "requirement", "select"]

NAME: Final = "bulyan"
BOUNDED_INFLUENCE: Final = True
"""Each coordinate stays within the honest selected values' range when ``n >= 4f + 3``."""
WEIGHTED: Final = False


def requirement(n: int, num_byzantine: int) -> None:
    """Raise ConfigError unless ``n >= 4f + 3`` (El Mhamdi et al. 2018)."""
    need(
        n >= 4 * num_byzantine + 3,
        NAME,
        "n >= 4f + 3",
        n,
        num_byzantine,
        "Bulyan selects n - 2f updates and averages n - 4f values per coordinate",
    )


def select(x: Floats, num_byzantine: int) -> npt.NDArray[np.intp]:
    """Return the ``n - 2f`` row indices chosen by repeated Krum, in selection order.

    ``x`` (float32 or float64) may hold unchecked values: a bad one raises PayloadError.
    """
    n = x.shape[0]
    sq_dist = pairwise_sq_distances(x)
    remaining = np.arange(n, dtype=np.intp)
    chosen: list[int] = []
    for _ in range(n - 2 * num_byzantine):
        scores = krum_scores(sq_dist[np.ix_(remaining, remaining)], num_byzantine)
        best = int(rank(scores, x, remaining)[0])
        chosen.append(best)
        remaining = remaining[remaining != best]
    return np.asarray(chosen, dtype=np.intp)


def _closest_to_median_mean(values: npt.NDArray[np.float64], beta: int) -> npt.NDArray[np.float64]:
    """Average, per column, the ``beta`` values closest to the column's median.

    ``values`` is sorted along axis 0 in place. Only (d,)-sized temporaries are made.
    """
    values.sort(axis=0)
    theta, d = values.shape
    centre = theta // 2
    if theta % 2:
        median = values[centre].copy()
    else:
        median = (values[centre - 1] + values[centre]) / 2
    cols = np.arange(d)
    lo = np.full(d, centre, dtype=np.intp)  # the window is values[lo:hi] per column
    hi = np.full(d, centre, dtype=np.intp)
    for _ in range(beta):
        left_gap = median - values[np.maximum(lo - 1, 0), cols]
        right_gap = values[np.minimum(hi, theta - 1), cols] - median
        take_left = (lo > 0) & ((hi >= theta) | (left_gap <= right_gap))
        lo -= take_left
        hi += ~take_left
    total = np.zeros(d)
    for offset in range(beta):
        total += values[lo + offset, cols]
    result: npt.NDArray[np.float64] = total / beta
    return result


def aggregate(
    updates: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    num_byzantine: int = 0,
) -> npt.NDArray[np.float64]:
    """Return the Bulyan aggregate of the ``(n, d)`` updates, shape ``(d,)``, float64.

    Parameters
    ----------
    updates : array_like, shape (n, d)
        One flattened update per row, finite.
    weights : array_like, shape (n,), optional
        Must be None or all equal: Bulyan is unweighted.
    num_byzantine : int
        ``f``; needs ``n >= 4f + 3``.

    Raises
    ------
    PayloadError
        If the updates or weights are malformed.
    ConfigError
        If ``n < 4f + 3`` or the weights are not uniform.
    """
    x, w, f = prepare_unchecked(updates, weights, num_byzantine, requirement)
    with bad_values_first(x):
        uniform_only(w, NAME)
    chosen = np.sort(select(x, f))
    selected = x[chosen].astype(np.float64, copy=False)  # a copy: sorted in place below
    return _closest_to_median_mean(selected, len(chosen) - 2 * f)
