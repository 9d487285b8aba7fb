"""The tamper-evident audit log: hash chain, signatures, Merkle tree heads, receipts.

Pure core (no files, sockets or clocks); :mod:`fedshield.storage.audit` keeps it in the
database and ``fedshield audit verify|export|receipt`` reads it.

* :mod:`~fedshield.audit.entry`: an entry's canonical JSON, the SHA3-256 chain, the
  coordinator's Ed25519 signature of each entry, and the metadata guard;
* :mod:`~fedshield.audit.merkle`: the RFC 6962 Merkle tree and inclusion proofs;
* :mod:`~fedshield.audit.receipt`: signed tree heads and participants' receipts;
* :mod:`~fedshield.audit.verify`: one pass over a stored log that names the first bad
  entry.

See docs/audit.md for what is protected, against whom, and what needs a receipt.
"""

from __future__ import annotations

from fedshield.audit.entry import (
    Entry,
    anchor_hash,
    canonical_json,
    chain_hash,
    check_metadata,
    public_key_bytes,
    sign_entry,
    verify_entry_signature,
)
from fedshield.audit.merkle import (
    MerkleAccumulator,
    inclusion_proof,
    merkle_root,
    verify_inclusion,
)
from fedshield.audit.receipt import (
    Receipt,
    TreeHead,
    receipt_for,
    sign_tree_head,
    signatures_digest,
    verify_receipt,
    verify_tree_head,
)
from fedshield.audit.verify import ChainRecord, VerifyReport, verify_log

__all__ = [
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
]
