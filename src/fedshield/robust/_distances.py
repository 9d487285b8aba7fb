"""Distances, Krum scores and a permutation-invariant ranking, shared by the rules.

Pairwise squared distances come from one Gram matrix, ``‖a‖² + ‖b‖² − 2 a·b`` clamped
at 0, in float64, never from a Python loop over the n² pairs. Two details make that
safe:

* the rows are centred on one of them, the lexicographically smallest (compared by
  value, so the same row whatever the order of the input) before the Gram product.
  Distances do not change, but the rounding error of the Gram formula is
  ``~ eps * (‖a‖² + ‖b‖²)``, so centring bounds it by ``eps`` times (four times) the
  sum of the squared coordinate ranges instead of the largest squared *norm*: updates
  that share a large common offset (a model far from the origin) keep accurate
  distances. Unlike the mean, the centre does not depend on the order of the rows, not
  even in its last bit. Centring on a row costs nothing extra: a float32 block is
  converted to float64 by the subtraction itself (one pass), where a centre computed
  from the data (the midrange fedshield used before) needs its own pass over every
  block first. The centred product is accumulated over column blocks so the (n, d)
  input is never copied whole;
* the matrix is made exactly symmetric with an exact zero diagonal, so two points that
  are each other's nearest neighbour get bit-identical Krum scores, and exact ties are
  then broken by :func:`rank` on the updates' values, not on their position in the
  input. Rules that select are therefore invariant under a permutation of the rows.

The updates may be float32: :func:`pairwise_sq_distances` and :func:`weighted_sum`
convert one column block at a time to float64, so they return exactly what they return
for ``x.astype(np.float64)`` without that ``(n, d)`` copy. The values are checked on
the way: a NaN or infinity anywhere makes the Gram diagonal (each centred row's sum of
squares) NaN or infinite, and float32 cannot exceed 2**128; float64 updates, which can,
have their column extremes checked block by block
(:func:`~fedshield.robust._checks.check_extremes`).

Threads. The column blocks are dealt to :data:`_LANES` fixed lanes (block ``i`` to lane
``i % _LANES``). A lane of :func:`pairwise_sq_distances` accumulates its blocks' Gram
products in block order into its own matrix, and the lanes' matrices are added in lane
order; a lane of :func:`weighted_sum` writes its own columns of the result. The result
therefore depends on ``n``, ``d`` and the block size, never on how many threads ran the
lanes (nor on BLAS's own thread count: OpenBLAS splits a product between its threads by
output columns, which leaves every sum as it is; ``tests/unit/test_robust_threads.py``
compares one thread with two). With more than one block, the lanes run on up to
``_LANES`` threads (the calling thread and helpers it joins before returning), bounded
by the CPUs the process may use and by the BLAS thread count, so a process whose BLAS is
held to one thread (``OMP_NUM_THREADS=1``, as the launcher starts its children) stays on
one thread. numpy releases the GIL in its loops and in BLAS. While the lanes of the Gram
product run on several threads, BLAS is held to one thread (threadpoolctl, as
scikit-learn's KMeans does around its own parallel loops) and restored on exit: the
lanes then use the cores BLAS would have used, instead of competing with BLAS's own
threads, which busy-wait between calls and make every blocked product slower when a
third thread shares two cores. Other threads of the process see BLAS on one thread for
that time; a module lock keeps two such calls from interleaving the save and the
restore.

Distances from every row to one point (Weiszfeld, centered clipping) are computed
directly from differences, block by block, because they feed a division.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from fedshield.robust._checks import Floats, check_extremes, values_error

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

# Elements per column block of the Gram product: a 2 MiB float64 buffer per thread, in
# the shared L3 cache with the float32 block it is converted from, whatever n is.
_BLOCK_ELEMENTS = 1 << 18
# The fixed partition of the column blocks; at most this many threads.
_LANES = 2
# Held while BLAS is limited to one thread: the save and the restore of concurrent
# calls must not interleave.
_BLAS_LIMIT_LOCK = threading.Lock()


def _step(n: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(n, 1))


@functools.cache
def _blas() -> Any:
    """Return the BLAS libraries loaded in the process (numpy's among them), via threadpoolctl."""
    return ThreadpoolController().select(user_api="blas")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _workers(blocks: int) -> int:
    """How many threads run the lanes of a pass over ``blocks`` column blocks."""
    if blocks < 2:
        return 1
    blas_threads = [int(lib["num_threads"]) for lib in _blas().info()]
    if not blas_threads:  # a BLAS threadpoolctl cannot hold to one thread
        return 1
    return max(1, min(_LANES, blocks, _cpus(), max(blas_threads)))


Lane = Callable[[int, threading.Event], None]


def _run_lanes(lane: Lane, blocks: int, *, blas: bool) -> None:
    """Run ``lane(k, stop)`` for every lane ``k``, on up to ``_LANES`` threads.

    Thread ``w`` runs lanes ``w``, ``w + workers``, ... in that order; the caller is
    thread 0. A lane should return early once ``stop`` is set (another lane failed).
    The first failure in lane order is raised after every thread has ended. ``blas``:
    the lanes call BLAS, which is then held to one thread while they run.
    """
    workers = _workers(blocks)
    stop = threading.Event()
    errors: list[BaseException | None] = [None] * _LANES

    def run(first: int) -> None:
        for k in range(first, _LANES, workers):
            try:
                lane(k, stop)
            except BaseException as exc:  # re-raised by the caller below
                errors[k] = exc
                stop.set()
                return

    if workers == 1:
        run(0)
    else:
        with contextlib.ExitStack() as held:
            if blas:
                held.enter_context(_BLAS_LIMIT_LOCK)
                held.enter_context(_blas().limit(limits=1))
            helpers = [threading.Thread(target=run, args=(w,)) for w in range(1, workers)]
            for helper in helpers:
                helper.start()
            try:
                run(0)
            finally:
                for helper in helpers:
                    helper.join()
    for error in errors:
        if error is not None:
            raise error


def pairwise_sq_distances(x: Floats) -> Matrix:
    """Return the (n, n) matrix of squared L2 distances between the rows of ``x``.

    Computed from the Gram matrix of the rows centred on the lexicographically smallest
    row, in float64: one BLAS product per column block of ``2**18 // n`` columns (a
    single product when ``n * d <= 2**18``), accumulated per lane and the lanes then
    added (see the module docstring), clamped at 0, exactly symmetric, with a zero
    diagonal. A float32 ``x`` is converted block by block by the centring subtraction,
    which gives the same float64 values as converting it whole first.

    Raises
    ------
    PayloadError
        If a value of ``x`` is NaN, infinite or > 2**128 in magnitude (module
        docstring: from the Gram diagonal, and for float64 from each block's extremes).
    """
    n, d = x.shape
    step = _step(n)
    starts = range(0, d, step)
    grams = [np.zeros((n, n)) for _ in range(_LANES)]
    width = min(step, d)
    centre_row = x[_smallest_row(x)]
    wide = x.dtype == np.float64  # can hold values above 2**128: checked per block

    def lane(k: int, stop: threading.Event) -> None:
        buffer = np.empty(n * width)
        hi = np.empty(width, dtype=x.dtype)
        lo = np.empty(width, dtype=x.dtype)
        product = np.empty((n, n))
        for start in starts[k::_LANES]:
            if stop.is_set():
                return
            part = x[:, start : start + step]
            cols = part.shape[1]
            if wide:
                np.max(part, axis=0, out=hi[:cols])
                np.min(part, axis=0, out=lo[:cols])
                check_extremes(lo[:cols], hi[:cols], x)
            block = buffer[: part.size].reshape(part.shape)
            # float32 in, float64 out: converted and centred in one pass, exactly as
            # converting first and subtracting in float64 would.
            np.subtract(part, centre_row[start : start + step], out=block, dtype=np.float64)
            np.matmul(block, block.T, out=product)
            grams[k] += product

    _run_lanes(lane, len(starts), blas=True)
    gram = grams[0]
    for other in grams[1:]:
        gram += other
    sq = np.diagonal(gram)
    if not np.isfinite(sq).all():  # a NaN or infinity somewhere in its row
        raise values_error(x)
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


def weighted_sum(x: Floats, rows: Sequence[int] | Index, coefficients: Vector) -> Vector:
    """Return ``sum_j coefficients[j] * x[rows[j]]`` in float64, shape (d,).

    The rows are added in the order given, each column on its own: with ``s`` the
    float64 sum ``x[rows[0]] + x[rows[1]] + ...`` from left to right, the result is
    ``c * s`` if every coefficient equals ``c``, and otherwise the left-to-right sum of
    ``coefficients[j] * x[rows[j]]``. Only the given rows are read, once, in column
    blocks of ``2**16`` columns dealt to the lanes (module docstring); a float32 row is
    converted to float64 as it is added, so the result is that of the float64 copy bit
    for bit, whatever the layout of ``x`` and however many threads ran.
    """
    d = x.shape[1]
    order = [int(row) for row in rows]
    weights = [np.float64(c) for c in coefficients]  # float64 scalars: float64 products
    uniform = min(weights) == max(weights)
    step = max(1, _BLOCK_ELEMENTS // 4)
    starts = range(0, d, step)
    result = np.empty(d)

    def lane(k: int, stop: threading.Event) -> None:
        term = np.empty(min(step, d))
        for start in starts[k::_LANES]:
            if stop.is_set():
                return
            acc = result[start : start + step]
            if uniform:
                acc[...] = x[order[0], start : start + step]
                for row in order[1:]:
                    np.add(acc, x[row, start : start + step], out=acc)
                acc *= weights[0]
            else:
                np.multiply(x[order[0], start : start + step], weights[0], out=acc)
                for row, weight in zip(order[1:], weights[1:], strict=True):
                    np.multiply(x[row, start : start + step], weight, out=term[: acc.size])
                    acc += term[: acc.size]

    _run_lanes(lane, len(starts), blas=False)
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


# Values compared at a time by _lex_compare: rows usually differ in their first values.
_LEX_BLOCK = 1024


def _lex_compare(a: Floats, b: Floats) -> int:
    """Compare two rows lexicographically by value: -1, 0 or 1."""
    for start in range(0, a.shape[0], _LEX_BLOCK):
        differ = np.flatnonzero(a[start : start + _LEX_BLOCK] != b[start : start + _LEX_BLOCK])
        if differ.size:
            first = start + int(differ[0])
            return -1 if a[first] < b[first] else 1
    return 0


def _smallest_row(x: Floats) -> int:
    """Return the index of the lexicographically smallest row (the first of equal ones).

    Chosen by value: permuting the rows moves the index but not the row's values.
    """
    best = 0
    for i in range(1, x.shape[0]):
        if _lex_compare(x[i], x[best]) < 0:
            best = i
    return best


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
