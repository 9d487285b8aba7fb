"""Krum: the update closest to its ``n - f - 2`` nearest neighbours.

Blanchard, El Mhamdi, Guerraoui and Stainer, 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017.

Each update's score is the sum of its squared L2 distances to its ``n - f - 2`` nearest
other updates; Krum returns the update with the smallest score (a copy of one input).
Exact ties are broken by the lexicographic order of the tied updates' values, so the
result does not depend on the order of the rows.

Assumption: ``n >= 2f + 3``, and honest updates are i.i.d. around the true gradient
with a small variance relative to its norm (the paper's ``(alpha, f)``-resilience
condition). Then a Byzantine update is chosen only if it is close to the honest ones.

What misuse breaks: with ``n < 2f + 3`` the neighbourhood of a Byzantine update can be
made of Byzantine updates only, and it wins; that is refused. When honest updates are
far apart (non-IID data, small batches) an attacker placed near the honest cluster's
centre (ALIE, "a little is enough") is chosen and steers the model; and choosing one
update throws away the variance reduction of averaging.

Weights: not honoured (weights must be None or all equal): one update is returned.

Float32 updates are not copied to float64 whole: the distances convert one column block
at a time (:func:`fedshield.robust._distances.pairwise_sq_distances`) and only the chosen
row is converted, so the result is exactly that of the float64 copy.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from fedshield.robust._checks import Floats, bad_values_first, need, prepare_unchecked, uniform_only
from fedshield.robust._distances import krum_scores, pairwise_sq_distances, rank

__all__ = ["BOUNDED_INFLUENCE", "NAME", "WEIGHTED", "aggregate", "requirement", "select"]

NAME: Final = "krum"
BOUNDED_INFLUENCE: Final = True
"""The output is an update surrounded by ``n - f - 2`` close neighbours."""
WEIGHTED: Final = False


def requirement(n: int, num_byzantine: int) -> None:
    """Raise ConfigError unless ``n >= 2f + 3`` (Blanchard et al. 2017, Prop. 1)."""
    need(
        n >= 2 * num_byzantine + 3,
        NAME,
        "n >= 2f + 3",
        n,
        num_byzantine,
        "Krum needs n - f - 2 > f neighbours so honest ones outnumber Byzantine ones",
    )


def select(x: Floats, num_byzantine: int, m: int) -> npt.NDArray[np.intp]:
    """Return the row indices of the ``m`` best Krum scores, best first.

    The caller has checked ``n >= 2f + 3`` and ``1 <= m <= n``; ``x`` (float32 or
    float64) may hold unchecked values: a bad one raises PayloadError here.
    """
    scores = krum_scores(pairwise_sq_distances(x), num_byzantine)
    members = np.arange(x.shape[0], dtype=np.intp)
    return rank(scores, x, members)[:m]


def aggregate(
    updates: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    num_byzantine: int = 0,
) -> npt.NDArray[np.float64]:
    """Return the Krum choice among the ``(n, d)`` updates, shape ``(d,)``, float64.

    Parameters
    ----------
    updates : array_like, shape (n, d)
        One flattened update per row, finite.
    weights : array_like, shape (n,), optional
        Must be None or all equal: Krum returns one update.
    num_byzantine : int
        ``f``; needs ``n >= 2f + 3``.

    Raises
    ------
    PayloadError
        If the updates or weights are malformed.
    ConfigError
        If ``n < 2f + 3`` or the weights are not uniform.
    """
    x, w, f = prepare_unchecked(updates, weights, num_byzantine, requirement)
    with bad_values_first(x):
        uniform_only(w, NAME)
    best = int(select(x, f, 1)[0])
    result: npt.NDArray[np.float64] = x[best].astype(np.float64)
    return result
