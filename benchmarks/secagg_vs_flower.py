"""fedshield's SecAgg+ against Flower's, one round each, in one process, without a network.

The case of the issue: ``n = 50`` participants, ``d = 1e6`` float32 values each, a sparse
graph of degree about 11, and 10% of the participants dropping after they sent their
shares and before their masked input (the server must then recover their mask keys and
remove their pair masks).

* **fedshield**: :func:`secagg.run_round` (``benchmarks/secagg.py``) drives
  :class:`SecAggClient` and :class:`SecAggServer` stage by stage: ``k = 11`` neighbours,
  ``t = 6`` (``choose_threshold(11, corruption=0)``), 32-bit ring.
* **Flower** (``flwr``): the client side calls the stage functions of
  ``flwr.client.mod.secure_aggregation.secaggplus_mod`` (``_setup``, ``_share_keys``,
  ``_collect_masked_vectors``, ``_unmask``, after its ``check_configs``, with the state
  saved and restored through ``SecAggPlusState.to_dict`` between stages as the mod
  does). The server side is the code of ``SecAggPlusWorkflow``'s four stages
  (``flwr.server.workflow.secure_aggregation.secaggplus_workflow``) with
  ``grid.send_and_receive`` replaced by direct calls, built from Flower's own
  ``flwr.common.secure_aggregation`` functions (``crypto.shamir``,
  ``crypto.symmetric_encryption``, ``quantization``, ``ndarrays_arithmetic``,
  ``secaggplus_utils``). ``num_shares = 11`` (10 neighbours plus the client itself: its
  ring neighbourhood), ``reconstruction_threshold = 6``, ``clipping_range = 1``,
  ``max_weight = 1`` and the default ``quantization_range = 2**22`` and
  ``modulus_range = 2**32``. Left out for Flower: message and record plumbing, the
  training call and ``FitRes`` conversion around the masked-vector stage, and the
  strategy's ``aggregate_fit`` after unmasking.

A protocol's time is the sum of every client call and every server step (one process,
so that is also the wall time of the round without a network). Each side runs
``--repeats`` times, interleaved; the JSON reports medians and the ratio of medians
(goal: Flower / fedshield >= 4). Both aggregates are checked against the plaintext mean
of the survivors. Compare ratios, never seconds across runs: the machine is noisy::

    .venv/bin/python benchmarks/secagg_vs_flower.py
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from fedshield.secagg import choose_threshold
from secagg import CLIP, client_input, run_round

GOAL = 4.0
FLOWER_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def flower_round(
    n: int, d: int, *, num_shares: int, threshold: int, dropout: float, seed: int
) -> dict[str, Any]:
    """One SecAgg+ round with Flower's own client mod functions and server workflow code."""
    from flwr.client.mod.secure_aggregation.secaggplus_mod import (
        SecAggPlusState,
        _collect_masked_vectors,
        _setup,
        _share_keys,
        _unmask,
        check_configs,
    )
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    picker = random.Random(seed)
    node_ids = [picker.getrandbits(63) + 1 for _ in range(n)]
    index = {nid: i for i, nid in enumerate(node_ids)}
    dead_at_masking = set(picker.sample(node_ids, round(dropout * n)))
    parameters = {
        nid: ndarrays_to_parameters([client_input(index[nid], d, seed)]) for nid in node_ids
    }
    stage_s = dict.fromkeys(FLOWER_STAGES, 0.0)
    client_s = dict.fromkeys(FLOWER_STAGES, 0.0)
    saved: dict[int, dict[str, Any]] = {}

    def client(stage: str, nid: int, fn: Callable[[Any], Any], configs: dict[str, Any]) -> Any:
        """One client stage as the mod runs it: restore the state, check, run, save."""
        start = time.perf_counter()
        state = SecAggPlusState(**saved.get(nid, {}))
        if stage == Stage.SETUP:
            state.nid = nid
        check_configs(stage, cast(Any, configs))
        result = fn(state)
        saved[nid] = dict(state.to_dict())
        elapsed = time.perf_counter() - start
        stage_s[_name(stage)] += elapsed
        client_s[_name(stage)] += elapsed
        return result

    def _name(stage: str) -> str:
        return {
            Stage.SETUP: "setup",
            Stage.SHARE_KEYS: "share_keys",
            Stage.COLLECT_MASKED_VECTORS: "collect_masked_vectors",
            Stage.UNMASK: "unmask",
        }[stage]

    def server(stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        stage_s[stage] += time.perf_counter() - start
        return result

    # The workflow's state.
    mod_range = 2**32
    quantization_range = 2**22
    max_weight = 1.0
    sampled = list(node_ids)
    active = set(sampled)
    nid_to_neighbours: dict[int, set[int]] = {}
    nid_to_publickeys: dict[int, list[bytes]] = {}

    def check_threshold() -> None:  # SecAggPlusWorkflow._check_threshold
        for nid in sampled:
            if len(nid_to_neighbours[nid] & active) < threshold:
                raise SystemExit("Flower: insufficient available nodes")

    # -- setup_stage ---------------------------------------------------------------------
    def setup_server() -> dict[str, Any]:
        shares = num_shares
        if len(sampled) != shares and shares & 1 == 0:
            shares += 1
        order = list(sampled)
        random.shuffle(order)
        half = shares >> 1
        nid_to_neighbours.update(
            {
                nid: {order[(i + off) % len(order)] for off in range(-half, half + 1)}
                for i, nid in enumerate(order)
            }
        )
        return {
            Key.SAMPLE_NUMBER: len(sampled),
            Key.SHARE_NUMBER: shares,
            Key.THRESHOLD: threshold,
            Key.CLIPPING_RANGE: CLIP,
            Key.TARGET_RANGE: quantization_range,
            Key.MOD_RANGE: mod_range,
            Key.MAX_WEIGHT: max_weight,
        }

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        setup_cfg = server("setup", setup_server)
        for nid in sorted(active):
            res = client(Stage.SETUP, nid, lambda s: _setup(s, setup_cfg), setup_cfg)
            server(
                "setup",
                lambda nid=nid, res=res: nid_to_publickeys.__setitem__(
                    nid, [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
                ),
            )
        server("setup", check_threshold)

        # -- share_keys_stage ----------------------------------------------------------------
        fwd_ciphertexts: dict[int, list[bytes]] = {nid: [] for nid in active}
        fwd_srcs: dict[int, list[int]] = {nid: [] for nid in active}
        for nid in sorted(active):
            cfg = server(
                "share_keys",
                lambda nid=nid: {
                    str(j): nid_to_publickeys[j] for j in nid_to_neighbours[nid] & active
                },
            )
            res = client(Stage.SHARE_KEYS, nid, lambda s, cfg=cfg: _share_keys(s, cfg), cfg)

            def forward(src: int = nid, res: dict[str, Any] = res) -> None:
                for dst, ct in zip(
                    res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True
                ):
                    if dst in fwd_ciphertexts:
                        fwd_ciphertexts[dst].append(ct)
                        fwd_srcs[dst].append(src)

            server("share_keys", forward)
        server("share_keys", check_threshold)

        # -- collect_masked_vectors_stage --------------------------------------------------
        masked_vector: list[np.ndarray] | None = None
        plain_sum = np.zeros(d, dtype=np.float64)
        for nid in sorted(active):
            if nid in dead_at_masking:
                continue
            cfg = {Key.CIPHERTEXT_LIST: fwd_ciphertexts[nid], Key.SOURCE_LIST: fwd_srcs[nid]}
            res = client(
                Stage.COLLECT_MASKED_VECTORS,
                nid,
                lambda s, cfg=cfg, nid=nid: _collect_masked_vectors(s, cfg, 1, parameters[nid]),
                cfg,
            )
            plain_sum += np.clip(client_input(index[nid], d, seed), -CLIP, CLIP)

            def collect(res: dict[str, Any] = res) -> None:
                nonlocal masked_vector
                vec = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]
                masked_vector = (
                    vec if masked_vector is None else parameters_addition(masked_vector, vec)
                )

            server("collect_masked_vectors", collect)
        active = active - dead_at_masking
        assert masked_vector is not None
        masked_vector = server(
            "collect_masked_vectors", lambda: parameters_mod(masked_vector, mod_range)
        )
        server("collect_masked_vectors", check_threshold)

        # -- unmask_stage ---------------------------------------------------------------------
        active_nids = set(active)
        dead_nids = set(sampled) - active_nids
        collected: dict[int, list[bytes]] = {nid: [] for nid in sampled}
        for nid in sorted(active_nids):
            cfg = server(
                "unmask",
                lambda nid=nid: {
                    Key.ACTIVE_NODE_ID_LIST: list(nid_to_neighbours[nid] & active_nids),
                    Key.DEAD_NODE_ID_LIST: list(nid_to_neighbours[nid] & dead_nids),
                },
            )
            res = client(Stage.UNMASK, nid, lambda s, cfg=cfg: _unmask(s, cfg), cfg)

            def gather(res: dict[str, Any] = res) -> None:
                for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
                    collected[owner].append(share)

            server("unmask", gather)

        def reconstruct() -> list[np.ndarray]:
            vector = cast(list[np.ndarray], masked_vector)
            for nid, share_list in collected.items():
                if len(share_list) < threshold:
                    raise SystemExit("Flower: not enough shares to unmask")
                secret = combine_shares(share_list)
                if nid in active_nids:
                    private_mask = pseudo_rand_gen(secret, mod_range, get_parameters_shape(vector))
                    vector = parameters_subtraction(vector, private_mask)
                else:
                    neighbours = nid_to_neighbours[nid]
                    neighbours.remove(nid)
                    for neighbor_nid in neighbours:
                        shared_key = generate_shared_key(
                            bytes_to_private_key(secret),
                            bytes_to_public_key(nid_to_publickeys[neighbor_nid][0]),
                        )
                        pairwise_mask = pseudo_rand_gen(
                            shared_key, mod_range, get_parameters_shape(vector)
                        )
                        if nid > neighbor_nid:
                            vector = parameters_addition(vector, pairwise_mask)
                        else:
                            vector = parameters_subtraction(vector, pairwise_mask)
            recon = parameters_mod(vector, mod_range)
            q_total_ratio, recon = factor_extract(recon)
            inv_dq_total_ratio = quantization_range / q_total_ratio
            aggregated = dequantize(recon, CLIP, quantization_range)
            offset = -(len(active_nids) - 1) * CLIP
            for vec in aggregated:
                vec += offset
                vec *= inv_dq_total_ratio
            return aggregated

        aggregated = server("unmask", reconstruct)
    finally:
        if gc_was_enabled:
            gc.enable()
    expected = plain_sum / len(active_nids)
    error = float(np.abs(aggregated[0] - expected).max())
    total = sum(stage_s.values())
    return {
        "total_s": total,
        "stage_s": stage_s,
        "client_s": sum(client_s.values()),
        "survivors": len(active_nids),
        "max_abs_error": error,
        # Two levels: Flower rounds in float32, which adds up to half a level.
        "error_bound": 4.0 * CLIP / quantization_range,
    }


def fedshield_round(n: int, d: int, *, k: int, t: int, dropout: float, seed: int) -> dict[str, Any]:
    run = run_round(n, d, k=k, t=t, dropout=dropout, seed=seed)
    stages = run.stage_totals()
    total = sum(stages.values())
    return {
        "total_s": total,
        "stage_s": stages,
        "client_s": sum(sum(times.values()) for times in run.client_s.values()),
        "survivors": len(run.survivors),
        "max_abs_error": run.max_abs_error,
        "error_bound": run.error_bound,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_s"] for r in runs]
    stage_sum: dict[str, float] = {}
    for r in runs:
        for stage, seconds in r["stage_s"].items():
            stage_sum[stage] = stage_sum.get(stage, 0.0) + seconds
    grand = sum(stage_sum.values())
    return {
        "total_s_median": statistics.median(totals),
        "total_s_runs": totals,
        "client_share": sum(r["client_s"] for r in runs) / sum(totals),
        "stage_fraction": {stage: seconds / grand for stage, seconds in stage_sum.items()},
        "survivors": runs[-1]["survivors"],
        "max_abs_error": max(r["max_abs_error"] for r in runs),
        "error_bound": runs[-1]["error_bound"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--d", type=float, default=1e6)
    parser.add_argument("--k", type=int, default=11, help="fedshield degree; Flower num_shares")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    n, d, k = args.n, int(args.d), args.k
    t = choose_threshold(min(k, n - 1), dropout=args.dropout, corruption=0.0, n=n)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
        ours.append(fedshield_round(n, d, k=k, t=t, dropout=args.dropout, seed=args.seed + repeat))
        theirs.append(
            flower_round(
                n, d, num_shares=k, threshold=t, dropout=args.dropout, seed=args.seed + repeat
            )
        )
    fed, flw = summarize(ours), summarize(theirs)
    ratio = flw["total_s_median"] / fed["total_s_median"]
    result = {
        "benchmark": "secagg_vs_flower",
        "n": n,
        "d": d,
        "dropout": args.dropout,
        "dropped": round(args.dropout * n),
        "fedshield_k": k,
        "fedshield_t": t,
        "flower_num_shares": k,
        "flower_neighbours": (k | 1) - 1,  # an even num_shares is raised to the next odd
        "flower_threshold": t,
        "repeats": args.repeats,
        "fedshield_total_s": fed["total_s_median"],
        "flower_total_s": flw["total_s_median"],
        "speedup": ratio,
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "fedshield": fed,
        "flower": flw,
    }
    print(json.dumps(result), flush=True)
    errors = [(fed, "fedshield"), (flw, "flower")]
    bad = [name for side, name in errors if side["max_abs_error"] > side["error_bound"] * 1.01]
    if bad:
        print(f"aggregate check failed for {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
