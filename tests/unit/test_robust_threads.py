"""The column blocks of the Krum family run on one thread or two with the same bits.

``fedshield.robust._distances`` deals the column blocks to fixed lanes; the lanes run on
up to two threads with BLAS held to one thread meanwhile. These tests pin down that the
thread count changes nothing but the time: the same bits on one thread (BLAS on its own
threads) and on two; the BLAS thread count is restored after a call, a failed one and
concurrent ones; a bad value found by the helper thread raises the usual PayloadError.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedshield import robust
from fedshield.errors import PayloadError
from fedshield.robust import _distances

Array = npt.NDArray[Any]


def blas_threads() -> list[int]:
    return [int(lib["num_threads"]) for lib in _distances._blas().info()]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Many blocks for small inputs, and BLAS on two threads so that two can run."""
    monkeypatch.setattr(_distances, "_BLOCK_ELEMENTS", 1 << 13)
    if not blas_threads():
        pytest.skip("no BLAS that threadpoolctl can control")
    with _distances._blas().limit(limits=2):
        yield


def on_threads(monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    monkeypatch.setattr(_distances, "_cpus", lambda: cpus)


def same_bits(a: Array, b: Array) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def updates(n: int, d: int, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) + 10.0).astype(np.float32)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("n", [5, 40])  # 40 rows: BLAS splits the Gram product itself
def test_one_thread_and_two_give_the_same_bits(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    x = updates(n, 3001)
    f = (n - 3) // 4
    rows = np.random.default_rng(1).permutation(n)[: n - f]
    coefficients = np.random.default_rng(2).random(n - f)
    outputs: dict[int, list[Array]] = {}
    for cpus in (1, 2):
        on_threads(monkeypatch, cpus)
        blocks = -(-x.shape[1] // _distances._step(n))
        assert _distances._workers(blocks) == cpus
        outputs[cpus] = [
            _distances.pairwise_sq_distances(x),
            _distances.pairwise_sq_distances(x.astype(np.float64)),
            _distances.weighted_sum(x, rows, coefficients),
            *(robust.aggregate(rule, x, num_byzantine=f) for rule in ("krum", "multi_krum")),
            robust.aggregate("bulyan", x, num_byzantine=f),
        ]
    for one, two in zip(outputs[1], outputs[2], strict=True):
        assert same_bits(one, two)


@pytest.mark.usefixtures("small_blocks")
def test_blas_threads_are_restored_after_a_call_and_after_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_threads(monkeypatch, 2)
    x = updates(9, 4000)
    robust.aggregate("krum", x, num_byzantine=1)
    assert blas_threads() and all(t == 2 for t in blas_threads())
    step = _distances._step(9)
    x[4, step + 3] = np.nan  # in the second block: lane 1, the helper thread
    with pytest.raises(PayloadError, match="^updates row 4 has a NaN or infinite value$"):
        robust.aggregate("multi_krum", x, num_byzantine=1)
    assert all(t == 2 for t in blas_threads())


@pytest.mark.usefixtures("small_blocks")
def test_concurrent_calls_agree_and_restore_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    on_threads(monkeypatch, 2)
    inputs = [updates(11, 5000, seed) for seed in range(4)]
    expected = [robust.aggregate("multi_krum", x, num_byzantine=2) for x in inputs]
    got: list[Array | None] = [None] * len(inputs)

    def call(i: int) -> None:
        got[i] = robust.aggregate("multi_krum", inputs[i], num_byzantine=2)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    for want, out in zip(expected, got, strict=True):
        assert out is not None and same_bits(want, out)
    assert all(t == 2 for t in blas_threads())


def test_one_block_runs_on_the_calling_thread_without_touching_blas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("BLAS was limited for a single block")

    monkeypatch.setattr(_distances, "_blas", refuse)
    x = updates(7, 100)
    robust.aggregate("krum", x, num_byzantine=2)
    robust.aggregate("multi_krum", x, num_byzantine=2)


CHILD = """
import sys
import numpy as np
from fedshield import robust
from fedshield.robust import _distances

_distances._BLOCK_ELEMENTS = 1 << 13
x = np.load(sys.argv[1])
blocks = -(-x.shape[1] // _distances._step(x.shape[0]))
assert blocks > 1, blocks
threads = [int(lib["num_threads"]) for lib in _distances._blas().info()]
print(_distances._workers(blocks), threads)
np.save(sys.argv[2], np.concatenate([
    robust.aggregate("krum", x, num_byzantine=2),
    robust.aggregate("multi_krum", x, num_byzantine=2),
    _distances.pairwise_sq_distances(x).ravel(),
]))
"""


@pytest.mark.slow
@pytest.mark.usefixtures("small_blocks")
def test_a_process_with_single_threaded_blas_runs_one_lane_with_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OMP_NUM_THREADS=1`` (as the launcher starts its children): BLAS on one thread,
    so the lanes run on the calling thread only, and the outputs keep the bits of two
    lanes on two threads here."""
    x = updates(11, 6000, seed=9)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["1", "[1]"]
    got = np.load(tmp_path / "out.npy")
    on_threads(monkeypatch, 2)
    assert _distances._workers(-(-x.shape[1] // _distances._step(11))) == 2
    expected = np.concatenate(
        [
            robust.aggregate("krum", x, num_byzantine=2),
            robust.aggregate("multi_krum", x, num_byzantine=2),
            _distances.pairwise_sq_distances(x).ravel(),
        ]
    )
    assert same_bits(got, expected)
