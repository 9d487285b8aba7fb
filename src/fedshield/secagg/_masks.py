"""The masks of SecAgg+: self masks, pairwise masks and Shamir holder numbers.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), section 4; Bell et al. 2020 (CCS) restrict the pairs to graph edges.
Shared by :mod:`fedshield.secagg.client` (which adds the masks) and
:mod:`fedshield.secagg.server` (which removes those of the survivors' seeds and of the
dropped clients' pairs)::

    self mask of i      expand(derive(b_i, label="self", parties=(i,)))
    pair mask of i, j   expand(derive(X25519(s_sk_i, s_pk_j), label="pair", parties=sorted((i, j))))

Client ``i`` adds the pair mask with ``j`` if ``i < j`` and subtracts it otherwise, so
the two cancel in the sum. :func:`mask_input` (client) and :func:`prg.accumulate
<fedshield.secagg.prg.accumulate>` over :func:`self_mask_seed` / :func:`pair_mask_seed`
(server) apply many masks to one vector in place without building any of them;
:func:`self_mask` and :func:`pair_mask` return a single mask as a vector.

What misuse breaks: deriving a seed without the round, the federation or the parties
(masks would repeat and cancel between rounds), or unsorted parties for a pair (the two
ends would not agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedshield.errors import ProtocolError
from fedshield.secagg import kdf, prg
from fedshield.secagg.messages import Setup

__all__ = [
    "exchange",
    "holder_number",
    "mask_input",
    "pair_mask",
    "pair_mask_seed",
    "pair_sign",
    "self_mask",
    "self_mask_seed",
]

RingVector = npt.NDArray[np.unsignedinteger[Any]]


def exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    """Return the X25519 shared secret; an invalid or low-order key is a ``ProtocolError``."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise ProtocolError("key agreement failed: invalid X25519 public key") from exc


def self_mask_seed(b: bytes, *, setup: Setup, owner: str) -> bytes:
    """Return the PRG seed of ``owner``'s self mask from its 32-byte seed ``b``."""
    return kdf.derive(
        b, label="self", federation=setup.federation, round=setup.round, parties=(owner,)
    )


def pair_mask_seed(
    s_sk: X25519PrivateKey, s_pk_other: bytes, *, setup: Setup, me: str, other: str
) -> bytes:
    """Return the PRG seed of the pair mask of ``me`` and ``other`` (the same from both ends).

    The server computes it too, after recovering a dropped client's ``s_sk``.
    """
    return kdf.derive(
        exchange(s_sk, s_pk_other),
        label="pair",
        federation=setup.federation,
        round=setup.round,
        parties=tuple(sorted((me, other))),
    )


def pair_sign(me: str, other: str) -> int:
    """Return ``+1`` if ``me`` adds its pair mask with ``other`` (``me < other``), else ``-1``."""
    return 1 if me < other else -1


def self_mask(b: bytes, *, setup: Setup, owner: str) -> RingVector:
    """Return the self mask of ``owner`` from its 32-byte seed ``b`` (length ``dim + 1``)."""
    seed = self_mask_seed(b, setup=setup, owner=owner)
    return prg.expand(seed, length=setup.dim + 1, ring_bits=_ring(setup))


def pair_mask(
    s_sk: X25519PrivateKey, s_pk_other: bytes, *, setup: Setup, me: str, other: str
) -> RingVector:
    """Return the pair mask of ``me`` and ``other`` (the same from both ends)."""
    seed = pair_mask_seed(s_sk, s_pk_other, setup=setup, me=me, other=other)
    return prg.expand(seed, length=setup.dim + 1, ring_bits=_ring(setup))


def mask_input(
    vector: RingVector,
    *,
    b: bytes,
    s_sk: X25519PrivateKey,
    others: Mapping[str, bytes],
    setup: Setup,
    me: str,
) -> None:
    """Add ``me``'s self mask and ``± pair mask`` with every ``j`` in ``others``, in place.

    ``vector += self_mask(b) + sum(pair_sign(me, j) * pair_mask(s_sk, others[j]))``
    modulo ``2**ring_bits``, streamed chunk by chunk (:func:`prg.accumulate
    <fedshield.secagg.prg.accumulate>`). Every seed is derived (and every public key
    checked) before the vector is touched, so a ``ProtocolError`` leaves it unchanged.

    Parameters
    ----------
    vector : numpy.ndarray
        The encoded input, ``dim + 1`` ring elements, updated in place.
    b : bytes
        ``me``'s 32-byte self-mask seed.
    s_sk : X25519PrivateKey
        ``me``'s mask agreement key.
    others : mapping of str to bytes
        Neighbour id to its advertised ``s_pk``.
    setup : Setup
        The round (federation, round, ring).
    me : str
        The masking client's id.
    """
    _ring(setup)
    if vector.shape != (setup.dim + 1,):
        raise ProtocolError(f"a masked vector has {setup.dim + 1} elements, got {vector.shape}")
    terms = [(self_mask_seed(b, setup=setup, owner=me), 1)]
    for other, s_pk in others.items():
        seed = pair_mask_seed(s_sk, s_pk, setup=setup, me=me, other=other)
        terms.append((seed, pair_sign(me, other)))
    prg.accumulate(vector, terms)


def holder_number(setup: Setup, participant: str) -> int:
    """Return the Shamir holder number of ``participant``: its 1-based index in the setup."""
    return setup.participants.index(participant) + 1


def _ring(setup: Setup) -> Literal[32, 64]:
    if setup.ring_bits not in prg.RING_BITS:
        raise ProtocolError(f"ring_bits must be 32 or 64, got {setup.ring_bits}")
    return cast(Literal[32, 64], setup.ring_bits)
