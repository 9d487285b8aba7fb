"""What the per-request access check costs: revocation lookup, policy decision, refresh.

JSON lines on stdout, each a best-of-5 mean in microseconds:

* ``revocation_lookup``: ``RevocationCache.revoked`` between refreshes (what almost
  every request pays), with ``--revoked`` revocations on the list;
* ``revocation_refresh``: a due refresh whose version did not move (one indexed
  ``SELECT max(id)`` on the SQLite database), paid at most once per
  ``access.revocation_refresh_s`` (1 s) per coordinator;
* ``policy_decide``: ``Policy.decide`` for an allowed and a denied permission;
* ``identity_parse``: ``identity_from_der`` of a leaf certificate (the existing cost
  every request already paid before this check), for scale.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python benchmarks/access.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import timeit
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedshield.identity import create_ca, identity_from_der, issue_certificate
from fedshield.policy import Permission, Policy
from fedshield.storage import Database
from fedshield.storage.identity import RevocationCache, Revocations

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _best_us(stmt: object, number: int) -> float:
    times = timeit.repeat(stmt, number=number, repeat=5)  # type: ignore[call-overload]
    return min(times) / number * 1e6


def main() -> None:
    """Print one JSON line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revoked", type=int, default=1000)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.for_workdir(Path(tmp))
        store = Revocations(db)
        for i in range(args.revoked):
            store.revoke(f"site-{i}", reason="benchmark", actor="bench", now=NOW)
        clock = [0.0]
        cache = RevocationCache(store, refresh_s=1.0, clock=lambda: clock[0])
        cache.refresh()
        fingerprint = "ab" * 32
        lookup = _best_us(lambda: cache.revoked("site-live", fingerprint), args.number)

        def due_refresh() -> None:
            clock[0] += 2.0
            cache.refresh()

        refresh = _best_us(due_refresh, max(1, args.number // 100))
        db.close()
    policy = Policy()
    allowed, denied = Permission.parse("rounds:read"), Permission.parse("status:read")
    decide = (
        _best_us(
            lambda: (policy.decide("participant", allowed), policy.decide("participant", denied)),
            args.number,
        )
        / 2
    )
    ca_key, ca_cert = create_ca("bench", now=NOW)
    _, leaf = issue_certificate(
        ca_key, ca_cert, name="site-1", organization="Site", role="participant", now=NOW
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    parse = _best_us(lambda: identity_from_der(der), max(1, args.number // 10))
    for name, value in (
        ("revocation_lookup", lookup),
        ("revocation_refresh", refresh),
        ("policy_decide", decide),
        ("identity_parse", parse),
    ):
        print(json.dumps({"benchmark": name, "us": round(value, 3), "revoked": args.revoked}))


if __name__ == "__main__":
    main()
