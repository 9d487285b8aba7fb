"""Distances, Krum scores and a permutation-invariant ranking, shared by the rules.

Pairwise squared distances come from one Gram matrix, ``‖a‖² + ‖b‖² − 2 a·b`` clamped
at 0, in float64, never from a Python loop over the n² pairs. Two details make that
safe:

* the rows are centred on the coordinate-wise midrange ``(min + max) / 2`` before the
  Gram product. Distances do not change, but the rounding error of the Gram formula is
  ``~ eps * (‖a‖² + ‖b‖²)``, so centring bounds it by ``eps`` times the sum of the
  squared coordinate ranges instead of the largest squared *norm*: updates that share a
  large common offset (a model far from the origin) keep accurate distances. Unlike the
  mean, the midrange does not depend on the order of the rows, not even in its last
  bit. The centred product is accumulated over column blocks so the (n, d) input is
  never copied whole;
* the matrix is made exactly symmetric with an exact zero diagonal, so two points that
  are each other's nearest neighbour get bit-identical Krum scores, and exact ties are
  then broken by :func:`rank` on the updates' values, not on their position in the
  input. Rules that select are therefore invariant under a permutation of the rows.

The updates may be float32: :func:`pairwise_sq_distances` and :func:`weighted_sum`
convert one column block at a time to float64, so they return exactly what they return
for ``x.astype(np.float64)`` without that ``(n, d)`` copy, and the column extremes that
give the midrange also check the values (:func:`~fedshield.robust._checks.check_extremes`).

Distances from every row to one point (Weiszfeld, centered clipping) are computed
directly from differences, block by block, because they feed a division.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from fedshield.robust._checks import Floats, check_extremes

__all__ = [
    "distances_to",
    "krum_scores",
    "pairwise_sq_distances",
    "rank",
    "row_norms",
    "weighted_sum",
]

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]

# Elements per column block: 8 MiB of float64 temporaries, whatever n is.
_BLOCK_ELEMENTS = 1 << 20


def _step(n: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(n, 1))


def pairwise_sq_distances(x: Floats) -> Matrix:
    """Return the (n, n) matrix of squared L2 distances between the rows of ``x``.

    Computed from the Gram matrix of the midrange-centred rows in float64 (one BLAS
    product per column block of ``2**20 // n`` columns, a single product when
    ``n * d <= 2**20``), clamped at 0, exactly symmetric, with a zero diagonal. A
    float32 ``x`` is converted block by block as it is centred, which gives the same
    float64 values as converting it whole first.

    Raises
    ------
    PayloadError
        If a value of ``x`` is NaN, infinite or > 2**128 in magnitude (found from each
        block's column extremes, which the midrange needs anyway).
    """
    n, d = x.shape
    gram = np.zeros((n, n))
    step = _step(n)
    buffer = np.empty(n * min(step, d))
    for start in range(0, d, step):
        part = x[:, start : start + step]
        hi = part.max(axis=0)
        lo = part.min(axis=0)
        check_extremes(lo, hi, x)
        mu = (hi.astype(np.float64) + lo) / 2
        block = buffer[: part.size].reshape(part.shape)
        if part.dtype == np.float64:
            np.subtract(part, mu, out=block)
        else:  # the same values; a plain cast then an in-place subtract is faster
            block[...] = part
            block -= mu
        gram += block @ block.T
    sq = np.diagonal(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    upper = np.triu(dist, 1)
    result: Matrix = upper + upper.T
    return result


def distances_to(x: Matrix, point: Vector) -> Vector:
    """Return the L2 distance from each row of ``x`` to ``point``, shape (n,).

    Each row's sum of squares runs over the columns in the same order whatever the row
    order, so permuting the rows permutes the result exactly.
    """
    n, d = x.shape
    acc = np.zeros(n)
    step = _step(n)
    for start in range(0, d, step):
        diff = x[:, start : start + step] - point[start : start + step]
        acc += np.einsum("ij,ij->i", diff, diff)
    result: Vector = np.sqrt(acc)
    return result


def weighted_sum(coefficients: Vector, x: Floats) -> Vector:
    """Return ``coefficients @ x`` in float64, shape (d,), one BLAS product per column block.

    Full blocks are ``step`` columns wide, a multiple of 1024, so no kernel's vector
    loop is cut short inside the matrix: with OpenBLAS 0.3.31 the result equals the
    unblocked product on one thread (on several threads the unblocked ``dgemv`` splits
    the columns at places that depend on ``d``, and its last bits change with the thread
    count). A full block of a C-contiguous float64 ``x`` is used in place; every other
    block (float32, strided, or the narrower last one, which numpy may hand to ``ddot``
    with a stride) is first copied to a contiguous float64 buffer. Each product
    therefore sees the same values and shape whether ``x`` is float32 or its float64
    copy, and gives the same bits.
    """
    n, d = x.shape
    step = max(1024, _step(n) // 1024 * 1024)
    result = np.empty(d)
    in_place = x.dtype == np.float64 and x.flags.c_contiguous
    buffer = np.empty(n * min(step, d))
    for start in range(0, d, step):
        part = x[:, start : start + step]
        if not (in_place and part.shape[1] == step):
            block = buffer[: part.size].reshape(part.shape)
            block[...] = part
            part = block
        np.matmul(coefficients, part, out=result[start : start + step])
    return result


def row_norms(x: Matrix) -> Vector:
    """Return the L2 norm of each row of ``x`` without an (n, d) temporary."""
    result: Vector = np.sqrt(np.einsum("ij,ij->i", x, x))
    return result


def krum_scores(sq_dist: Matrix, num_byzantine: int) -> Vector:
    """Return each point's Krum score: the sum of its k smallest squared distances.

    ``k = m - f - 2`` for ``m`` points (Blanchard et al. 2017), but at least 1, as
    Flower does, for the small sets that Bulyan's later selection rounds leave; a single
    point scores 0. The neighbours' distances are summed in ascending order, so two
    points with the same multiset of distances get bit-identical scores.
    """
    m = sq_dist.shape[0]
    if m == 1:
        return np.zeros(1)
    k = max(1, m - num_byzantine - 2)
    others = sq_dist.copy()
    np.fill_diagonal(others, np.inf)
    others.sort(axis=1)
    scores: Vector = others[:, :k].sum(axis=1)
    return scores


def _lex_compare(a: Floats, b: Floats) -> int:
    differ = a != b
    first = int(np.argmax(differ))
    if not differ[first]:
        return 0
    return -1 if a[first] < b[first] else 1


def rank(scores: Vector, x: Floats, members: Index) -> Index:
    """Order ``members`` (row indices of ``x``) by ascending score.

    ``scores[i]`` belongs to row ``members[i]``. Exactly equal scores are ordered by the
    lexicographic order of the rows' values, so the ranking does not depend on where a
    row sits in the input (identical rows are interchangeable).
    """
    order = np.argsort(scores, kind="stable")
    ranked: list[int] = []
    start = 0
    m = len(order)
    while start < m:
        stop = start + 1
        while stop < m and scores[order[stop]] == scores[order[start]]:
            stop += 1
        group = [int(members[i]) for i in order[start:stop]]
        if len(group) > 1:

            def by_values(i: int, j: int) -> int:
                return _lex_compare(x[i], x[j])

            group.sort(key=functools.cmp_to_key(by_values))
        ranked.extend(group)
        start = stop
    return np.asarray(ranked, dtype=np.intp)
