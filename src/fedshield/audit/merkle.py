"""An RFC 6962 Merkle tree over entry hashes, with inclusion proofs (RFC 9162 2.1).

The tree is Certificate Transparency's, with SHA3-256 instead of SHA-256::

    MTH({})      = SHA3-256()
    leaf(d)      = SHA3-256(0x00 || d)
    node(l, r)   = SHA3-256(0x01 || l || r)
    MTH(D[0:n])  = node(MTH(D[0:k]), MTH(D[k:n]))   k = the largest power of 2 < n

The 0x00/0x01 prefixes keep a leaf from being passed off as an inner node (second
preimage). A leaf's data ``d`` is an entry hash (32 bytes). An inclusion proof is the
audit path of RFC 6962 section 2.1.1; :func:`verify_inclusion` is RFC 9162's algorithm.

:class:`MerkleAccumulator` keeps only the roots of the perfect subtrees (at most
``log2(n)`` hashes) so a verifier can stream the log once and compare its root against
every signed tree head on the way.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fedshield.errors import AuditError

__all__ = [
    "MerkleAccumulator",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "root_from_proof",
    "verify_inclusion",
]

_EMPTY = hashlib.sha3_256().digest()


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of a leaf holding ``data``."""
    return hashlib.sha3_256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an inner node with children ``left`` and ``right``."""
    return hashlib.sha3_256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of ``leaves`` (the leaves' data, not their hashes)."""
    acc = MerkleAccumulator()
    for data in leaves:
        acc.append(data)
    return acc.root()


def _subtree_root(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    if end - start == 1:
        return leaf_hash(leaves[start])
    k = _split(end - start)
    return node_hash(_subtree_root(leaves, start, start + k), _subtree_root(leaves, start + k, end))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path of leaf ``index`` in the tree over ``leaves``.

    Raises
    ------
    ValueError
        If ``index`` is not in ``[0, len(leaves))``.
    """
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"index must be in [0, {n}), got {index}")
    path: list[bytes] = []
    start, end = 0, n
    # Walk down from the root; the sibling subtrees are the path, leaf side last-in first.
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_subtree_root(leaves, start + k, end))
            end = start + k
        else:
            path.append(_subtree_root(leaves, start, start + k))
            start = start + k
    path.reverse()
    return path


def root_from_proof(data: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root that leaf ``data`` at ``index`` with ``proof`` implies (RFC 9162).

    Raises
    ------
    AuditError
        If the proof has the wrong length for ``index`` and ``size`` (opaque).
    """
    if not 0 <= index < size:
        raise AuditError("invalid inclusion proof")
    fn, sn = index, size - 1
    r = leaf_hash(data)
    for p in proof:
        if sn == 0:
            raise AuditError("invalid inclusion proof")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("invalid inclusion proof")
    return r


def verify_inclusion(
    data: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf ``data`` is at ``index`` of the tree of ``size`` with ``root``.

    Raises
    ------
    AuditError
        If it is not (opaque: which part failed is not said).
    """
    if not hmac.compare_digest(root_from_proof(data, index, size, proof), root):
        raise AuditError("invalid inclusion proof")


class MerkleAccumulator:
    """The root of a growing tree, in ``O(log n)`` memory (a compact range).

    ``_stack`` holds the roots of the perfect subtrees the leaves so far decompose into,
    largest first; appending merges equal-sized neighbours like a binary counter.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def append(self, data: bytes) -> None:
        """Add a leaf holding ``data``."""
        height, h = 0, leaf_hash(data)
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            h = node_hash(left, h)
            height += 1
        self._stack.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        """Return the Merkle tree hash of the leaves appended so far."""
        if not self._stack:
            return _EMPTY
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h
