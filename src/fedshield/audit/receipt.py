"""Signed tree heads and participants' receipts, verifiable offline.

After each committed round the coordinator signs a *tree head*: the size and Merkle
root (:mod:`fedshield.audit.merkle`) of the whole log so far, and the digest of every
entry signature in it, over::

    b"fedshield/audit/v2/tree-head" || lp(federation) || round (8 bytes) || size (8 bytes)
        || root || signatures

    signatures = SHA3-256(b"fedshield/audit/v2/signatures" || sig_1 || ... || sig_size)

The signatures digest makes a head vouch for the entry signatures too, not only for the
entry hashes: a verifier that checked a head against the stored log (root and
signatures digest) knows every entry it covers is exactly what the coordinator signed,
without checking each entry's signature (:mod:`fedshield.audit.verify`). Heads written
before it existed (``v1``, no digest, ``signatures`` is ``None``) are still verified;
they vouch only for the entry hashes.

A participant's *receipt* is the entry that records its contribution to a round, that
entry's hash inputs (the previous hash) and signature, its inclusion proof, and the
round's signed tree head. :func:`verify_receipt` needs nothing but the receipt and the
coordinator's audit public key: no database, no network.

What a kept receipt proves later: the coordinator signed a log of ``size`` entries with
this root, and that log holds this entry at this position. If the coordinator (or
anyone) later deletes, edits or truncates history before position ``size``, the log no
longer reproduces the root, and ``fedshield audit verify --receipt FILE`` says so. A
receipt does not prove what comes after ``size``, and it cannot stop a coordinator that
keeps its key from showing different participants different logs (a fork); comparing
tree heads between participants (gossip) would, and is not built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit.entry import (
    Entry,
    _lp,
    chain_hash,
    public_key_bytes,
    verify_entry_signature,
)
from fedshield.audit.merkle import inclusion_proof, merkle_root, verify_inclusion
from fedshield.errors import AuditError

__all__ = [
    "RECEIPT_VERSION",
    "TREE_HEAD_LABEL",
    "Receipt",
    "TreeHead",
    "receipt_for",
    "sign_tree_head",
    "signatures_digest",
    "verify_receipt",
    "verify_tree_head",
]

TREE_HEAD_LABEL: Final = b"fedshield/audit/v1/tree-head"
TREE_HEAD_V2_LABEL: Final = b"fedshield/audit/v2/tree-head"
SIGNATURES_LABEL: Final = b"fedshield/audit/v2/signatures"
RECEIPT_VERSION: Final = 1


def signatures_digest() -> hashlib._Hash:
    """Return a fresh running digest of entry signatures: ``update`` it with each, in order.

    ``digest()`` after entries ``1..n`` is the ``signatures`` field of a head of size ``n``.
    """
    return hashlib.sha3_256(SIGNATURES_LABEL)


def _hex32(value: object, name: str) -> bytes:
    raw = bytes.fromhex(str(value))
    if len(raw) != 32:
        raise ValueError(f"{name} must be 32 bytes of hex, got {len(raw)} bytes")
    return raw


@dataclass(frozen=True)
class TreeHead:
    """A signed statement: the log of ``federation`` had ``size`` entries with ``root``.

    Attributes
    ----------
    federation
        The federation id.
    round
        The committed round it was signed after (0 for a head signed outside a round).
    size
        How many entries it covers (entries ``1..size``).
    root
        The Merkle tree hash of their entry hashes (32 bytes).
    signature
        The coordinator audit key's Ed25519 signature (64 bytes).
    signatures
        The digest of the signatures of entries ``1..size`` (32 bytes), or ``None`` for a
        version-1 head, signed before heads carried it.
    """

    federation: str
    round: int
    size: int
    root: bytes
    signature: bytes
    signatures: bytes | None = None

    def signing_bytes(self) -> bytes:
        """Return the bytes the signature covers."""
        return signing_bytes(
            federation=self.federation,
            round=self.round,
            size=self.size,
            root=self.root,
            signatures=self.signatures,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the head as JSON data (hashes and signature in hex)."""
        data: dict[str, Any] = {
            "federation": self.federation,
            "round": self.round,
            "size": self.size,
            "root": self.root.hex(),
            "signature": self.signature.hex(),
        }
        if self.signatures is not None:
            data["signatures"] = self.signatures.hex()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeHead:
        """Read a head written by :meth:`to_json`.

        Raises
        ------
        ValueError
            If a field is missing or malformed.
        """
        try:
            return cls(
                federation=str(data["federation"]),
                round=int(data["round"]),
                size=int(data["size"]),
                root=_hex32(data["root"], "root"),
                signature=bytes.fromhex(str(data["signature"])),
                signatures=(
                    _hex32(data["signatures"], "signatures") if "signatures" in data else None
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a tree head: {exc!r}") from exc


def signing_bytes(
    *, federation: str, round: int, size: int, root: bytes, signatures: bytes | None = None
) -> bytes:
    """Return the bytes a tree head's signature covers (version 1 if no ``signatures``)."""
    if round < 0 or size < 0:
        raise ValueError(f"round and size must be >= 0, got {round} and {size}")
    body = _lp(federation) + round.to_bytes(8, "big") + size.to_bytes(8, "big") + root
    if signatures is None:
        return TREE_HEAD_LABEL + body
    return TREE_HEAD_V2_LABEL + body + signatures


def sign_tree_head(
    key: ed25519.Ed25519PrivateKey,
    *,
    federation: str,
    round: int,
    size: int,
    root: bytes,
    signatures: bytes,
) -> TreeHead:
    """Return the signed tree head of a log of ``size`` entries with Merkle ``root``.

    ``signatures`` is the digest of their entry signatures (:func:`signatures_digest`).
    """
    if len(root) != 32 or len(signatures) != 32:
        raise ValueError(
            f"root and signatures must be 32 bytes, got {len(root)} and {len(signatures)}"
        )
    message = signing_bytes(
        federation=federation, round=round, size=size, root=root, signatures=signatures
    )
    return TreeHead(federation, round, size, root, key.sign(message), signatures)


def verify_tree_head(head: TreeHead, public_key: ed25519.Ed25519PublicKey) -> None:
    """Check a tree head's signature.

    Raises
    ------
    AuditError
        If it is not the audit key's signature of this head (opaque).
    """
    try:
        public_key.verify(head.signature, head.signing_bytes())
    except (InvalidSignature, ValueError) as exc:
        raise AuditError("invalid tree head signature") from exc


@dataclass(frozen=True)
class Receipt:
    """A participant's offline proof that an entry is in the signed log.

    Attributes
    ----------
    entry
        The entry (its ``seq`` is its position: leaf index ``seq - 1``).
    prev_hash
        The hash of the entry before it (the anchor for entry 1), to recompute its hash.
    signature
        The coordinator's signature of the entry.
    proof
        The inclusion proof of the entry hash in the tree of ``head.size`` leaves.
    head
        The signed tree head.
    public_key
        The audit public key the coordinator says signed it. Informational: a verifier
        must check against the key it trusts, not this one.
    """

    entry: Entry
    prev_hash: bytes
    signature: bytes
    proof: tuple[bytes, ...]
    head: TreeHead
    public_key: bytes

    @property
    def entry_hash(self) -> bytes:
        """The entry's hash, recomputed."""
        return chain_hash(self.prev_hash, self.entry)

    def to_json(self) -> dict[str, Any]:
        """Return the receipt as JSON data."""
        return {
            "version": RECEIPT_VERSION,
            "entry": self.entry.to_json(),
            "prev_hash": self.prev_hash.hex(),
            "entry_hash": self.entry_hash.hex(),
            "signature": self.signature.hex(),
            "proof": [p.hex() for p in self.proof],
            "tree_head": self.head.to_json(),
            "public_key": self.public_key.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Receipt:
        """Read a receipt written by :meth:`to_json`.

        Raises
        ------
        ValueError
            If it is not a version-1 receipt or a field is malformed.
        """
        if not isinstance(data, Mapping) or data.get("version") != RECEIPT_VERSION:
            raise ValueError(f"not a version-{RECEIPT_VERSION} audit receipt")
        try:
            return cls(
                entry=Entry.from_json(data["entry"]),
                prev_hash=_hex32(data["prev_hash"], "prev_hash"),
                signature=bytes.fromhex(str(data["signature"])),
                proof=tuple(_hex32(p, "proof") for p in data["proof"]),
                head=TreeHead.from_json(data["tree_head"]),
                public_key=_hex32(data["public_key"], "public_key"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit receipt: {exc!r}") from exc


def receipt_for(
    *,
    entry: Entry,
    prev_hash: bytes,
    signature: bytes,
    entry_hashes: Sequence[bytes],
    head: TreeHead,
    public_key: ed25519.Ed25519PublicKey,
) -> Receipt:
    """Build the receipt of ``entry`` under ``head``.

    Parameters
    ----------
    entry, prev_hash, signature
        The entry as stored, the hash before it and its signature.
    entry_hashes
        The hashes of entries ``1..head.size`` in order (the tree's leaves).
    head
        A signed tree head covering the entry (``entry.seq <= head.size``).
    public_key
        The audit public key, copied into the receipt for information.

    Raises
    ------
    ValueError
        If the head does not cover the entry or the hashes do not match the head.
    """
    if len(entry_hashes) != head.size:
        raise ValueError(f"the head covers {head.size} entries, got {len(entry_hashes)} hashes")
    if not 1 <= entry.seq <= head.size:
        raise ValueError(f"entry {entry.seq} is not covered by a head of size {head.size}")
    if chain_hash(prev_hash, entry) != entry_hashes[entry.seq - 1]:
        raise ValueError(f"entry {entry.seq} does not hash to the stored entry hash")
    if merkle_root(entry_hashes) != head.root:
        raise ValueError("the entry hashes do not reproduce the tree head's root")
    return Receipt(
        entry=entry,
        prev_hash=prev_hash,
        signature=signature,
        proof=tuple(inclusion_proof(entry_hashes, entry.seq - 1)),
        head=head,
        public_key=public_key_bytes(public_key),
    )


def verify_receipt(receipt: Receipt, public_key: ed25519.Ed25519PublicKey) -> Entry:
    """Check a receipt offline with only the coordinator's audit public key.

    Checks, in order: the tree head's signature, the entry's signature (over the
    federation, its ``seq`` and its recomputed hash), and the inclusion of that hash at
    leaf ``seq - 1`` of the signed tree.

    Returns
    -------
    Entry
        The entry, now known to be in the log the coordinator signed.

    Raises
    ------
    AuditError
        If any check fails (opaque: which one is not said).
    """
    head = receipt.head
    verify_tree_head(head, public_key)
    entry_hash = receipt.entry_hash
    verify_entry_signature(
        public_key,
        receipt.signature,
        federation=head.federation,
        seq=receipt.entry.seq,
        entry_hash=entry_hash,
    )
    verify_inclusion(entry_hash, receipt.entry.seq - 1, head.size, receipt.proof, head.root)
    return receipt.entry
