"""The audit core: known answers for the encoding and hashes, signatures, receipts, guard."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield import audit
from fedshield.audit import (
    ChainRecord,
    Entry,
    Receipt,
    TreeHead,
    anchor_hash,
    canonical_json,
    chain_hash,
    check_metadata,
    merkle_root,
    public_key_bytes,
    receipt_for,
    sign_entry,
    sign_tree_head,
    signatures_digest,
    verify_log,
    verify_receipt,
)
from fedshield.audit.receipt import signing_bytes
from fedshield.errors import AuditError, IdentityError
from fedshield.storage import Database, EventLog
from fedshield.storage.audit import AuditLog, read_public_key

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def sha3(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def kat_entry() -> Entry:
    return Entry(
        seq=1,
        time=T0,
        actor="coordinator",
        action="model.commit",
        resource="model/0",
        outcome="ok",
        metadata={"b": [1, 0.1, None, True], "a": "é", "n": 10**20, "f": 1e16},
    )


# --------------------------------------------------------------------------- surface


def test_public_surface() -> None:
    assert set(audit.__all__) == {
        "ChainRecord",
        "Entry",
        "MerkleAccumulator",
        "Receipt",
        "TreeHead",
        "VerifyReport",
        "anchor_hash",
        "canonical_json",
        "chain_hash",
        "check_metadata",
        "inclusion_proof",
        "merkle_root",
        "public_key_bytes",
        "receipt_for",
        "sign_entry",
        "sign_tree_head",
        "signatures_digest",
        "verify_entry_signature",
        "verify_inclusion",
        "verify_log",
        "verify_receipt",
        "verify_tree_head",
    }


# --------------------------------------------------------------------------- known answers


def test_canonical_encoding_known_answer() -> None:
    assert kat_entry().canonical() == (
        b'{"action":"model.commit","actor":"coordinator","metadata":{"a":"\\u00e9",'
        b'"b":[1,0.1,null,true],"f":1e+16,"n":100000000000000000000},"outcome":"ok",'
        b'"resource":"model/0","seq":1,"time":"2024-05-01T12:00:00.123456Z"}'
    )


def test_time_is_encoded_in_utc_whatever_the_offset() -> None:
    local = T0.astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    moved = Entry(**{**kat_entry().__dict__, "time": local})
    assert moved.canonical() == kat_entry().canonical()


def test_canonical_json_refuses_nan_and_non_json() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(ValueError):
        canonical_json({"x": b"raw"})


def test_anchor_and_chain_hash_known_answers() -> None:
    pub = bytes(range(32))
    anchor = anchor_hash(federation="demo", public_key=pub)
    assert anchor == sha3(b"fedshield/audit/v1/anchor", b"\x00\x00\x00\x04demo", pub)
    assert anchor.hex() == "f30e85ee01350290216c598bb842ba8f7c58891a86e0d2ede84572521ccb218d"
    digest = chain_hash(anchor, kat_entry())
    assert digest == sha3(b"fedshield/audit/v1/chain", anchor, kat_entry().canonical())
    assert digest.hex() == "0ef1a9c2105a1784d836ab95a803ddc29a6820aa61e630fc7a145dece6140f95"


def test_tree_head_signing_bytes_known_answers() -> None:
    root, sigs = bytes([7]) * 32, bytes([9]) * 32
    common = b"\x00\x00\x00\x04demo" + (3).to_bytes(8, "big") + (10).to_bytes(8, "big") + root
    assert signing_bytes(federation="demo", round=3, size=10, root=root) == (
        b"fedshield/audit/v1/tree-head" + common
    )
    assert signing_bytes(federation="demo", round=3, size=10, root=root, signatures=sigs) == (
        b"fedshield/audit/v2/tree-head" + common + sigs
    )
    digest = signatures_digest()
    digest.update(bytes(64))
    digest.update(bytes([1]) * 64)
    assert digest.digest() == sha3(b"fedshield/audit/v2/signatures", bytes(64), bytes([1]) * 64)


def test_merkle_known_answers() -> None:
    leaves = [bytes([i]) * 32 for i in range(3)]

    def leaf(d: bytes) -> bytes:
        return sha3(b"\x00", d)

    def node(left: bytes, right: bytes) -> bytes:
        return sha3(b"\x01", left, right)

    assert merkle_root([]) == sha3()
    assert merkle_root(leaves[:1]) == leaf(leaves[0])
    expected = node(node(leaf(leaves[0]), leaf(leaves[1])), leaf(leaves[2]))
    assert merkle_root(leaves) == expected
    assert expected.hex() == "fee2936ac84c975d74c52a2d2bf1d4a6aa06d7e32ca8767aef2a6b40759333f7"


def test_entry_signature_covers_a_domain_label() -> None:
    digest = bytes(32)
    signature = sign_entry(KEY, federation="demo", seq=7, entry_hash=digest)
    message = b"fedshield/audit/v1/entry" + b"\x00\x00\x00\x04demo" + (7).to_bytes(8, "big")
    KEY.public_key().verify(signature, message + digest)


# --------------------------------------------------------------------------- chain


def make_log(n: int, key: ed25519.Ed25519PrivateKey = KEY) -> list[ChainRecord]:
    prev = anchor_hash(federation="demo", public_key=public_key_bytes(key.public_key()))
    out = []
    for seq in range(1, n + 1):
        entry = Entry(seq, T0 + timedelta(seconds=seq), "c", "x.y", f"r/{seq}", "ok", {"i": seq})
        digest = chain_hash(prev, entry)
        out.append(
            ChainRecord(
                seq, entry, digest, sign_entry(key, federation="demo", seq=seq, entry_hash=digest)
            )
        )
        prev = digest
    return out


def head_of(
    log: list[ChainRecord], size: int, round: int = 1, key: ed25519.Ed25519PrivateKey = KEY
) -> TreeHead:
    """The version-2 head of the first ``size`` entries of ``log``."""
    digest = signatures_digest()
    for record in log[:size]:
        digest.update(record.signature)
    root = merkle_root([r.entry_hash for r in log[:size]])
    return sign_tree_head(
        key, federation="demo", round=round, size=size, root=root, signatures=digest.digest()
    )


def v1_head_of(log: list[ChainRecord], size: int, round: int = 1) -> TreeHead:
    """A version-1 head (no signatures digest), as logs written before it carry."""
    root = merkle_root([r.entry_hash for r in log[:size]])
    message = signing_bytes(federation="demo", round=round, size=size, root=root)
    return TreeHead("demo", round, size, root, KEY.sign(message))


def test_verify_log_accepts_an_honest_log_and_its_heads() -> None:
    log = make_log(5)
    hashes = [r.entry_hash for r in log]
    heads = [head_of(log, s, r) for r, s in ((1, 2), (2, 5))]
    report = verify_log(log, federation="demo", public_key=KEY.public_key(), heads=heads)
    assert (report.entries, report.tree_heads) == (5, 2)
    assert report.root == merkle_root(hashes).hex()


def test_a_version_2_head_vouches_for_the_signatures_it_covers() -> None:
    log = make_log(7)
    public = KEY.public_key()
    # Heads at 2 and 5: only entries 6 and 7 need their own signature checked.
    heads = [head_of(log, 2, 1), head_of(log, 5, 2)]
    assert (
        verify_log(log, federation="demo", public_key=public, heads=heads).signatures_checked == 2
    )
    everything = verify_log(log, federation="demo", public_key=public, heads=heads,
                            all_signatures=True)  # fmt: skip
    assert everything.signatures_checked == 7
    # A version-1 head vouches only for hashes: every signature is checked.
    old = [v1_head_of(log, 5)]
    assert verify_log(log, federation="demo", public_key=public, heads=old).signatures_checked == 7
    assert verify_log(log, federation="demo", public_key=public).signatures_checked == 7
    # Stripping a head's digest (to make it version 1) breaks its signature.
    stripped = dataclasses.replace(heads[1], signatures=None)
    with pytest.raises(AuditError) as err:
        verify_log(log, federation="demo", public_key=public, heads=[stripped])
    assert (err.value.seq, err.value.check) == (5, "tree head")


@pytest.mark.parametrize("all_signatures", [False, True])
def test_a_damaged_signature_under_a_head_is_named(all_signatures: bool) -> None:
    log = make_log(6)
    heads = [head_of(log, 6)]
    bad = [*log[:2], dataclasses.replace(log[2], signature=bytes(64)), *log[3:]]
    with pytest.raises(AuditError) as err:
        verify_log(bad, federation="demo", public_key=KEY.public_key(), heads=heads,
                   all_signatures=all_signatures)  # fmt: skip
    assert (err.value.seq, err.value.check) == (3, "signature")


def test_verify_log_names_the_first_bad_entry() -> None:
    log = make_log(5)
    edited = Entry(3, T0, "c", "x.y", "r/3", "ok", {"i": 999})
    bad = [*log[:2], ChainRecord(3, edited, log[2].entry_hash, log[2].signature), *log[3:]]
    with pytest.raises(AuditError) as err:
        verify_log(bad, federation="demo", public_key=KEY.public_key())
    assert (err.value.seq, err.value.check) == (3, "hash")
    with pytest.raises(AuditError) as err:
        verify_log([*log[:1], *log[2:]], federation="demo", public_key=KEY.public_key())
    assert (err.value.seq, err.value.check) == (2, "sequence")
    with pytest.raises(AuditError) as err:
        verify_log(log, federation="other", public_key=KEY.public_key())
    assert (err.value.seq, err.value.check) == (1, "signature")


def test_a_chain_rewritten_with_another_key_fails_on_signatures() -> None:
    forged = make_log(4, key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(AuditError) as err:
        verify_log(forged, federation="demo", public_key=KEY.public_key())
    assert (err.value.seq, err.value.check) == (1, "signature")


def test_truncation_is_caught_only_against_a_larger_head() -> None:
    log = make_log(6)
    head = head_of(log, 6, round=3)
    # The shorter log alone verifies: nothing in it says it was longer.
    assert verify_log(log[:4], federation="demo", public_key=KEY.public_key()).entries == 4
    with pytest.raises(AuditError) as err:
        verify_log(log[:4], federation="demo", public_key=KEY.public_key(), external_heads=[head])
    assert (err.value.seq, err.value.check) == (5, "truncated")


# --------------------------------------------------------------------------- receipts


def receipt_of(index: int, log: list[ChainRecord]) -> Receipt:
    hashes = [r.entry_hash for r in log]
    head = head_of(log, len(log))
    prev = (
        anchor_hash(federation="demo", public_key=public_key_bytes(KEY.public_key()))
        if index == 0
        else hashes[index - 1]
    )
    entry = log[index].entry
    assert entry is not None
    return receipt_for(
        entry=entry,
        prev_hash=prev,
        signature=log[index].signature,
        entry_hashes=hashes,
        head=head,
        public_key=KEY.public_key(),
    )


@pytest.mark.parametrize("index", [0, 3, 6])
def test_receipt_verifies_offline_and_round_trips_json(index: int) -> None:
    receipt = receipt_of(index, make_log(7))
    again = Receipt.from_json(receipt.to_json())
    assert again == receipt
    assert verify_receipt(again, KEY.public_key()).seq == index + 1


def test_receipt_fails_against_a_forged_head_or_another_key() -> None:
    receipt = receipt_of(2, make_log(7))
    forger = ed25519.Ed25519PrivateKey.generate()
    forged_head = dataclasses.replace(
        receipt.head, signature=forger.sign(receipt.head.signing_bytes())
    )
    with pytest.raises(AuditError):
        verify_receipt(Receipt(**{**receipt.__dict__, "head": forged_head}), KEY.public_key())
    wrong_root = TreeHead("demo", 1, receipt.head.size, bytes(32), receipt.head.signature)
    with pytest.raises(AuditError):
        verify_receipt(Receipt(**{**receipt.__dict__, "head": wrong_root}), KEY.public_key())
    with pytest.raises(AuditError):
        verify_receipt(receipt, forger.public_key())
    edited = Entry(**{**receipt.entry.__dict__, "outcome": "denied"})
    with pytest.raises(AuditError):
        verify_receipt(Receipt(**{**receipt.__dict__, "entry": edited}), KEY.public_key())


# --------------------------------------------------------------------------- metadata guard


@pytest.mark.parametrize(
    "value",
    [
        b"\x00" * 4,
        bytearray(3),
        np.zeros(3, dtype=np.float32),
        np.zeros((2, 2)),
        torch.zeros(4),
        {"nested": [np.ones(1)]},
        "A" * 200,  # base64-looking blob
        "abcdef0123" * 30,  # hex-looking blob
        "word " * 1000,  # over the string limit
        list(range(2000)),
    ],
)
def test_metadata_guard_refuses_payload_like_values(value: object) -> None:
    with pytest.raises(ValueError, match=r"metadata\["):
        check_metadata({"x": value})


def test_metadata_guard_allows_identifiers_hashes_and_scalars() -> None:
    check_metadata(
        {
            "sha3": "ab" * 32,
            "signature": "cd" * 64,
            "n": np.int64(3),
            "score": np.float32(0.5),
            "loss": float("nan"),
            "names": ["site-1", "site-2"],
            "reason": "the participant trained without differential privacy " * 10,
            "when": T0,
        }
    )


# --------------------------------------------------------------------------- storage


def test_event_log_refuses_payloads_and_writes_nothing(tmp_path: Path) -> None:
    db = Database.for_workdir(tmp_path / "w")
    try:
        log = EventLog(db)
        with pytest.raises(ValueError, match="array"):
            log.record(
                actor="c",
                action="x",
                resource="r",
                outcome="ok",
                details={"update": np.zeros(10)},
                now=T0,
            )
        assert log.list() == []
    finally:
        db.close()


def test_the_workdir_key_signs_and_another_key_cannot_append(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    db = Database.for_workdir(workdir)
    db.federation = "demo"
    EventLog(db).record(actor="c", action="x", resource="r", outcome="ok", details={}, now=T0)
    db.close()
    assert (workdir / "audit.key").stat().st_mode & 0o077 == 0
    key = read_public_key(workdir / "audit.pub")
    (workdir / "audit.key").unlink()  # a process with another key (regenerated) ...
    db = Database.for_workdir(workdir)
    try:
        with pytest.raises(IdentityError, match="signed by key"):
            EventLog(db).record(
                actor="c", action="x", resource="r", outcome="ok", details={}, now=T0
            )
        assert AuditLog(db).verify(key).entries == 1  # ... and nothing was added
    finally:
        db.close()


def test_legacy_events_are_adopted_by_the_first_signed_event(tmp_path: Path) -> None:
    from fedshield.storage.db import EventRow

    workdir = tmp_path / "w"
    db = Database.for_workdir(workdir)
    with db.transaction() as session:  # written as an older fedshield did: no chain
        session.add(
            EventRow(time=T0, actor="c", action="old", resource="r", outcome="ok", details={})
        )
    EventLog(db).record(actor="c", action="new", resource="r", outcome="ok", details={}, now=T0)
    report = AuditLog(db).verify(read_public_key(workdir / "audit.pub"))
    db.close()
    assert report.entries == 2
