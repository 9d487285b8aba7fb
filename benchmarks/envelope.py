"""What the signed message envelope costs per request, against its physical limits.

JSON lines on stdout, each with the raw figure it is read against, measured in the same
run (the machine is shared: compare the ratios, not the microseconds across runs):

* ``ed25519``: one raw Ed25519 signature and one verification of a 400-byte message
  (about an envelope's size), in microseconds. The floor of everything below.
* ``envelope_round_trip``: everything an empty-bodied request costs in envelope crypto
  and checks, both sides: the client seals the request, the coordinator opens it (verify,
  parse, canonical check), checks its freshness and nonce, seals the reply, and the
  client opens the reply. ``ratio_to_raw`` divides by two raw signatures plus two raw
  verifications, the least any scheme that signs both directions can pay.
* ``payload_hash`` (one line per size, 1 MB and 100 MB): the SHA3-256 of the body, as
  the client computes it (one call over the bytes it sends) and as the coordinator does
  (``update`` per 64 KiB chunk as uvicorn delivers the body, views, never copies),
  against raw ``hashlib.sha3_256`` over the whole buffer. ``per_request_over_raw_hash``
  is the envelope's whole cost for a request with that body (client hash + coordinator
  hash + the round trip above) over one raw hash of it: 2.0 is the floor when both ends
  hash what they send or receive. ``peak_alloc_bytes`` is the most memory the
  coordinator-side hashing allocated (tracemalloc, separate run): the body is never
  copied.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python benchmarks/envelope.py
    PYTHONPATH=src .venv/bin/python benchmarks/envelope.py --repeat 9 --sizes-mb 1 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import tracemalloc
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.transport.envelope import (
    NonceCache,
    ReplyEnvelope,
    RequestEnvelope,
    check_fresh,
    open_reply,
    open_request,
    payload_sha3,
    seal,
)

CHUNK = 64 * 1024


def best_of(repeat: int, number: int, run: Callable[[], object]) -> float:
    """Best mean seconds per call over ``repeat`` batches of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def bench_ed25519(repeat: int, number: int) -> dict[str, object]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(400)
    signature = key.sign(message)
    sign_s = best_of(repeat, number, lambda: key.sign(message))
    verify_s = best_of(repeat, number, lambda: public.verify(signature, message))
    return {"benchmark": "ed25519", "sign_us": sign_s * 1e6, "verify_us": verify_s * 1e6}


def bench_round_trip(repeat: int, number: int, raw: dict[str, object]) -> dict[str, object]:
    client_key = Ed25519PrivateKey.generate()
    server_key = Ed25519PrivateKey.generate()
    client_public, server_public = client_key.public_key(), server_key.public_key()
    cache = NonceCache(window_s=120, max_per_signer=10**7, max_total=10**7)
    empty = payload_sha3(b"")
    counter = iter(range(10**9))

    def one() -> None:
        now_ms = round(time.time() * 1000)
        request = RequestEnvelope(
            federation="bench-federation",
            sender="site-1",
            round=12,
            type="POST /v1/rounds/12/secagg/advertise",
            query="attempt=1",
            nonce=f"{next(counter):032x}",
            ts_ms=now_ms,
            payload_sha3=empty,
        )
        header = seal(request, client_key)
        opened = open_request(header, client_public)
        check_fresh(opened.ts_ms, now_ms=now_ms, window_s=120)
        cache.remember(opened.sender, opened.nonce, ts_ms=opened.ts_ms, now_ms=now_ms)
        reply = ReplyEnvelope(
            federation=opened.federation,
            sender="coordinator",
            round=opened.round,
            type=opened.type,
            query=opened.query,
            nonce=f"{next(counter):032x}",
            ts_ms=now_ms,
            payload_sha3=empty,
            status=200,
            in_reply_to=opened.nonce,
        )
        open_reply(seal(reply, server_key), server_public)

    per_request_s = best_of(repeat, number, one)
    floor_us = 2 * float(raw["sign_us"]) + 2 * float(raw["verify_us"])  # type: ignore[arg-type]
    return {
        "benchmark": "envelope_round_trip",
        "per_request_us": per_request_s * 1e6,
        "raw_2sign_2verify_us": floor_us,
        "ratio_to_raw": per_request_s * 1e6 / floor_us,
        "nonces_remembered": len(cache),
    }


def chunked_hash(data: bytes) -> str:
    """The coordinator's way: one update per chunk, over views of the received bytes."""
    view = memoryview(data)
    hasher = hashlib.sha3_256()
    for offset in range(0, len(view), CHUNK):
        hasher.update(view[offset : offset + CHUNK])
    return hasher.hexdigest()


def bench_payload(size_mb: int, repeat: int, round_trip_us: float) -> dict[str, object]:
    data = os.urandom(size_mb * 2**20)
    number = max(1, 64 // size_mb)
    raw_s = best_of(repeat, number, lambda: hashlib.sha3_256(data).hexdigest())
    client_s = best_of(repeat, number, lambda: payload_sha3(data))
    server_s = best_of(repeat, number, lambda: chunked_hash(data))
    assert chunked_hash(data) == payload_sha3(data)
    tracemalloc.start()
    chunked_hash(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    megabytes = len(data) / 1e6
    return {
        "benchmark": "payload_hash",
        "size_mb": size_mb,
        "raw_sha3_mb_per_s": megabytes / raw_s,
        "client_hash_ratio_to_raw": client_s / raw_s,
        "coordinator_hash_ratio_to_raw": server_s / raw_s,
        "per_request_ms": (client_s + server_s) * 1e3 + round_trip_us / 1e3,
        "per_request_over_raw_hash": (client_s + server_s + round_trip_us / 1e6) / raw_s,
        "peak_alloc_bytes": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="batches; the best is kept")
    parser.add_argument("--number", type=int, default=2000, help="calls per batch (crypto)")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    raw = bench_ed25519(args.repeat, args.number)
    print(json.dumps(raw), flush=True)
    trip = bench_round_trip(args.repeat, args.number // 4, raw)
    print(json.dumps(trip), flush=True)
    for size in args.sizes_mb:
        line = bench_payload(size, args.repeat, float(trip["per_request_us"]))  # type: ignore[arg-type]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
