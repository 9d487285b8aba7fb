"""What one SecAgg+ round costs each participant and the server, against the limits.

For ``n`` in {10, 50, 100}, ``d`` in {1e5, 1e6} and ``dropout`` in {0, 0.1} it runs one
round of :mod:`fedshield.secagg`, driving :class:`SecAggClient` and
:class:`SecAggServer` stage by stage itself (what ``run_in_memory`` does), so that every
client method and every server method is timed on its own. ``dropout`` is the fraction
of clients that drop after sending their shares and before their masked input: the
expensive case, where the server must recover their mask keys and remove their pair
masks from every surviving neighbour.

Two parameter rules per ``(n, d, dropout)``:

* ``default``: ``k = choose_k(n, dropout, corruption=0.1)`` and ``t = choose_threshold``
  (what ``SecAggConfig`` picks with that dropout);
* ``sparse`` (``n >= 50``): ``k = 11`` (``--sparse-k``) and ``t = choose_threshold(11,
  corruption=0)``, the Flower-style sparse graph. It assumes no client colludes with the
  server; with ``corruption = 0.1`` a degree of 11 has no threshold that both protects
  the inputs and survives 10% dropout, which is why the default rule picks a larger k.

Each case prints one JSON line on stdout (progress goes to stderr). Compare the ratios,
never seconds across runs: the machine is shared and noisy. Run from the repository
root::

    .venv/bin/python benchmarks/secagg.py
    .venv/bin/python benchmarks/secagg.py --n 50 --d 1e6 --dropout 0.1 --rules sparse
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import fedshield.secagg.client as client_module
from fedshield.errors import ProtocolError
from fedshield.secagg import (
    Quantizer,
    SecAggClient,
    SecAggServer,
    choose_k,
    choose_threshold,
    deterministic_random,
    neighbours,
    prg,
    system_random,
)
from fedshield.secagg.messages import (
    Advertise,
    Consistency,
    MaskedInput,
    Setup,
    ShareKeys,
    UnmaskResponse,
    canonical,
)

FEDERATION = "bench-federation"
ROUND = 1
CLIP = 1.0
CORRUPTION = 0.1
SPARSE_K = 11
UPLOAD_GOAL = 1.01
MASKING_GOAL = 2.0
CLIENT_STAGES = ("advertise", "share", "masked", "consistency", "unmask")


# -- bytes on the wire ------------------------------------------------------------------


def advertise_bytes(m: Advertise) -> int:
    return len(canonical("advertise", m.federation, m.round, m.sender, m.c_pk, m.s_pk, m.signature))


def share_keys_bytes(m: ShareKeys) -> int:
    head = canonical("share-keys", m.federation, m.round, m.sender, len(m.shares))
    body = sum(len(canonical("share", s.receiver, s.nonce, s.ciphertext)) for s in m.shares)
    return len(head) + body


def masked_bytes(m: MaskedInput) -> int:
    return len(canonical("masked", m.federation, m.round, m.sender, m.ring_bits, m.data))


def consistency_bytes(m: Consistency) -> int:
    return len(canonical("consistency", m.federation, m.round, m.sender, m.survivors, m.signature))


def unmask_bytes(m: UnmaskResponse) -> int:
    head = canonical("unmask", m.federation, m.round, m.sender)
    pairs = [*m.seed_shares, *m.key_shares]
    return len(head) + sum(len(canonical("share", owner, share)) for owner, share in pairs)


# -- one instrumented round -------------------------------------------------------------


@dataclass
class Round:
    """Timings and bytes of one round driven stage by stage."""

    n: int
    d: int
    k: int
    t: int
    degree: int
    dropped: list[str]
    survivors: tuple[str, ...] = ()
    client_s: dict[str, dict[str, float]] = field(default_factory=dict)
    masking_s: dict[str, float] = field(default_factory=dict)
    server_s: dict[str, float] = field(default_factory=dict)
    server_stage_s: dict[str, float] = field(default_factory=dict)
    upload: dict[str, dict[str, int]] = field(default_factory=dict)
    measured: frozenset[str] = frozenset()
    max_abs_error: float | None = None
    error_bound: float = 0.0

    def stage_totals(self) -> dict[str, float]:
        """Client plus server seconds per stage, over everybody."""
        out = dict.fromkeys(("setup", *CLIENT_STAGES), 0.0)
        for times in self.client_s.values():
            for stage, seconds in times.items():
                out[stage] += seconds
        for stage, seconds in self.server_stage_s.items():
            out[stage] += seconds
        return out


def client_input(index: int, d: int, seed: int) -> np.ndarray:
    """Participant ``index``'s float32 update (a stand-in for a model delta)."""
    return np.random.default_rng([seed, index]).uniform(-0.9, 0.9, d).astype(np.float32)


@contextmanager
def masking_probe(run: Round) -> Iterator[None]:
    """Time ``mask_input`` per client; skip it for clients outside ``run.measured``.

    A skipped client uploads an unmasked vector, so the server still does all its work
    (the sum, every self mask, every pair mask of a dropped client) but the aggregate is
    wrong: a sampled run does not check it.
    """
    original = client_module.mask_input

    def probe(vector: Any, **kwargs: Any) -> None:
        me = kwargs["me"]
        if me not in run.measured:
            return
        start = time.perf_counter()
        original(vector, **kwargs)
        run.masking_s[me] = time.perf_counter() - start

    client_module.mask_input = probe  # type: ignore[assignment]
    try:
        yield
    finally:
        client_module.mask_input = original  # type: ignore[assignment]


def run_round(
    n: int,
    d: int,
    *,
    k: int,
    t: int,
    dropout: float,
    seed: int,
    measured: int | None = None,
    inputs: Callable[[int], np.ndarray] | None = None,
) -> Round:
    """Run one round with ``round(dropout * n)`` clients dropping before the masked input.

    ``measured`` (default: all) is how many clients really mask; the others are stubbed
    (see :func:`masking_probe`). Identity keys are long-term and made outside the
    timings. The graph comes from a seeded generator (reproducible drop patterns); every
    key, seed, share and rounding draw comes from the system CSPRNG, as in production.
    """
    make_input = inputs or (lambda i: client_input(i, d, seed))
    ids = [f"p{i:03d}" for i in range(n)]
    picker = random.Random(seed)
    dropped = sorted(picker.sample(ids, round(dropout * n)))
    degree = min(k, n - 1)
    run = Round(n=n, d=d, k=k, t=t, degree=degree, dropped=dropped)
    if measured is None or measured >= n:
        run.measured = frozenset(ids)
    else:
        live = [i for i in ids if i not in dropped]
        run.measured = frozenset(picker.sample(live, measured))
    identity = {i: Ed25519PrivateKey.generate() for i in ids}
    roster = {i: key.public_key() for i, key in identity.items()}
    clients = {
        i: SecAggClient(identity[i], i, roster, system_random(), federation=FEDERATION, round=ROUND)
        for i in ids
    }
    run.client_s = {i: {} for i in ids}
    run.upload = {i: {} for i in ids}

    def server_call(stage: str, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        run.server_s[name] = run.server_s.get(name, 0.0) + elapsed
        run.server_stage_s[stage] = run.server_stage_s.get(stage, 0.0) + elapsed
        return result

    def client_call(stage: str, i: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        run.client_s[i][stage] = time.perf_counter() - start
        return result

    def build_setup() -> tuple[Setup, Quantizer]:
        quantizer = Quantizer.for_budget(n, max_weight=1, clip_range=CLIP, ring_bits=32)
        setup = Setup.build(
            federation=FEDERATION,
            round=ROUND,
            sender="coordinator",
            graph=neighbours(ids, k=k, rng=deterministic_random(seed.to_bytes(8, "big"))),
            k=k,
            t=t,
            ring_bits=32,
            value_bits=quantizer.value_bits,
            clip_range=CLIP,
            max_weight=1,
            dim=d,
        )
        return setup, quantizer

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with masking_probe(run):
            setup, quantizer = server_call("setup", "setup", build_setup)
            server = SecAggServer(setup)

            for i in ids:
                advert = client_call("advertise", i, lambda i=i: clients[i].on_setup(setup))
                run.upload[i]["advertise"] = advertise_bytes(advert)
                server_call(
                    "advertise", "receive_advertise", lambda m=advert: server.receive_advertise(m)
                )
            adverts = server_call("advertise", "advertisements", server.advertisements)

            for i in sorted(adverts):
                shares = client_call(
                    "share", i, lambda i=i: clients[i].on_advertisements(adverts[i])
                )
                run.upload[i]["share"] = share_keys_bytes(shares)
                server_call("share", "receive_shares", lambda m=shares: server.receive_shares(m))
            ciphertexts = server_call("share", "shares", server.shares)

            plain_sum = np.zeros(d, dtype=np.float64)
            for i in sorted(ciphertexts):
                if i in dropped:
                    continue
                x = make_input(ids.index(i))
                masked = client_call(
                    "masked",
                    i,
                    lambda i=i, x=x: clients[i].on_shares(ciphertexts[i], x=x, weight=1),
                )
                plain_sum += np.clip(x, -CLIP, CLIP)
                run.upload[i]["masked"] = masked_bytes(masked)
                server_call("masked", "receive_masked", lambda m=masked: server.receive_masked(m))
            u3 = server_call("masked", "survivors", server.survivors)

            for i in sorted(u3):
                consistency = client_call("consistency", i, lambda i=i: clients[i].on_survivors(u3))
                run.upload[i]["consistency"] = consistency_bytes(consistency)
                server_call(
                    "consistency",
                    "receive_consistency",
                    lambda m=consistency: server.receive_consistency(m),
                )
            requests = server_call("consistency", "unmask_requests", server.unmask_requests)

            for i in sorted(requests):
                try:
                    response = client_call(
                        "unmask", i, lambda i=i: clients[i].on_unmask(requests[i])
                    )
                except ProtocolError as exc:  # an honest client refusing: a bug here
                    raise SystemExit(f"{i} refused to unmask: {exc}") from exc
                run.upload[i]["unmask"] = unmask_bytes(response)
                server_call("unmask", "receive_unmask", lambda m=response: server.receive_unmask(m))
            ring_sum, total_weight, survivors = server_call("unmask", "finish", server.finish)
            mean, _ = server_call(
                "unmask", "decode", lambda: quantizer.decode(ring_sum, total_weight)
            )
    finally:
        if gc_was_enabled:
            gc.enable()
    run.survivors = survivors
    run.error_bound = 2.0 * CLIP / quantizer.levels
    if run.measured >= set(ids):
        run.max_abs_error = float(np.abs(mean - plain_sum / len(survivors)).max())
    return run


# -- the physical limit of masking ------------------------------------------------------


def keystream_limit_s(masks: int, d: int, repeats: int) -> float:
    """Best time of ``masks`` raw AES-256-CTR keystreams of ``4 (d + 1)`` bytes each.

    One ``update_into`` per mask (a fresh key each, as the masks have) into consecutive
    slices of one preallocated buffer of the total size.
    """
    nbytes = 4 * (d + 1)
    zeros = bytes(nbytes)
    buffer = np.zeros(masks * nbytes + 15, dtype=np.uint8)
    out = memoryview(buffer)  # type: ignore[arg-type]
    keys = [random.randbytes(32) for _ in range(masks)]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for index, key in enumerate(keys):
            encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
            encryptor.update_into(zeros, out[index * nbytes :])
        best = min(best, time.perf_counter() - start)
    return best


# -- one case ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def projected_s(n: int, d: int, degree: int, dropped: int) -> float:
    """A pessimistic forecast of a round's seconds, in units of one streamed mask."""
    vector = np.zeros(d + 1, dtype=np.uint32)
    per_mask = math.inf
    for _ in range(3):
        start = time.perf_counter()
        prg.accumulate(vector, [(bytes(32), 1), (bytes(range(32)), -1)])
        per_mask = min(per_mask, (time.perf_counter() - start) / 2)
    survivors = n - dropped
    client_masks = survivors * (degree + 1 + 8)  # its masks, plus ~8 for the rounding
    server_masks = survivors * 2 + dropped * degree  # the sum, self masks, pair masks
    return 1.5 * (client_masks + server_masks) * per_mask


def case(
    n: int, d: int, dropout: float, rule: str, *, seed: int, budget_s: float, repeats: int
) -> dict[str, Any]:
    if rule == "default":
        k = choose_k(n, dropout=dropout, corruption=CORRUPTION)
        corruption = CORRUPTION
    else:
        k, corruption = SPARSE_K, 0.0
    degree = min(k, n - 1)
    t = choose_threshold(degree, dropout=dropout, corruption=corruption, n=n)
    dropped = round(dropout * n)
    forecast = projected_s(n, d, degree, dropped)
    measured = None
    if forecast > budget_s:  # measure a fraction of the clients' masking, keep the rest
        measured = min(n - dropped, max(3, int((n - dropped) * budget_s / forecast)))
    wall = time.perf_counter()
    run = run_round(n, d, k=k, t=t, dropout=dropout, seed=seed, measured=measured)
    wall = time.perf_counter() - wall
    done = [i for i in run.survivors if i in run.measured]
    per_client = [sum(run.client_s[i].values()) for i in done]
    stage_medians = {s: median([run.client_s[i][s] for i in done]) for s in CLIENT_STAGES}
    masks = degree + 1  # every neighbour sent shares: 1 self mask + degree pair masks
    limit = keystream_limit_s(masks, d, repeats)
    masking = median([run.masking_s[i] for i in done])
    on_shares = stage_medians["masked"]
    uploads = [sum(run.upload[i].values()) for i in run.survivors]
    parts = {
        part: median([float(run.upload[i][part]) for i in run.survivors]) for part in CLIENT_STAGES
    }
    upload_ratio = max(uploads) / (4 * d)
    server_total = sum(run.server_s.values())
    sampled = len(run.measured) < n
    out: dict[str, Any] = {
        "benchmark": "secagg",
        "n": n,
        "d": d,
        "dropout": dropout,
        "dropped": len(run.dropped),
        "rule": rule,
        "corruption_assumed": corruption,
        "k": k,
        "t": t,
        "degree": degree,
        "survivors": len(run.survivors),
        "sampled": sampled,
        "clients_measured": len(done),
        "per_client_s_median": median(per_client),
        "per_client_s_max": max(per_client),
        "per_client_stage_s_median": stage_medians,
        "server_s": server_total,
        "server_method_s": run.server_s,
        "total_compute_s": server_total
        + sum(sum(times.values()) for times in run.client_s.values()),
        "upload_bytes_per_participant_max": max(uploads),
        "upload_bytes_per_participant_median_by_message": parts,
        "upload_ratio": upload_ratio,
        "upload_goal": UPLOAD_GOAL,
        "masks_per_participant": masks,
        "masking_s_median": masking,
        "keystream_limit_s": limit,
        "masking_ratio_to_keystream": masking / limit,
        "on_shares_ratio_to_keystream": on_shares / limit,
        "masking_goal": MASKING_GOAL,
        "upload_goal_met": upload_ratio <= UPLOAD_GOAL if d >= 10**6 else None,
        "masking_goal_met": masking / limit <= MASKING_GOAL,
        "aggregate_checked": run.max_abs_error is not None,
        "aggregate_max_abs_error": run.max_abs_error,
        "aggregate_error_bound": run.error_bound,
        "forecast_s": forecast,
        "wall_s": wall,
    }
    if sampled:
        dropped_s = sum(sum(run.client_s[i].values()) for i in run.dropped)
        out["extrapolated_total_compute_s"] = (
            server_total + dropped_s + len(run.survivors) * median(per_client)
        )
        out["sampling_note"] = (
            f"forecast {forecast:.0f}s > budget {budget_s:.0f}s: {len(done)} survivors "
            "measured; the others skipped masking (the server's work is unchanged)"
        )
    if run.max_abs_error is not None and run.max_abs_error > run.error_bound:
        out["error"] = "aggregate differs from the plaintext mean beyond quantization"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--rules", nargs="+", default=["default", "sparse"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="keystream-limit repeats")
    parser.add_argument(
        "--case-budget-s",
        type=float,
        default=180.0,
        help="sample clients when a case's forecast exceeds this",
    )
    args = parser.parse_args()
    failed = False
    for n in args.n:
        for d in (int(v) for v in args.d):
            for dropout in args.dropout:
                for rule in args.rules:
                    if rule == "sparse" and n < 50:
                        continue
                    print(f"n={n} d={d} dropout={dropout} rule={rule}", file=sys.stderr, flush=True)
                    result = case(
                        n,
                        d,
                        dropout,
                        rule,
                        seed=args.seed,
                        budget_s=args.case_budget_s,
                        repeats=args.repeats,
                    )
                    failed |= "error" in result
                    print(json.dumps(result), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
