"""Input validation shared by the aggregation rules.

Every rule calls these before it computes anything, so a bad input fails with the same
message whichever rule received it:

* a malformed update matrix, weight vector or auxiliary vector (``center``,
  ``root_update``, ``history``) raises :class:`~fedshield.errors.PayloadError`;
* a bad parameter, an unknown parameter or a violated assumption (too few participants
  for ``num_byzantine``) raises :class:`~fedshield.errors.ConfigError`.

Values are bounded by :data:`MAX_ABS_VALUE` (every float32 value fits) so that no sum of
squares over an update can overflow float64: a Byzantine participant cannot turn a
distance into ``inf - inf = nan`` with a finite but huge update.

:func:`prepare` returns float64 updates whose values it has checked. The rules that read
every value once anyway (the Krum family's midrange, the median's sort) use
:func:`prepare_unchecked` instead: float32 updates stay float32 (each rule converts one
column block at a time, so no ``(n, d)`` float64 copy is made), and the rule passes each
block's column extremes to :func:`check_extremes`, which raises the same PayloadError as
:func:`as_updates`. A bad value is still reported before any other error (see
:func:`bad_values_first`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError, FedshieldError, PayloadError

__all__ = [
    "MAX_ABS_VALUE",
    "as_matrix",
    "as_updates",
    "as_vector",
    "as_weights",
    "bad_values_first",
    "check_byzantine",
    "check_extremes",
    "need",
    "nonneg_float",
    "positive_float",
    "positive_int",
    "prepare",
    "prepare_unchecked",
    "uniform_only",
    "values_error",
]

MAX_ABS_VALUE = 2.0**128
"""The largest magnitude accepted in an update (just above float32's largest value).

Squares of such values sum to at most ``2**256 * d``, far below float64's ``2**1024``.
"""

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating[Any]]
"""Updates as :func:`prepare_unchecked` returns them: float32 or float64."""


def _first_bad_row(x: Floats) -> tuple[int, str]:
    """Return the index of the first offending row of ``x`` and what is wrong with it.

    Only called on the error path, so the (n,)-sized temporaries do not matter.
    """
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        return int(np.argmin(finite)), "a NaN or infinite value"
    # In float64: 2**128 overflows float32 (and no finite float32 value exceeds it).
    big = (np.abs(x, dtype=np.float64) > MAX_ABS_VALUE).any(axis=1)
    row = int(np.argmax(big))
    return row, f"a value of magnitude {float(np.abs(x[row]).max()):.3g} > 2**128"


def _values_error(x: Floats, name: str) -> PayloadError | None:
    """Return the PayloadError for the first value of ``x`` that is not finite or > 2**128.

    ``min`` and ``max`` propagate NaN, and two reductions need no (n, d) temporary.
    """
    lo = float(x.min())
    hi = float(x.max())
    if math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= MAX_ABS_VALUE:
        return None
    if x.ndim == 1:
        return PayloadError(f"{name} must be finite with |values| <= 2**128")
    row, problem = _first_bad_row(x)
    return PayloadError(f"{name} row {row} has {problem}")


def _check_values(x: Floats, name: str) -> None:
    """Raise PayloadError unless every value of ``x`` is finite and at most 2**128."""
    error = _values_error(x, name)
    if error is not None:
        raise error


def _as_real_array(value: npt.ArrayLike, name: str) -> npt.NDArray[Any]:
    """Return ``value`` as an array, refusing non-numeric, boolean and complex input."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise PayloadError(f"{name} is not a rectangular numeric array: {exc}") from exc
    if raw.dtype == np.bool_ or raw.dtype.kind not in "iuf":
        raise PayloadError(f"{name} must hold real numbers, got dtype {raw.dtype}")
    return raw


def _as_float_array(value: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """Convert ``value`` to float64, refusing non-numeric, boolean and complex input."""
    return np.asarray(_as_real_array(value, name), dtype=np.float64)


def _check_shape(x: Floats) -> None:
    if x.ndim != 2:
        raise PayloadError(f"updates must be a 2-D (n, d) array, got ndim={x.ndim}")
    n, d = x.shape
    if n < 1 or d < 1:
        raise PayloadError(f"updates must have n >= 1 rows and d >= 1 columns, got {x.shape}")


def as_updates(updates: npt.ArrayLike) -> Matrix:
    """Return ``updates`` as a float64 ``(n, d)`` matrix, n >= 1, d >= 1, finite.

    A float64 array is used as is (no copy); anything else is converted once.

    Raises
    ------
    PayloadError
        If the input is not a non-empty 2-D real array of finite values <= 2**128.
    """
    x = _as_float_array(updates, "updates")
    _check_shape(x)
    _check_values(x, "updates")
    return x


def check_extremes(lo: Floats, hi: Floats, x: Floats) -> None:
    """Raise the PayloadError of :func:`as_updates` unless ``lo`` and ``hi`` are in range.

    ``lo`` and ``hi`` are the minima and maxima of some columns of the updates ``x``, as
    ``np.min`` / ``np.max`` (which propagate NaN) or the ends of a sort (which puts NaN
    last) give them. If they are finite and at most 2**128 in magnitude, so is every
    value of those columns; a rule that reduces every column anyway checks its input
    this way without another pass over it. On failure the message names the first bad
    row of the whole of ``x``, as :func:`as_updates` does.
    """
    top = float(np.maximum(hi.max(), -lo.min()))
    if not top <= MAX_ABS_VALUE:  # also False for NaN
        raise values_error(x)


def values_error(x: Floats) -> PayloadError:
    """Return the PayloadError of :func:`as_updates` for updates known to hold a bad value.

    It names the first bad row of ``x``, as :func:`as_updates` does.
    """
    error = _values_error(x, "updates")
    return error if error is not None else PayloadError("updates must be finite")


def as_vector(value: Any, d: int, name: str) -> Vector:
    """Return ``value`` as a finite float64 vector of shape ``(d,)``.

    Raises
    ------
    PayloadError
        If the shape is not ``(d,)`` or a value is not finite or exceeds 2**128.
    """
    v = _as_float_array(value, name)
    if v.shape != (d,):
        raise PayloadError(f"{name} must have shape ({d},), got {v.shape}")
    _check_values(v, name)
    return v


def as_matrix(value: Any, shape: tuple[int, int], name: str) -> Matrix:
    """Return ``value`` as a finite float64 matrix of the given shape.

    Raises
    ------
    PayloadError
        If the shape differs or a value is not finite or exceeds 2**128.
    """
    m = _as_float_array(value, name)
    if m.shape != shape:
        raise PayloadError(f"{name} must have shape {shape}, got {m.shape}")
    _check_values(m, name)
    return m


def as_weights(weights: npt.ArrayLike | None, n: int) -> Vector | None:
    """Return ``weights`` normalised to sum to 1, or None for uniform weights.

    Raises
    ------
    PayloadError
        If the weights are not ``n`` finite non-negative numbers with a positive sum.
    """
    if weights is None:
        return None
    w = _as_float_array(weights, "weights")
    if w.shape != (n,):
        raise PayloadError(f"weights must have shape ({n},) like the updates, got {w.shape}")
    if not np.isfinite(w).all():
        raise PayloadError("weights must be finite")
    if (w < 0).any():
        raise PayloadError(f"weights must be >= 0, got {float(w.min())!r}")
    with np.errstate(over="ignore"):
        total = float(w.sum())
    if not (0.0 < total < math.inf):
        raise PayloadError(f"weights must have a finite positive sum, got {total!r}")
    normalised: Vector = w / total
    return normalised


def uniform_only(weights: Vector | None, rule: str) -> None:
    """Refuse non-uniform weights for a rule that cannot honour them.

    Raises
    ------
    ConfigError
        If ``weights`` (already validated) are not all equal.
    """
    if weights is not None and float(weights.max()) != float(weights.min()):
        raise ConfigError(
            f"{rule} cannot honour weights: pass weights=None (or all-equal weights)",
            hint="Weighted rules: mean, multi_krum, geometric_median, centered_clipping, "
            "norm_bounding.",
        )


def check_byzantine(num_byzantine: Any) -> int:
    """Return ``num_byzantine`` as an int >= 0.

    Raises
    ------
    ConfigError
        If it is not a non-negative integer (booleans are refused).
    """
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, numbers.Integral):
        raise ConfigError(f"num_byzantine must be an integer >= 0, got {num_byzantine!r}")
    f = int(num_byzantine)
    if f < 0:
        raise ConfigError(f"num_byzantine must be >= 0, got {f}")
    return f


def need(ok: bool, rule: str, condition: str, n: int, f: int, why: str) -> None:
    """Raise ConfigError naming the rule's assumption if ``ok`` is False.

    ``condition`` is the requirement as a formula of n and f (``"n >= 2f + 3"``); the
    message gives the numbers that violate it and ``why`` the assumption behind it.
    """
    if not ok:
        raise ConfigError(
            f"{rule} requires {condition}, got n={n}, num_byzantine={f}: {why}",
            hint="Lower num_byzantine, add participants, or choose another rule.",
        )


def positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float > 0, else raise ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0.0 < float(value) < math.inf)
    ):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonneg_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float >= 0, else raise ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0.0 <= float(value) < math.inf)
    ):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int >= 1, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def prepare(
    updates: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    num_byzantine: Any,
    requirement: Callable[[int, int], None],
) -> tuple[Matrix, Vector | None, int]:
    """Validate a rule's common arguments in order: updates, f, the assumption, weights.

    Returns the float64 updates, the normalised weights (None for uniform) and f.
    """
    x = as_updates(updates)
    f = check_byzantine(num_byzantine)
    requirement(x.shape[0], f)
    return x, as_weights(weights, x.shape[0]), f


@contextlib.contextmanager
def bad_values_first(x: Floats) -> Iterator[None]:
    """Report a bad value of the unchecked updates ``x`` before an error of the block.

    :func:`prepare` checks the update values before anything else; a rule that defers
    that check to its own pass wraps its other checks in this, so that updates that are
    both malformed and misconfigured still raise the updates' PayloadError. The values
    are read only when the block raises.
    """
    try:
        yield
    except FedshieldError:
        error = _values_error(x, "updates")
        if error is not None:
            raise error from None
        raise


def prepare_unchecked(
    updates: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    num_byzantine: Any,
    requirement: Callable[[int, int], None],
) -> tuple[Floats, Vector | None, int]:
    """Like :func:`prepare`, but keep float32 updates and leave their values unchecked.

    Returns the updates (float32 if they are float32, else float64 as in
    :func:`prepare`; shape checked, values not), the normalised weights and f. The caller
    must pass every column's extremes to :func:`check_extremes` before it uses a
    result, and wrap any further argument checks in :func:`bad_values_first`.
    """
    raw = _as_real_array(updates, "updates")
    x: Floats = raw if raw.dtype == np.float32 else np.asarray(raw, dtype=np.float64)
    _check_shape(x)
    with bad_values_first(x):
        f = check_byzantine(num_byzantine)
        requirement(x.shape[0], f)
        w = as_weights(weights, x.shape[0])
    return x, w, f
