"""Throughput of the secure aggregation mask PRG against raw AES-256-CTR.

For ``d`` in {1e5, 1e6} ring elements and ``ring_bits`` in {32, 64} it times

* ``raw``: one ``encryptor.update_into(zeros, out)`` of ``d * ring_bits / 8`` bytes into
  a preallocated buffer (the keystream alone: the floor for any AES-CTR PRG);
* ``expand``: :func:`fedshield.secagg.prg.expand`, which also allocates the result and
  views it as ``uint32`` / ``uint64``.

Each time is the best of ``--repeats`` runs (a fresh cipher each run, in both). It prints
one JSON object per line on stdout with ``ratio = expand_s / raw_s`` (goal: <= 1.2) and
both throughputs in MB/s (10**6 bytes). Do not compare seconds across machines or runs;
compare the ratio. Run from the repository root::

    .venv/bin/python benchmarks/secagg_prg.py
    .venv/bin/python benchmarks/secagg_prg.py --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedshield.secagg.prg import expand

GOAL = 1.2


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def case(d: int, ring_bits: int, repeats: int) -> dict[str, object]:
    seed = os.urandom(32)
    nbytes = d * ring_bits // 8
    zeros = bytes(nbytes)
    out = np.empty(nbytes + 15, dtype=np.uint8)

    def raw() -> None:
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(zeros, memoryview(out))  # type: ignore[arg-type]

    def prg() -> None:
        expand(seed, length=d, ring_bits=ring_bits)  # type: ignore[arg-type]

    # Same bytes from both paths, so the comparison is fair.
    raw()
    assert out[:nbytes].tobytes() == expand(seed, length=d, ring_bits=ring_bits).tobytes()  # type: ignore[arg-type]
    raw_s = best_of(repeats, raw)
    expand_s = best_of(repeats, prg)
    ratio = expand_s / raw_s
    return {
        "benchmark": "secagg_prg",
        "d": d,
        "ring_bits": ring_bits,
        "bytes": nbytes,
        "repeats": repeats,
        "raw_keystream_s": raw_s,
        "expand_s": expand_s,
        "raw_mb_per_s": nbytes / raw_s / 1e6,
        "expand_mb_per_s": nbytes / expand_s / 1e6,
        "ratio": ratio,
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--ring-bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    for d in args.d:
        for ring_bits in args.ring_bits:
            print(json.dumps(case(int(d), ring_bits, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
