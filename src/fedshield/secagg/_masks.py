"""The masks of SecAgg+: self masks, pairwise masks and Shamir holder numbers.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), section 4; Bell et al. 2020 (CCS) restrict the pairs to graph edges.
Shared by :mod:`fedshield.secagg.client` (which adds the masks) and
:mod:`fedshield.secagg.server` (which removes those of the survivors' seeds and of the
dropped clients' pairs)::

    self mask of i      expand(derive(b_i, label="self", parties=(i,)))
    pair mask of i, j   expand(derive(X25519(s_sk_i, s_pk_j), label="pair", parties=sorted((i, j))))

Client ``i`` adds the pair mask with ``j`` if ``i < j`` and subtracts it otherwise, so
the two cancel in the sum.

What misuse breaks: deriving a seed without the round, the federation or the parties
(masks would repeat and cancel between rounds), or unsorted parties for a pair (the two
ends would not agree).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedshield.errors import ProtocolError
from fedshield.secagg import kdf, prg
from fedshield.secagg.messages import Setup

__all__ = ["exchange", "holder_number", "pair_mask", "self_mask"]

RingVector = npt.NDArray[np.unsignedinteger[Any]]


def exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    """Return the X25519 shared secret; an invalid or low-order key is a ``ProtocolError``."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise ProtocolError("key agreement failed: invalid X25519 public key") from exc


def self_mask(b: bytes, *, setup: Setup, owner: str) -> RingVector:
    """Return the self mask of ``owner`` from its 32-byte seed ``b`` (length ``dim + 1``)."""
    seed = kdf.derive(
        b, label="self", federation=setup.federation, round=setup.round, parties=(owner,)
    )
    return prg.expand(seed, length=setup.dim + 1, ring_bits=_ring(setup))


def pair_mask(
    s_sk: X25519PrivateKey, s_pk_other: bytes, *, setup: Setup, me: str, other: str
) -> RingVector:
    """Return the pair mask of ``me`` and ``other`` (the same from both ends).

    The server computes it too, after recovering a dropped client's ``s_sk``.
    """
    seed = kdf.derive(
        exchange(s_sk, s_pk_other),
        label="pair",
        federation=setup.federation,
        round=setup.round,
        parties=tuple(sorted((me, other))),
    )
    return prg.expand(seed, length=setup.dim + 1, ring_bits=_ring(setup))


def holder_number(setup: Setup, participant: str) -> int:
    """Return the Shamir holder number of ``participant``: its 1-based index in the setup."""
    return setup.participants.index(participant) + 1


def _ring(setup: Setup) -> Literal[32, 64]:
    if setup.ring_bits not in prg.RING_BITS:
        raise ProtocolError(f"ring_bits must be 32 or 64, got {setup.ring_bits}")
    return cast(Literal[32, 64], setup.ring_bits)
