"""Multi-Krum: the average of the ``m`` updates with the best Krum scores.

Blanchard, El Mhamdi, Guerraoui and Stainer, 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Multi-Krum is introduced there);
El Mhamdi, Guerraoui and Rouault, 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018 (default ``m = n - f``).

Scores are Krum's (:mod:`fedshield.robust.krum`): the sum of squared distances to the
``n - f - 2`` nearest other updates. The ``m`` lowest-scoring updates are averaged,
weighted by their ``weights`` if given. ``m = 1`` is Krum; ``m = n`` is the mean.

Assumption: ``n >= 2f + 3`` as for Krum, and ``1 <= m <= n - f``.

What misuse breaks: ``m > n - f`` forces at least ``m - (n - f)`` Byzantine updates
into the average whenever ``f`` attackers are present; that is refused. As for Krum,
attackers that hide inside the honest spread (ALIE) are selected. Weights are reported
by the participants: a selected participant that inflates its weight dominates the
average of the selected (the average stays inside their convex hull).

Weights: honoured in the average of the selected updates (as Flower's Multi-Krum
does), not in the scores.

Float32 updates are not copied to float64 whole: the distances and the average convert
one column block at a time (:mod:`fedshield.robust._distances`), so the result is
exactly that of the float64 copy. The average reads only the selected rows and adds
them in the order of their scores (ties broken by value), so permuting the input rows
does not change its bits unless equal rows carry different weights.
"""

from __future__ import annotations

import numbers
from typing import Final

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError, PayloadError
from fedshield.robust._checks import bad_values_first, need, prepare_unchecked
from fedshield.robust._distances import weighted_sum
from fedshield.robust.krum import select

__all__ = ["BOUNDED_INFLUENCE", "NAME", "WEIGHTED", "aggregate", "requirement"]

NAME: Final = "multi_krum"
BOUNDED_INFLUENCE: Final = True
"""The output is an average of updates that each pass Krum's neighbourhood test."""
WEIGHTED: Final = True


def requirement(n: int, num_byzantine: int) -> None:
    """Raise ConfigError unless ``n >= 2f + 3``, Krum's assumption."""
    need(
        n >= 2 * num_byzantine + 3,
        NAME,
        "n >= 2f + 3",
        n,
        num_byzantine,
        "Krum scores need n - f - 2 > f neighbours so honest ones outnumber Byzantine ones",
    )


def aggregate(
    updates: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    num_byzantine: int = 0,
    m: int | None = None,
) -> npt.NDArray[np.float64]:
    """Return the (weighted) mean of the ``m`` best-scored updates, shape ``(d,)``.

    Parameters
    ----------
    updates : array_like, shape (n, d)
        One flattened update per row, finite.
    weights : array_like, shape (n,), optional
        Weights of the average of the selected updates; uniform if omitted.
    num_byzantine : int
        ``f``; needs ``n >= 2f + 3``.
    m : int, optional
        How many updates to average, ``1 <= m <= n - f``. Default ``n - f``.

    Raises
    ------
    PayloadError
        If the updates or weights are malformed, or the selected updates all have
        weight 0.
    ConfigError
        If ``n < 2f + 3`` or ``m`` is out of range.
    """
    x, w, f = prepare_unchecked(updates, weights, num_byzantine, requirement)
    n = x.shape[0]
    if m is None:
        m = n - f
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= int(m) <= n - f:
        with bad_values_first(x):
            raise ConfigError(
                f"multi_krum needs an integer m with 1 <= m <= n - f = {n - f}, got m={m!r}"
            )
    chosen = select(x, f, int(m))
    if w is None:
        return weighted_sum(x, chosen, np.full(len(chosen), 1.0 / len(chosen)))
    total = float(w[chosen].sum())
    if total <= 0.0:
        raise PayloadError(f"the {m} updates multi_krum selected all have weight 0")
    return weighted_sum(x, chosen, w[chosen] / total)
