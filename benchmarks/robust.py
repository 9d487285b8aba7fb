"""fedshield's robust aggregation rules: time per rule, against a Gram product and Flower.

For every ``n`` and rule, the same float32 updates (``d`` values each, like a model's:
``default_rng(0).standard_normal((n, d), dtype=float32) * 0.01``) go to

* **fedshield**: ``fedshield.robust.aggregate(rule, updates, num_byzantine=f, **params)``
  with the float32 matrix, and once more with an already-float64 copy
  (``fedshield_f64_input_s``). The rules compute in float64 and the conversion is part of
  ``fedshield_s``: Krum, Multi-Krum, Bulyan, the median and the trimmed mean convert one
  column block at a time as they read the data (no ``(n, d)`` float64 copy; Multi-Krum
  reads it twice, for the distances and for the average); the other rules convert the
  whole matrix first (``fedshield_float64_conversion`` says which);
* **the physical limit of a distance-based rule**: one Gram product ``X @ X.T`` of the
  float64 ``(n, d)`` matrix (``gram_s``), which numpy hands to BLAS ``dsyrk`` on its
  default threads. Every pairwise distance in float64 needs it; Krum and Multi-Krum
  need little else. The float64 copy is made before timing, so ``gram_s`` leaves out
  the conversion that ``fedshield_s`` includes, and it runs interleaved with each
  rule's own runs, so the ratio compares times taken under the same load;
* **Flower** (``flwr``), where it has the rule, in the same run and interleaved with
  fedshield: the legacy functions of ``flwr.server.strategy.aggregate``
  (``aggregate``, ``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum``,
  ``aggregate_bulyan``) on ``[([row], 1), ...]``, one single-layer model per update; and
  for Krum, Multi-Krum and Bulyan also the vectorized Message-API code of
  ``flwr.serverapp.strategy`` (``select_multikrum`` with its Gram-based
  ``compute_distances``, then ``aggregate_arrayrecords``, or Bulyan's median and
  ``aggregate_n_closest_weights``) on ``RecordDict`` replies. Building Flower's inputs is
  not timed.

``f`` defaults to ``floor((n - 3) / 4)``, the largest ``f`` with ``n >= 4f + 3``, so
every rule (Bulyan's assumption is the strictest) runs with the same ``f``; ``mean``,
which is not robust, runs with ``f = 0``. Each timing is the median over ``--repeats``
runs, except a Flower function whose first run exceeds ``--flower-budget-s``, which runs
once (``flower_repeats``). The garbage collector runs before every timed call. Compare
the ratios of one run, never seconds across runs (fields: ``benchmarks/README.md``).
``blas_threads`` is numpy's BLAS thread count as threadpoolctl reports it, and
``fedshield_threads`` the threads that the Krum family's column blocks ran on (BLAS is
held to one thread meanwhile; ``fedshield.robust._distances``)::

    .venv/bin/python benchmarks/robust.py
    .venv/bin/python benchmarks/robust.py --n 50 --rules krum,multi_krum --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from fedshield import robust
from fedshield.errors import FedshieldError
from fedshield.robust import _checks, _distances

Array = npt.NDArray[Any]

RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "norm_bounding",
    "fltrust",
    "foolsgold",
)
DISTANCE_BASED = frozenset({"krum", "multi_krum", "bulyan", "foolsgold"})
# The rules that keep float32 updates and convert them to float64 block by block.
PER_BLOCK_CONVERSION = frozenset({"krum", "multi_krum", "bulyan", "median", "trimmed_mean"})
GRAM_GOAL = 1.5  # Krum and Multi-Krum: fedshield_s <= 1.5 gram_s
FLOWER_KRUM_GOAL = 4.0  # Krum and Multi-Krum: >= 4x faster than legacy aggregate_krum
F_RULE = (
    "floor((n - 3) / 4): the largest f with n >= 4f + 3 (Bulyan's assumption, the strictest), "
    "for every rule but mean, which is not robust and runs with f = 0"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Seconds to wait before each timed call (--settle-s). After a call that ran on several
# threads, OpenBLAS's worker threads busy-wait for 2**28 TSC cycles (0.11 s at this VM's
# 2.4 GHz) before they sleep; without the pause the next side (fedshield right after the
# Gram product, say) would share the cores with a spinning thread it did not start.
SETTLE_S = [0.3]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    seconds, _, out = timed_with_cpu(fn)
    return seconds, out


def timed_with_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU time of the whole process (every thread) for ``fn()``, and its output.

    Waits ``SETTLE_S`` first and runs the garbage collector, both outside the clock.
    """
    time.sleep(SETTLE_S[0])
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    out = fn()
    end = time.perf_counter()
    return end - start, time.process_time() - cpu, out


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


_BLAS = ThreadpoolController().select(user_api="blas")


def blas_threads() -> list[int]:
    """numpy's BLAS thread count (one entry per BLAS library loaded, as threadpoolctl sees)."""
    libraries = ThreadpoolController().select(user_api="blas").info()
    return [int(lib["num_threads"]) for lib in libraries]


def flat(layers: Any) -> Array:
    return np.concatenate([np.asarray(layer, dtype=np.float64).ravel() for layer in layers])


# --- inputs ----------------------------------------------------------------------------------


def make_updates(n: int, d: int) -> Array:
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    x *= np.float32(0.01)  # in place: the same values as `* 0.01`, without a second copy
    return x


def rule_params(rule: str, x32: Array) -> dict[str, Any]:
    """The rule's required parameters, from the same data (not timed)."""
    if rule == "centered_clipping":
        norms = [float(np.linalg.norm(row.astype(np.float64))) for row in x32]
        return {"tau": statistics.median(norms)}
    if rule == "fltrust":
        # The root update of a clean root dataset points like the honest mean.
        return {"root_update": x32.mean(axis=0, dtype=np.float64).astype(np.float32)}
    if rule == "foolsgold":
        # Each participant's summed past updates, this round's included.
        history = np.random.default_rng(1).standard_normal(x32.shape, dtype=np.float32)
        history *= np.float32(0.01)
        history += x32
        return {"history": history}
    return {}


def describe(params: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, np.ndarray):
            shown[key] = f"{value.dtype} array {list(value.shape)}"
        else:
            shown[key] = value
    return shown


# --- Flower ----------------------------------------------------------------------------------


def flower_legacy(rule: str, n: int, f: int) -> tuple[str, Callable[[Any], Any]] | None:
    """Flower's legacy function for ``rule``, as ``(name, results -> NDArrays)``."""
    from flwr.server.strategy import aggregate as fa

    if rule == "mean":
        return "flwr.server.strategy.aggregate.aggregate (FedAvg)", fa.aggregate
    if rule == "median":
        return "flwr.server.strategy.aggregate.aggregate_median", fa.aggregate_median
    if rule == "trimmed_mean":
        # int(p * n) == f: Flower trims the same f values per side.
        proportion = (f + 0.25) / n
        return (
            f"flwr.server.strategy.aggregate.aggregate_trimmed_avg(proportiontocut={proportion})",
            lambda results: fa.aggregate_trimmed_avg(results, proportion),
        )
    if rule == "krum":
        return (
            "flwr.server.strategy.aggregate.aggregate_krum(to_keep=0) (legacy)",
            lambda results: fa.aggregate_krum(results, f, 0),
        )
    if rule == "multi_krum":
        return (
            f"flwr.server.strategy.aggregate.aggregate_krum(to_keep={n - f}) (legacy)",
            lambda results: fa.aggregate_krum(results, f, n - f),
        )
    if rule == "bulyan":
        # aggregate_bulyan pops from its list: give it a fresh (shallow) one each time.
        return (
            "flwr.server.strategy.aggregate.aggregate_bulyan(aggregate_krum, to_keep=0) (legacy)",
            lambda results: fa.aggregate_bulyan(list(results), f, fa.aggregate_krum, to_keep=0),
        )
    return None


def flower_vectorized(rule: str, n: int, f: int) -> tuple[str, Callable[[Any], Any]] | None:
    """Flower's Message-API aggregation for ``rule``, as ``(name, replies -> NDArrays)``.

    The bodies of ``MultiKrum.aggregate_train`` and ``Bulyan.aggregate_train`` without
    the reply checks and the metric aggregation.
    """
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.multikrum import select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    def multikrum(contents: Any, keep: int) -> Any:
        selected = select_multikrum(contents, f, keep)
        return aggregate_arrayrecords(selected, "num-examples").to_numpy_ndarrays()

    if rule == "krum":
        return (
            "flwr.serverapp.strategy: select_multikrum(1) + aggregate_arrayrecords",
            lambda contents: multikrum(contents, 1),
        )
    if rule == "multi_krum":
        return (
            f"flwr.serverapp.strategy: select_multikrum({n - f}) + aggregate_arrayrecords",
            lambda contents: multikrum(contents, n - f),
        )
    if rule == "bulyan":
        theta = n - 2 * f
        beta = theta - 2 * f

        def bulyan(contents: Any) -> Any:
            selected = select_multikrum(contents, f, theta)
            # Flower passes keep_input=False, which empties the records; they are reused.
            arrays = [c["arrays"].to_numpy_ndarrays() for c in selected]
            median = [np.median(a, axis=0) for a in zip(*arrays, strict=True)]
            return aggregate_n_closest_weights(median, arrays, beta)

        return (
            f"flwr.serverapp.strategy.Bulyan: one-shot select_multikrum({theta}), median, "
            f"aggregate_n_closest_weights({beta}) (not the paper's iterated Krum selection)",
            bulyan,
        )
    return None


def flower_replies(x32: Array) -> list[Any]:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    return [
        RecordDict({"arrays": ArrayRecord([row]), "metrics": MetricRecord({"num-examples": 1})})
        for row in x32
    ]


# --- fedshield sub-steps ---------------------------------------------------------------------


def krum_steps(rule: str, x32: Array, f: int) -> dict[str, float]:
    """One run of a Krum-family rule cut into its steps (fedshield's private helpers).

    ``prepare_unchecked`` checks the shape and the arguments (no conversion, no pass over
    the values); ``pairwise_sq_distances`` is the one pass over the float32 data: per
    column block, the column extremes (the midrange, and the NaN/Inf check), the
    conversion to float64 with the centring, and the Gram product, on the lanes'
    threads, then clamping and symmetrizing. ``extremes`` times that function's
    per-block ``max``/``min`` and check again on their own, on the calling thread only;
    ``scores_rank`` is ``krum_scores`` and ``rank``; ``output`` is the rest (the chosen
    row converted, the blocked mean of the selected rows ``weighted_sum``, or Bulyan's
    coordinate step ``_closest_to_median_mean``). Bulyan has ``select``
    (``bulyan.select``: the distances, which it computes itself, and the iterated Krum
    rounds) instead of ``scores_rank``, so its steps add up as
    ``prepare_unchecked + select + output``.
    """
    from fedshield.robust import bulyan, krum, multi_krum

    def extremes(x: Array) -> None:
        step = _distances._step(x.shape[0])
        for start in range(0, x.shape[1], step):
            part = x[:, start : start + step]
            _checks.check_extremes(part.min(axis=0), part.max(axis=0), x)

    requirement = {"krum": krum, "multi_krum": multi_krum, "bulyan": bulyan}[rule].requirement
    steps: dict[str, float] = {}
    steps["prepare_unchecked"], (x, _, _) = timed(
        lambda: _checks.prepare_unchecked(x32, None, f, requirement)
    )
    steps["extremes"], _ = timed(lambda: extremes(x))
    n = x.shape[0]
    if rule == "bulyan":
        steps["pairwise_sq_distances"], _ = timed(lambda: _distances.pairwise_sq_distances(x))
        steps["select"], chosen = timed(lambda: bulyan.select(x, f))
        chosen = np.sort(chosen)
        steps["output"], _ = timed(
            lambda: bulyan._closest_to_median_mean(
                x[chosen].astype(np.float64, copy=False), len(chosen) - 2 * f
            )
        )
        return steps
    steps["pairwise_sq_distances"], dist = timed(lambda: _distances.pairwise_sq_distances(x))
    members = np.arange(n, dtype=np.intp)
    steps["scores_rank"], order = timed(
        lambda: _distances.rank(_distances.krum_scores(dist, f), x, members)
    )
    if rule == "krum":
        steps["output"], _ = timed(lambda: x[int(order[0])].astype(np.float64))
    else:
        chosen = order[: n - f]

        def mean_of_chosen() -> Array:
            return _distances.weighted_sum(x, chosen, np.full(len(chosen), 1.0 / len(chosen)))

        steps["output"], _ = timed(mean_of_chosen)
    return steps


# --- one case --------------------------------------------------------------------------------


class Side:
    """The runs of one implementation of a rule."""

    def __init__(
        self, label: str, name: str, fn: Callable[[], Any], budget_s: float | None
    ) -> None:
        self.label = label
        self.name = name
        self.fn = fn
        self.budget_s = budget_s
        self.runs: list[float] = []
        self.cpu: list[float] = []
        self.faults: list[int] = []
        self.out: Any = None

    def run(self) -> None:
        if self.budget_s is not None and self.runs and self.runs[0] > self.budget_s:
            return  # too slow to repeat
        before = minor_faults()
        seconds, cpu, out = timed_with_cpu(self.fn)
        self.cpu.append(cpu)
        self.faults.append(minor_faults() - before)
        self.runs.append(seconds)
        self.out = out

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def case(
    rule: str,
    x32: Array,
    x64: Array,
    f: int,
    *,
    to_float64_s: float,
    repeats: int,
    budget_s: float,
    with_steps: bool,
) -> dict[str, Any]:
    n, d = x32.shape
    load_before = os.getloadavg()[0]
    if rule == "mean":
        f = 0  # mean refuses num_byzantine > 0
    params = rule_params(rule, x32)
    ours = Side(
        "fedshield",
        "fedshield.robust.aggregate",
        lambda: robust.aggregate(rule, x32, num_byzantine=f, **params),
        None,
    )
    ours64 = Side(
        "fedshield_f64",
        "fedshield.robust.aggregate",
        lambda: robust.aggregate(rule, x64, num_byzantine=f, **params),
        None,
    )
    gram = Side("gram", "numpy X @ X.T, float64 X", lambda: x64 @ x64.T, None)

    def gram_on_one_thread() -> Array:
        with _BLAS.limit(limits=1):
            product: Array = x64 @ x64.T
        return product

    gram1 = Side(
        "gram_1t", "numpy X @ X.T, float64 X, BLAS on one thread", gram_on_one_thread, None
    )
    sides = [gram, ours, ours64, gram1]

    legacy = flower_legacy(rule, n, f)
    flower: Side | None = None
    if legacy is not None:
        results = [([row], 1) for row in x32]
        legacy_fn = legacy[1]
        flower = Side("flower", legacy[0], lambda: legacy_fn(results), budget_s)
        sides.append(flower)
    vectorized = flower_vectorized(rule, n, f)
    flower_vec: Side | None = None
    if vectorized is not None:
        replies = flower_replies(x32)
        vectorized_fn = vectorized[1]
        flower_vec = Side(
            "flower_vectorized", vectorized[0], lambda: vectorized_fn(replies), budget_s
        )
        sides.append(flower_vec)

    for repeat in range(repeats):
        for side in sides:
            side.run()
        log(
            f"  {rule} n={n} repeat {repeat + 1}/{repeats}: "
            + ", ".join(
                f"{s.label} {s.runs[repeat]:.3f}s" if len(s.runs) > repeat else f"{s.label} skipped"
                for s in sides
            )
        )

    load_after = os.getloadavg()[0]
    fedshield_s = ours.median_s
    gram_s = gram.median_s
    row: dict[str, Any] = {
        "benchmark": "robust",
        "n": n,
        "d": d,
        "rule": rule,
        "f": f,
        "f_rule": F_RULE,
        "params": describe(params),
        "distance_based": rule in DISTANCE_BASED,
        "input_dtype": "float32",
        "fedshield_s": fedshield_s,
        "fedshield_runs_s": ours.runs,
        "fedshield_page_faults": int(statistics.median(ours.faults)),
        "fedshield_includes_float64_conversion": True,
        "fedshield_float64_conversion": (
            "per column block, as the rule reads it"
            if rule in PER_BLOCK_CONVERSION
            else "whole matrix, up front"
        ),
        "fedshield_f64_input_s": ours64.median_s,
        "fedshield_f64_input_runs_s": ours64.runs,
        "to_float64_s": to_float64_s,
        "gram_s": gram_s,
        "gram_runs_s": gram.runs,
        "blas_threads": blas_threads(),
        "fedshield_threads": (
            _distances._workers(-(-d // _distances._step(n)))
            if rule in ("krum", "multi_krum", "bulyan")
            else None
        ),
        "ratio_to_gram": ratio(fedshield_s, gram_s),
        "ratio_to_gram_f64_input": ratio(ours64.median_s, gram_s),
        "gram_1thread_s": gram1.median_s,
        "ratio_to_gram_1thread": ratio(fedshield_s, gram1.median_s),
        "fedshield_cpu_s": ours.median_cpu_s,
        "gram_cpu_s": gram.median_cpu_s,
        "gram_1thread_cpu_s": gram1.median_cpu_s,
        "load_avg_1m": [load_before, load_after],
    }
    if with_steps and rule in ("krum", "multi_krum", "bulyan"):
        row["fedshield_steps_s"] = krum_steps(rule, x32, f)

    flower_s = flower.median_s if flower is not None else None
    row.update(
        {
            "flower_variant": flower.name if flower is not None else None,
            "flower_s": flower_s,
            "flower_runs_s": flower.runs if flower is not None else None,
            "flower_repeats": len(flower.runs) if flower is not None else None,
            "speedup_vs_flower": ratio(flower_s, fedshield_s),
        }
    )
    if flower is not None and len(flower.runs) < repeats:
        row["flower_note"] = (
            f"first run took {flower.runs[0]:.1f} s > --flower-budget-s {budget_s:g}: run once"
        )
    if flower is not None:
        row["max_abs_diff_vs_flower"] = float(np.abs(flat(flower.out) - ours.out).max())

    if flower_vec is not None:
        vec_s = flower_vec.median_s
        row.update(
            {
                "flower_vectorized_variant": flower_vec.name,
                "flower_vectorized_s": vec_s,
                "flower_vectorized_runs_s": flower_vec.runs,
                "speedup_vs_flower_vectorized": ratio(vec_s, fedshield_s),
                "max_abs_diff_vs_flower_vectorized": float(
                    np.abs(flat(flower_vec.out) - ours.out).max()
                ),
            }
        )

    krum_family = rule in ("krum", "multi_krum")
    speedup = row["speedup_vs_flower"]
    row["goal_ratio_to_gram_met"] = row["ratio_to_gram"] <= GRAM_GOAL if krum_family else None
    row["goal_vs_flower_legacy_krum_met"] = (
        speedup >= FLOWER_KRUM_GOAL if krum_family and speedup is not None else None
    )
    row["goal_not_slower_than_flower_met"] = (
        speedup >= 1.0 if rule in ("median", "trimmed_mean") and speedup is not None else None
    )
    row["peak_rss_gib"] = peak_rss_gib()
    return row


def run_n(n: int, d: int, f: int, rules: list[str], args: argparse.Namespace) -> bool:
    """Print the rows of every rule for one ``n``; return True if one failed."""
    log(f"n={n} d={d} f={f}: generating updates")
    x32 = make_updates(n, d)
    conversions = []
    x64 = x32
    for _ in range(args.repeats):
        seconds, x64 = timed(lambda: x32.astype(np.float64))
        conversions.append(seconds)
    to_float64_s = statistics.median(conversions)
    log(f"n={n}: to_float64 {to_float64_s:.3f}s")
    failed = False
    for rule in rules:
        try:
            row = case(
                rule,
                x32,
                x64,
                f,
                to_float64_s=to_float64_s,
                repeats=args.repeats,
                budget_s=args.flower_budget_s,
                with_steps=not args.no_steps,
            )
        except FedshieldError as exc:
            failed = True
            row = {"benchmark": "robust", "n": n, "d": d, "rule": rule, "f": f, "error": str(exc)}
        print(json.dumps(row), flush=True)
        gc.collect()
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10,50,100", help="comma-separated update counts")
    parser.add_argument("--d", type=float, default=1e6, help="values per update")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rule names")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; median")
    parser.add_argument("--f", type=int, default=None, help="num_byzantine (default per n)")
    parser.add_argument(
        "--flower-budget-s",
        type=float,
        default=60.0,
        help="a Flower function whose first run takes longer is not repeated",
    )
    parser.add_argument(
        "--no-steps", action="store_true", help="skip the sub-step run of the Krum family"
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=SETTLE_S[0],
        help="pause before each timed call, so BLAS threads spinning after the previous "
        "side are asleep (default 0.3)",
    )
    args = parser.parse_args()
    SETTLE_S[0] = args.settle_s
    ns = [int(v) for v in args.n.split(",")]
    d = int(args.d)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"unknown rules {unknown}; choose from {', '.join(RULES)}")

    failed = False
    for n in ns:
        f = args.f if args.f is not None else max(0, (n - 3) // 4)
        failed |= run_n(n, d, f, rules, args)
        gc.collect()  # the (n, d) matrices of this n are gone before the next is made
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
