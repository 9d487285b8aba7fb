r"""The coordinator's side of one SecAgg+ round: collect, relay, and unmask only the sum.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), with the sparse neighbour graph of Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS); ``docs/secagg.md``
is the design. The server is a relay and a calculator; the clients enforce privacy
(:mod:`fedshield.secagg.client`). What this class guarantees is *liveness with
honesty*: it forwards exactly what each client needs, refuses messages from
non-participants, duplicates, late or replayed messages, and outputs either the exact
ring sum of the survivors' encoded inputs or :class:`~fedshield.errors.RoundFailedError`
with nothing else.

Stages. The caller feeds a stage's messages with ``receive_*`` and closes it by asking
for the next stage's outgoing messages (``advertisements()``, ``shares()``,
``survivors()``, ``unmask_requests()``); ``finish()`` closes the last one. Sets:
``U1`` advertised, ``U2`` shared keys, ``U3`` sent a masked input, ``U4`` signed the
survivor list, ``U5`` answered the unmask request. The survivors (whose inputs are in
the sum) are ``U3``.

Dropout recovery (``finish``): for each ``j ∈ U3`` the server combines ``t`` shares of
``b_j`` and removes ``j``'s self mask; for each ``j ∈ U2 \ U3`` whose pairwise masks
some survivor added, it combines ``t`` shares of ``s_sk_j``, checks the result against
``j``'s advertised ``s_pk``, and removes every mask ``k ∈ U3`` added with ``j``. Every
needed secret's share count is checked before anything is combined, so a failed round
reveals nothing.

What misuse breaks: feeding a stage after it closed (refused), or reusing a server for a
second round (build a new one: the sets and shares are per round). The class does not
verify identity signatures (it has no roster); a client's signatures are checked by the
other clients. Shares returned by a client are only as honest as that client: a forged
share makes ``combine`` fail or (for ``s_sk``) the key check fail, and the round fails.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedshield.errors import ProtocolError, RoundFailedError
from fedshield.secagg import prg, shamir
from fedshield.secagg._masks import holder_number, pair_mask_seed, pair_sign, self_mask_seed
from fedshield.secagg.messages import (
    Advertise,
    Consistency,
    EncryptedShare,
    MaskedInput,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SecAggServer", "ServerStage"]

RingVector = npt.NDArray[np.unsignedinteger[Any]]


class ServerStage(enum.Enum):
    """Which clients' messages the server is collecting."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"


class SecAggServer:
    """The coordinator of one SecAgg+ round.

    Parameters
    ----------
    setup : Setup
        The round's parameters and neighbour graph, as sent to every client.
    """

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        self._graph = setup.neighbour_map()
        self._stage = ServerStage.ADVERTISE
        self._adverts: dict[str, Advertise] = {}
        # receiver -> sender -> ciphertext; the senders are the U2 ∩ N(receiver) each
        # receiver masked with, which is exactly what unmasking must undo.
        self._inbox: dict[str, dict[str, EncryptedShare]] = {}
        self._share_senders: set[str] = set()
        self._forwarded: dict[str, frozenset[str]] = {}
        self._masked: dict[str, MaskedInput] = {}
        self._consistency: dict[str, Consistency] = {}
        self._requests: dict[str, UnmaskRequest] = {}
        self._responses: dict[str, UnmaskResponse] = {}

    @property
    def setup(self) -> Setup:
        """The round's setup."""
        return self._setup

    @property
    def stage(self) -> ServerStage:
        """The stage whose messages the server is collecting."""
        return self._stage

    # -- stage 1 ------------------------------------------------------------------------

    def receive_advertise(self, message: Advertise) -> None:
        """Collect one client's key advertisement (stage 1).

        Raises
        ------
        ProtocolError
            If the stage is over, the federation or round is wrong, or the sender is
            not a participant or already advertised.
        """
        self._accept(
            ServerStage.ADVERTISE, Advertise, message, self._adverts, allowed=self._graph.keys()
        )
        self._adverts[message.sender] = message

    def advertisements(self) -> dict[str, tuple[Advertise, ...]]:
        """Close stage 1; return for each client in ``U1`` its neighbours' advertisements.

        Raises
        ------
        RoundFailedError
            If fewer than ``t + 1`` clients advertised (nobody could find ``t`` live
            neighbours).
        """
        self._close(ServerStage.ADVERTISE, ServerStage.SHARE, self._adverts.keys())
        return {
            i: tuple(self._adverts[j] for j in sorted(self._graph[i] & self._adverts.keys()))
            for i in sorted(self._adverts)
        }

    # -- stage 2 ------------------------------------------------------------------------

    def receive_shares(self, message: ShareKeys) -> None:
        """Collect one client's encrypted shares (stage 2).

        Raises
        ------
        ProtocolError
            If the stage is over, the federation or round is wrong, the sender did not
            advertise or already sent shares, or a ciphertext is mislabelled or addressed
            to a non-neighbour, a non-advertiser or twice to one receiver.
        """
        self._accept(
            ServerStage.SHARE, ShareKeys, message, self._share_senders, allowed=self._adverts.keys()
        )
        sender = message.sender
        receivers: set[str] = set()
        for share in message.shares:
            self._check_header(share)
            receiver = share.receiver
            if (
                share.sender != sender
                or receiver not in self._graph[sender]
                or receiver not in self._adverts
                or receiver in receivers
            ):
                raise ProtocolError(f"{sender!r} sent a share for {receiver!r} it may not send")
            receivers.add(receiver)
        for share in message.shares:
            self._inbox.setdefault(share.receiver, {})[sender] = share
        self._share_senders.add(sender)

    def shares(self) -> dict[str, tuple[EncryptedShare, ...]]:
        """Close stage 2; return for each client in ``U2`` the ciphertexts addressed to it.

        Raises
        ------
        RoundFailedError
            If fewer than ``t + 1`` clients sent shares.
        """
        self._close(ServerStage.SHARE, ServerStage.MASKED, self._share_senders)
        out = {}
        for i in sorted(self._share_senders):
            inbox = self._inbox.get(i, {})
            senders = sorted(inbox.keys() & self._share_senders)
            self._forwarded[i] = frozenset(senders)
            out[i] = tuple(inbox[j] for j in senders)
        return out

    # -- stage 3 ------------------------------------------------------------------------

    def receive_masked(self, message: MaskedInput) -> None:
        """Collect one client's masked input (stage 3).

        Raises
        ------
        ProtocolError
            If the stage is over, the federation or round is wrong, the sender was not
            forwarded shares or already sent its input, or the vector's ring or length
            is wrong.
        """
        self._accept(
            ServerStage.MASKED, MaskedInput, message, self._masked, allowed=self._forwarded.keys()
        )
        if message.ring_bits != self._setup.ring_bits:
            raise ProtocolError(f"{message.sender!r} sent a {message.ring_bits}-bit vector")
        if message.vector.shape != (self._setup.dim + 1,):
            raise ProtocolError(
                f"{message.sender!r} sent {message.vector.size} ring elements, "
                f"expected dim + 1 = {self._setup.dim + 1}"
            )
        self._masked[message.sender] = message

    def survivors(self) -> frozenset[str]:
        """Close stage 3; return ``U3``, the survivor list every client in it must sign.

        Raises
        ------
        RoundFailedError
            If fewer than ``t + 1`` masked inputs arrived.
        """
        self._close(ServerStage.MASKED, ServerStage.CONSISTENCY, self._masked.keys())
        return frozenset(self._masked)

    # -- stage 4 ------------------------------------------------------------------------

    def receive_consistency(self, message: Consistency) -> None:
        """Collect one client's signature over ``U3`` (stage 4).

        The signature itself is checked by the other clients, which hold the roster.

        Raises
        ------
        ProtocolError
            If the stage is over, the federation or round is wrong, the sender is not in
            ``U3`` or already signed, or it signed another survivor list.
        """
        self._accept(
            ServerStage.CONSISTENCY,
            Consistency,
            message,
            self._consistency,
            allowed=self._masked.keys(),
        )
        if frozenset(message.survivors) != self._masked.keys():
            raise ProtocolError(f"{message.sender!r} signed a different survivor list")
        self._consistency[message.sender] = message

    def unmask_requests(self) -> dict[str, UnmaskRequest]:
        """Close stage 4; return each signer's unmask request.

        A client ``i`` is sent the consistency messages of its neighbours in ``U4`` and
        asked for its shares of ``b_j`` for its share senders ``j ∈ U3`` and of
        ``s_sk_j`` for its share senders ``j ∉ U3`` whose masks some survivor added.

        Raises
        ------
        RoundFailedError
            If fewer than ``t + 1`` clients signed.
        """
        self._close(ServerStage.CONSISTENCY, ServerStage.UNMASK, self._consistency.keys())
        needed_keys = self._dropped_to_recover()
        for i in sorted(self._consistency):
            senders = self._forwarded[i]
            self._requests[i] = UnmaskRequest(
                federation=self._setup.federation,
                round=self._setup.round,
                sender=self._setup.sender,
                receiver=i,
                consistency=tuple(
                    self._consistency[j] for j in sorted(self._graph[i] & self._consistency.keys())
                ),
                seed_for=tuple(sorted(senders & self._masked.keys())),
                key_for=tuple(sorted(senders & needed_keys)),
            )
        return dict(self._requests)

    # -- stage 5 ------------------------------------------------------------------------

    def receive_unmask(self, message: UnmaskResponse) -> None:
        """Collect one client's revealed shares (stage 5).

        Raises
        ------
        ProtocolError
            If the stage is over, the federation or round is wrong, the sender was not
            asked or already answered, or it returned shares it was not asked for.
        """
        self._accept(
            ServerStage.UNMASK,
            UnmaskResponse,
            message,
            self._responses,
            allowed=self._requests.keys(),
        )
        request = self._requests[message.sender]
        if (
            tuple(o for o, _ in message.seed_shares) != request.seed_for
            or tuple(o for o, _ in message.key_shares) != request.key_for
        ):
            raise ProtocolError(f"{message.sender!r} did not answer what it was asked")
        self._responses[message.sender] = message

    def finish(self) -> tuple[RingVector, int, tuple[str, ...]]:
        """Close stage 5 and unmask the sum of the survivors' encoded inputs.

        Returns
        -------
        ring_sum : numpy.ndarray
            ``uint32``/``uint64`` of shape ``(dim + 1,)``: the ring sum of the survivors'
            ``encode(x_i, w_i)``; its last element is the total weight. Decode it with
            :meth:`fedshield.secagg.quantize.Quantizer.decode`.
        total_weight : int
            ``Σ w_i`` over the survivors.
        survivors : tuple of str
            ``U3``, sorted.

        Raises
        ------
        RoundFailedError
            If any needed secret has fewer than ``t`` revealed shares, or a recovered
            mask key does not match its advertisement. Nothing is combined before every
            share count has been checked.
        ProtocolError
            If called before the unmask stage.
        """
        if self._stage is not ServerStage.UNMASK:
            raise ProtocolError(f"finish() during stage {self._stage.value!r}")
        setup = self._setup
        t = setup.t
        survivors = tuple(sorted(self._masked))
        seeds: dict[str, dict[int, shamir.Share]] = {j: {} for j in survivors}
        keys: dict[str, dict[int, shamir.Share]] = {j: {} for j in self._dropped_to_recover()}
        for holder, response in self._responses.items():
            x = holder_number(setup, holder)
            for pool, pairs in ((seeds, response.seed_shares), (keys, response.key_shares)):
                for owner, raw in pairs:
                    try:
                        share = shamir.Share.from_bytes(raw)
                    except ProtocolError:
                        continue  # a garbled share counts as missing
                    if share.x == x:
                        pool[owner][x] = share
        short = sorted(j for pool in (seeds, keys) for j, got in pool.items() if len(got) < t)
        self._stage = ServerStage.DONE
        if short:
            raise RoundFailedError(
                f"secure aggregation round {setup.round} failed: fewer than t={t} shares "
                f"for the secrets of {len(short)} participant(s) {short}; nothing unmasked",
                hint="Too many participants dropped out; retry the round.",
            )

        # First every seed (Shamir, X25519, HKDF), then one streamed pass over the sum.
        terms: list[tuple[bytes, int]] = []
        try:
            for j in survivors:
                b = shamir.combine(seeds[j], threshold=t)
                terms.append((self_mask_seed(b, setup=setup, owner=j), -1))
            for j, key_pool in keys.items():
                s_sk = X25519PrivateKey.from_private_bytes(shamir.combine(key_pool, threshold=t))
                if s_sk.public_key().public_bytes_raw() != self._adverts[j].s_pk:
                    raise ProtocolError(f"the recovered mask key of {j!r} does not match")
                for k in survivors:
                    if j not in self._forwarded[k]:
                        continue
                    seed = pair_mask_seed(s_sk, self._adverts[k].s_pk, setup=setup, me=j, other=k)
                    # k added pair_sign(k, j) * mask; remove it.
                    terms.append((seed, -pair_sign(k, j)))
        except ProtocolError as exc:
            raise RoundFailedError(
                f"secure aggregation round {setup.round} failed: {exc.message}; nothing unmasked",
                hint="A participant returned a forged or corrupt share; retry without it.",
            ) from exc
        dtype = np.uint32 if setup.ring_bits == 32 else np.uint64
        total: RingVector = np.zeros(setup.dim + 1, dtype=dtype)
        for j in survivors:
            np.add(total, self._masked[j].vector, out=total)
        prg.accumulate(total, terms)
        return total, int(total[-1]), survivors

    # -- helpers ------------------------------------------------------------------------

    def _dropped_to_recover(self) -> frozenset[str]:
        r"""``j ∈ U2 \ U3`` with whom some survivor masked (so its ``s_sk`` is needed)."""
        return frozenset(
            j for k in self._masked for j in self._forwarded[k] if j not in self._masked
        )

    def _check_header(self, message: Any) -> None:
        if message.federation != self._setup.federation or message.round != self._setup.round:
            raise ProtocolError(
                f"message from {message.sender!r} is for federation {message.federation!r} "
                f"round {message.round}, this is {self._setup.federation!r} round "
                f"{self._setup.round} (replay?)"
            )

    def _accept(
        self,
        stage: ServerStage,
        kind: type[Any],
        message: Any,
        seen: Mapping[str, Any] | set[str],
        *,
        allowed: Any,
    ) -> None:
        if not isinstance(message, kind):
            raise ProtocolError(f"expected {kind.__name__}, got {type(message).__name__}")
        if self._stage is not stage:
            raise ProtocolError(
                f"{type(message).__name__} from {message.sender!r} arrived during stage "
                f"{self._stage.value!r}"
            )
        self._check_header(message)
        if message.sender not in allowed:
            raise ProtocolError(f"{message.sender!r} may not send in stage {stage.value!r}")
        if message.sender in seen:
            raise ProtocolError(f"duplicate {type(message).__name__} from {message.sender!r}")

    def _close(self, stage: ServerStage, following: ServerStage, senders: Collection[str]) -> None:
        if self._stage is not stage:
            raise ProtocolError(f"cannot close stage {stage.value!r} during {self._stage.value!r}")
        count = len(senders)
        if count < self._setup.t + 1:
            self._stage = ServerStage.DONE
            raise RoundFailedError(
                f"secure aggregation round {self._setup.round} failed: only {count} "
                f"client(s) completed stage {stage.value!r}, at least t + 1 = "
                f"{self._setup.t + 1} needed; nothing unmasked",
                hint="Too many participants dropped out; retry the round.",
            )
        self._stage = following
