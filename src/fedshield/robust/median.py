"""The coordinate-wise median.

Yin, Chen, Ramchandran and Bartlett, 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018.

Each coordinate of the output is the median of that coordinate over the ``n`` updates
(the mean of the two middle values when ``n`` is even, as ``numpy.median``).

Assumption: an honest majority, ``n >= 2f + 1``. Then in every coordinate the median
lies between the smallest and the largest honest value, however large the ``f``
Byzantine values are.

What misuse breaks: with ``f >= n / 2`` the attackers choose the output. The guarantee
is per coordinate: the output is generally none of the inputs, and attacks that shift
every coordinate by a small in-range amount (ALIE, Baruch et al. 2019) still bias it,
increasingly so when honest updates disagree (non-IID data).

Weights: not honoured (weights must be None or all equal).

Float32 updates are sorted as float32, one column block at a time
(:func:`fedshield.robust.trimmed_mean.sorted_columns`), and the two middle values of an
even ``n`` are averaged in float64: the result is exactly that of the float64 copy,
without an ``(n, d)`` float64 copy. A zero median is always +0.0 (a sort may put -0.0
or +0.0 in the middle of a column holding both).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from fedshield.robust._checks import bad_values_first, need, prepare_unchecked, uniform_only
from fedshield.robust.trimmed_mean import sorted_columns

__all__ = ["BOUNDED_INFLUENCE", "NAME", "WEIGHTED", "aggregate", "requirement"]

NAME: Final = "median"
BOUNDED_INFLUENCE: Final = True
"""Each coordinate stays within the honest values' range when ``n >= 2f + 1``."""
WEIGHTED: Final = False


def requirement(n: int, num_byzantine: int) -> None:
    """Raise ConfigError unless ``n >= 2f + 1`` (an honest majority in every coordinate)."""
    need(
        n >= 2 * num_byzantine + 1,
        NAME,
        "n >= 2f + 1",
        n,
        num_byzantine,
        "the median is bounded by honest values only with an honest majority",
    )


def aggregate(
    updates: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    num_byzantine: int = 0,
) -> npt.NDArray[np.float64]:
    """Return the coordinate-wise median of the ``(n, d)`` updates, shape ``(d,)``.

    Parameters
    ----------
    updates : array_like, shape (n, d)
        One flattened update per row, finite.
    weights : array_like, shape (n,), optional
        Must be None or all equal: the median is unweighted.
    num_byzantine : int
        ``f``, the number of Byzantine updates to tolerate; needs ``n >= 2f + 1``.

    Raises
    ------
    PayloadError
        If the updates or weights are malformed.
    ConfigError
        If ``n < 2f + 1`` or the weights are not uniform.
    """
    x, w, _ = prepare_unchecked(updates, weights, num_byzantine, requirement)
    with bad_values_first(x):
        uniform_only(w, NAME)
    n, d = x.shape
    half = n // 2
    result = np.empty(d)
    for columns, ordered in sorted_columns(x):
        out = result[columns]
        if n % 2:
            out[...] = ordered[:, half]
        else:  # in float64, as numpy.median of the float64 copy
            np.add(ordered[:, half - 1], ordered[:, half], out=out, dtype=np.float64)
            out /= 2
        # -0.0 == +0.0, so which of them a sort puts in the middle depends on the sort
        # algorithm (not the same for float32 and float64): a zero median is +0.0.
        out += 0.0
    return result
