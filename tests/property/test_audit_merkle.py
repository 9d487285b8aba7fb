"""Property tests of the audit Merkle tree: every inclusion proof verifies, no other does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.audit.merkle import (
    MerkleAccumulator,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)
from fedshield.errors import AuditError

SETTINGS = settings(max_examples=60, deadline=None)


def leaves_of(size: int, salt: int) -> list[bytes]:
    return [hashlib.sha3_256(f"{salt}/{i}".encode()).digest() for i in range(size)]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written recursively as the RFC states it."""
    if not leaves:
        return hashlib.sha3_256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


@SETTINGS
@given(size=st.integers(0, 70), salt=st.integers(0, 2**16))
def test_root_matches_the_rfc_definition_at_every_prefix(size: int, salt: int) -> None:
    leaves = leaves_of(size, salt)
    acc = MerkleAccumulator()
    assert acc.root() == reference_root([])
    for n in range(1, size + 1):
        acc.append(leaves[n - 1])
        assert acc.root() == reference_root(leaves[:n])
    assert merkle_root(leaves) == reference_root(leaves)


@SETTINGS
@given(size=st.integers(1, 70), salt=st.integers(0, 2**16))
def test_every_leaf_proof_verifies(size: int, salt: int) -> None:
    leaves = leaves_of(size, salt)
    root = merkle_root(leaves)
    for index in range(size):
        verify_inclusion(leaves[index], index, size, inclusion_proof(leaves, index), root)


@SETTINGS
@given(size=st.integers(2, 70), salt=st.integers(0, 2**16), data=st.data())
def test_a_wrong_leaf_index_size_or_root_fails(size: int, salt: int, data: st.DataObject) -> None:
    leaves = leaves_of(size, salt)
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    proof = inclusion_proof(leaves, index)
    with pytest.raises(AuditError):
        verify_inclusion(leaves[other], index, size, proof, root)  # wrong leaf
    with pytest.raises(AuditError):
        verify_inclusion(leaves[index], other, size, proof, root)  # wrong index
    with pytest.raises(AuditError):
        verify_inclusion(leaves[index], index, size, proof, merkle_root(leaves[:-1]))  # wrong root
    # (A wrong size is not caught by the path alone when both trees share the path's
    # shape; the signed tree head binds size and root together.)
    if proof:
        flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
        with pytest.raises(AuditError):
            verify_inclusion(leaves[index], index, size, flipped, root)  # tampered path


def test_a_leaf_cannot_pose_as_an_inner_node() -> None:
    leaves = leaves_of(4, 0)
    inner = node_hash(leaf_hash(leaves[0]), leaf_hash(leaves[1]))
    # The two-leaf subtree's hash is not a leaf of any tree with that root.
    with pytest.raises(AuditError):
        verify_inclusion(
            inner,
            0,
            2,
            [node_hash(leaf_hash(leaves[2]), leaf_hash(leaves[3]))],
            merkle_root(leaves),
        )
