"""The masking transforms, as pure functions of values, a key and a random source.

Nothing here reads files, clocks or a global RNG: the pseudonym key and the random
source are parameters, so tests are deterministic and the caller decides where the key
lives and which generator is used (:func:`fedshield.secagg.system_random` in production).

* :func:`pseudonymize` -- ``HMAC-SHA256(key, label || namespace || value)``, hex,
  truncated. The same value gives the same pseudonym under the same key (records link
  within the site); another site's key gives unrelated pseudonyms. Whoever holds the key
  can test a guessed value, so the key never leaves the site. Empty cells stay empty.
* :func:`bucket_numbers` -- replace a number by the lower edge of its bucket (given
  edges, values outside clamped: top- and bottom-coding) or of its ``width``-wide bin.
  Idempotent and monotone.
* :func:`truncate_dates` -- ISO dates to ``YYYY`` or ``YYYY-MM``. Idempotent.
* :func:`truncate_zips` -- keep the first ``digits`` characters of a zip or postcode.
* :func:`perturb` -- add noise with ``|noise| <= bound``, always: uniform on
  ``[-bound, bound]`` or Laplace(``scale``) clipped to it. Bounded noise is *not*
  differential privacy; it blurs exact values against casual re-identification.

Errors name the row (1-based, of the values given) but never echo a value: the values
are what the site is protecting.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedshield.errors import ConfigError
from fedshield.secagg.randomness import SecureRandom

__all__ = [
    "KEY_BYTES",
    "bucket_numbers",
    "perturb",
    "pseudonymize",
    "truncate_dates",
    "truncate_zips",
]

KEY_BYTES = 32
"""Length of a site's pseudonym key (HMAC-SHA256 key of 256 bits)."""

_LABEL = b"fedshield/masking/v1/pseudonym\x00"
_TO_UNIT = 2.0**-53
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ].*)?)?)?$")


def pseudonymize(
    values: Sequence[str], *, key: bytes, length: int = 32, namespace: str = "default"
) -> list[str]:
    """Return the keyed pseudonym of each value (surrounding whitespace ignored).

    Parameters
    ----------
    values : sequence of str
        The cells; an empty (or blank) cell stays ``""``.
    key : bytes
        The site's secret key, :data:`KEY_BYTES` long.
    length : int, default 32
        Hex characters kept, in ``[16, 64]`` (32 = 128 bits).
    namespace : str, default "default"
        Separates pseudonym spaces: the same value in two namespaces gives unrelated
        pseudonyms. Columns that are joined must share one.

    Returns
    -------
    list of str
        Lowercase hex pseudonyms.

    Raises
    ------
    ConfigError
        If the key or the length is invalid.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(f"the pseudonym key must be {KEY_BYTES} bytes")
    if isinstance(length, bool) or not 16 <= length <= 64:
        raise ConfigError(f"pseudonym length must be in [16, 64], got {length!r}")
    prefix = _LABEL + namespace.encode("utf-8") + b"\x00"
    out: list[str] = []
    for value in values:
        cell = value.strip()
        if not cell:
            out.append("")
            continue
        mac = hmac.new(key, prefix + cell.encode("utf-8"), hashlib.sha256)
        out.append(mac.hexdigest()[:length])
    return out


def _floats(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ConfigError(f"row {int(bad[0]) + 1}: not a finite number")
    return array


def bucket_numbers(
    values: npt.ArrayLike,
    *,
    edges: Sequence[float] | None = None,
    width: float | None = None,
    origin: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Replace each number by the lower edge of its bucket.

    With ``edges`` ``e_0 < ... < e_k`` the buckets are ``[e_i, e_(i+1))``; a value below
    ``e_0`` becomes ``e_0`` and one at or above ``e_k`` becomes ``e_k`` (top-coding).
    With ``width`` the buckets are ``[origin + j*width, origin + (j+1)*width)``.

    The map is idempotent (a bucket edge maps to itself) and monotone (``a <= b``
    implies ``f(a) <= f(b)``).

    Raises
    ------
    ConfigError
        If a value is not finite, or not exactly one of ``edges`` / ``width`` is given.
    """
    x = _floats(values)
    if (edges is None) == (width is None):
        raise ConfigError("bucket_numbers needs exactly one of edges or width")
    if edges is not None:
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
            raise ConfigError("edges must be at least 2 strictly increasing numbers")
        index = np.searchsorted(e, x, side="right") - 1
        return np.asarray(e[np.clip(index, 0, e.size - 1)], dtype=np.float64)
    assert width is not None
    if not width > 0 or not np.isfinite(width):
        raise ConfigError(f"width must be > 0, got {width}")
    j = np.floor((x - origin) / width)
    # Floating-point division can land one bin off; settle so that low <= x < high.
    low = origin + j * width
    j = np.where(low > x, j - 1, j)
    j = np.where(origin + (j + 1) * width <= x, j + 1, j)
    return np.asarray(origin + j * width, dtype=np.float64)


def truncate_dates(values: Sequence[str], *, to: Literal["year", "month"]) -> list[str]:
    """Truncate ISO dates (``YYYY-MM-DD``, also ``YYYY-MM`` or ``YYYY``) to year or month.

    Empty cells stay empty. Idempotent: a truncated value truncates to itself.

    Raises
    ------
    ConfigError
        If a cell is not an ISO date, or ``to = "month"`` meets a bare year.
    """
    if to not in ("year", "month"):
        raise ConfigError(f'to must be "year" or "month", got {to!r}')
    out: list[str] = []
    for row, value in enumerate(values, start=1):
        cell = value.strip()
        if not cell:
            out.append("")
            continue
        match = _DATE.match(cell)
        if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 12):
            raise ConfigError(f"row {row}: not an ISO date (YYYY-MM-DD)")
        if to == "year":
            out.append(match.group(1))
        elif match.group(2) is None:
            raise ConfigError(f"row {row}: a bare year cannot be truncated to a month")
        else:
            out.append(f"{match.group(1)}-{match.group(2)}")
    return out


def truncate_zips(values: Sequence[str], *, digits: int) -> list[str]:
    """Keep the first ``digits`` letters or digits of each zip or postcode (upper-cased).

    Spaces and dashes are ignored (``"02139-4307"`` -> ``"021"`` with 3). Empty cells
    stay empty. Idempotent.

    Raises
    ------
    ConfigError
        If a cell has fewer than ``digits`` letters or digits.
    """
    if isinstance(digits, bool) or not 1 <= digits <= 9:
        raise ConfigError(f"digits must be in [1, 9], got {digits!r}")
    out: list[str] = []
    for row, value in enumerate(values, start=1):
        chars = "".join(c for c in value.upper() if c.isascii() and c.isalnum())
        if not value.strip():
            out.append("")
            continue
        if len(chars) < digits:
            raise ConfigError(f"row {row}: a zip code shorter than {digits} characters")
        out.append(chars[:digits])
    return out


def _unit(rng: SecureRandom, size: int) -> npt.NDArray[np.float64]:
    """``size`` floats uniform on ``(0, 1]`` (53 bits) from ``rng``."""
    bits = rng.uniform_u64(size)
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * _TO_UNIT


def perturb(
    values: npt.ArrayLike,
    *,
    noise: Literal["uniform", "laplace"],
    bound: float,
    rng: SecureRandom,
    scale: float | None = None,
) -> npt.NDArray[np.float64]:
    """Return ``values + noise`` with ``|noise| <= bound`` for every value.

    Parameters
    ----------
    values : array_like
        Finite numbers.
    noise : {"uniform", "laplace"}
        Uniform on ``[-bound, bound]``, or Laplace with scale ``scale`` clipped to
        ``[-bound, bound]`` (inverse-CDF sampling).
    bound : float
        The largest change to a value (> 0).
    rng : SecureRandom
        The random source (:func:`fedshield.secagg.system_random` in production,
        :func:`fedshield.secagg.deterministic_random` in tests).
    scale : float or None
        The Laplace ``b`` (> 0); only with ``noise = "laplace"``.

    Raises
    ------
    ConfigError
        If a value is not finite or a parameter is invalid.
    """
    x = _floats(values)
    if not np.isfinite(bound) or bound <= 0:
        raise ConfigError(f"bound must be > 0, got {bound}")
    u = _unit(rng, int(x.size)).reshape(x.shape)
    if noise == "uniform":
        if scale is not None:
            raise ConfigError('scale is only used with noise = "laplace"')
        draw = bound * (2.0 * u - 1.0)
    elif noise == "laplace":
        if scale is None or not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"laplace noise needs scale > 0, got {scale}")
        sign = np.where(_unit(rng, int(x.size)).reshape(x.shape) <= 0.5, -1.0, 1.0)
        draw = sign * scale * -np.log(u)  # |draw| ~ Exponential(scale)
    else:
        raise ConfigError(f'noise must be "uniform" or "laplace", got {noise!r}')
    return np.asarray(x + np.clip(draw, -bound, bound), dtype=np.float64)
