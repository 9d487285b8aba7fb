"""The participant's side of one SecAgg+ round: a state machine, one method per stage.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), with the sparse neighbour graph of Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS); ``docs/secagg.md``
is the design. The server only relays; every participant knows the roster of identity
keys out of band. The client trusts nothing the server says and checks, before it
changes any state:

* the stage order (``on_setup`` -> ``on_advertisements`` -> ``on_shares`` ->
  ``on_survivors`` -> ``on_unmask``, each once) and the federation and round of every
  message (a replay from another round or federation is refused);
* the setup: it is in the graph, the graph is symmetric, its degree is ``min(k, n - 1)``
  and ``k / 2 < t <= k``;
* every advertisement's signature against the roster, and the AES-GCM tag of every share
  (whose associated data binds federation, round, sender and receiver);
* at least ``t`` live neighbours at every stage;
* the consistency signatures: at least ``t`` neighbours signed the very survivor list
  ``U3`` this client was shown;
* **it never reveals both shares (self-mask seed and mask key) of one neighbour**: a seed
  share only for a neighbour in ``U3``, a key share only for one outside it, and it
  remembers what it revealed.

Every refusal raises :class:`~fedshield.errors.ProtocolError` and leaves the client's
state as it was; the caller then leaves the round. Failed signature and MAC checks say
which message failed, never why.

What misuse breaks: reusing a client for a second round (its keys and seed are per round;
build a new one), or giving it a roster that came from the server (a malicious server
would then sign advertisements for everybody). The ``t > k / 2`` check is what makes
"never both shares" a guarantee: an honest holder gives away one share of a neighbour,
so the server would need ``2 t > k`` distinct holders to get both secrets.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedshield.errors import ConfigError, PayloadError, ProtocolError
from fedshield.secagg import kdf, prg, shamir
from fedshield.secagg._masks import exchange, holder_number, mask_input
from fedshield.secagg.messages import (
    Advertise,
    Consistency,
    EncryptedShare,
    MaskedInput,
    Setup,
    ShareKeys,
    SharePlaintext,
    UnmaskRequest,
    UnmaskResponse,
    advertise_bytes,
    consistency_bytes,
    share_aad,
)
from fedshield.secagg.quantize import Quantizer
from fedshield.secagg.randomness import SecureRandom

__all__ = ["SecAggClient", "Stage"]

_NONCE_BYTES = 12


@dataclass(frozen=True)
class _RoundState:
    """What a client fixes at setup: the round's parameters and its two key pairs."""

    setup: Setup
    quantizer: Quantizer
    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    digest: bytes  # of the setup this client was shown; every signature covers it


class Stage(enum.Enum):
    """Where a client is in the round: the next message it accepts."""

    SETUP = "setup"
    ADVERTISEMENTS = "advertisements"
    SHARES = "shares"
    SURVIVORS = "survivors"
    UNMASK = "unmask"
    DONE = "done"


class SecAggClient:
    """One participant in one SecAgg+ round.

    Parameters
    ----------
    identity_key : Ed25519PrivateKey
        This participant's long-term identity key (its certificate's key).
    my_id : str
        This participant's id, as in the roster and the setup.
    roster : mapping of str to Ed25519PublicKey
        Every participant's identity public key, obtained out of band (from the
        federation CA), never from the server.
    rng : SecureRandom
        Source of the round's keys, seed, Shamir coefficients, nonces and rounding.
    federation : str
        The federation this round belongs to; any message for another is refused.
    round : int
        The round number; any message for another round is refused.

    Raises
    ------
    ConfigError
        If ``my_id`` is not in the roster.
    """

    def __init__(
        self,
        identity_key: Ed25519PrivateKey,
        my_id: str,
        roster: Mapping[str, Ed25519PublicKey],
        rng: SecureRandom,
        *,
        federation: str,
        round: int,
    ) -> None:
        if my_id not in roster:
            raise ConfigError(f"participant {my_id!r} is not in the roster")
        self._identity = identity_key
        self._me = my_id
        self._roster = dict(roster)
        self._rng = rng
        self._federation = federation
        self._round = round
        self._stage = Stage.SETUP
        # Filled in as the round goes; None until the stage that sets them.
        self._round_state: _RoundState | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._b = b""  # the self-mask seed, drawn in stage 2
        self._u1: dict[str, Advertise] = {}  # neighbours whose advertisement verified
        self._u2: dict[str, SharePlaintext] = {}  # neighbours whose share decrypted
        self._u3: frozenset[str] = frozenset()
        self._revealed: dict[str, Literal["seed", "key"]] = {}

    @property
    def stage(self) -> Stage:
        """The next stage this client accepts."""
        return self._stage

    @property
    def revealed(self) -> Mapping[str, Literal["seed", "key"]]:
        """Which share (``"seed"`` or ``"key"``) this client revealed for each neighbour."""
        return dict(self._revealed)

    # -- stage 0 -> 1 -------------------------------------------------------------------

    def on_setup(self, setup: Setup) -> Advertise:
        """Check the round's setup and advertise two fresh X25519 public keys.

        Parameters
        ----------
        setup : Setup
            The server's round parameters and neighbour graph.

        Returns
        -------
        Advertise
            ``c_pk`` and ``s_pk``, signed with the identity key.

        Raises
        ------
        ProtocolError
            If the stage, federation or round is wrong, this client is not in the graph,
            the graph is not symmetric, the degree is not ``min(k, n - 1)``, ``t`` is not
            in ``(k / 2, k]``, a participant is missing from the roster, or the ring
            budget could overflow.
        """
        self._expect(Stage.SETUP, Setup, setup)
        graph = setup.neighbour_map()
        if self._me not in graph:
            raise ProtocolError(f"{self._me!r} is not a participant of this round")
        unknown = sorted(set(setup.participants) - set(self._roster))
        if unknown:
            raise ProtocolError(f"setup names participants outside the roster: {unknown}")
        for p, adjacent in graph.items():
            if p in adjacent or not adjacent <= graph.keys():
                raise ProtocolError(f"the graph has a self-loop or unknown node at {p!r}")
            if any(p not in graph[q] for q in adjacent):
                raise ProtocolError(f"the neighbour graph is not symmetric at {p!r}")
        n, k, t = len(setup.participants), setup.k, setup.t
        mine = graph[self._me]
        if len(mine) != min(k, n - 1):
            raise ProtocolError(f"my degree is {len(mine)}, expected min(k={k}, n-1={n - 1})")
        if not (2 * t > min(k, n - 1) and t <= min(k, n - 1)):
            raise ProtocolError(
                f"threshold t={t} must satisfy degree/2 < t <= degree, degree={min(k, n - 1)}"
            )
        if setup.ring_bits not in prg.RING_BITS:
            raise ProtocolError(f"ring_bits must be 32 or 64, got {setup.ring_bits}")
        try:
            quantizer = Quantizer(
                clip_range=setup.clip_range,
                value_bits=setup.value_bits,
                ring_bits=cast(Literal[32, 64], setup.ring_bits),
            )
            quantizer.check_budget(n, setup.max_weight)
        except ConfigError as exc:
            raise ProtocolError(f"unusable setup: {exc.message}") from exc

        state = _RoundState(
            setup=setup,
            quantizer=quantizer,
            c_sk=X25519PrivateKey.from_private_bytes(self._rng.bytes(32)),
            s_sk=X25519PrivateKey.from_private_bytes(self._rng.bytes(32)),
            digest=setup.digest(),
        )
        c_pk = state.c_sk.public_key().public_bytes_raw()
        s_pk = state.s_sk.public_key().public_bytes_raw()
        signed = advertise_bytes(self._federation, self._round, self._me, c_pk, s_pk, state.digest)
        advert = Advertise(
            federation=self._federation,
            round=self._round,
            sender=self._me,
            c_pk=c_pk,
            s_pk=s_pk,
            signature=self._identity.sign(signed),
        )
        self._round_state, self._neighbours = state, mine
        self._stage = Stage.ADVERTISEMENTS
        return advert

    # -- stage 1 -> 2 -------------------------------------------------------------------

    def on_advertisements(self, adverts: Sequence[Advertise]) -> ShareKeys:
        """Verify the neighbours' advertisements and send them shares of ``b`` and ``s_sk``.

        Parameters
        ----------
        adverts : sequence of Advertise
            The advertisements of this client's live neighbours (``U1 ∩ N(i)``).

        Returns
        -------
        ShareKeys
            One AES-GCM ciphertext per advertised neighbour holding its Shamir shares
            (``t`` of the advertised neighbours) of the self-mask seed and the mask key.

        Raises
        ------
        ProtocolError
            On a wrong stage, federation or round, a non-neighbour or duplicate sender,
            a signature that does not verify against the roster, or fewer than ``t``
            advertisements.
        """
        self._expect(Stage.ADVERTISEMENTS, Advertise, *adverts)
        state = self._state()
        setup = state.setup
        accepted: dict[str, Advertise] = {}
        for advert in adverts:
            sender = advert.sender
            if sender not in self._neighbours or sender in accepted:
                raise ProtocolError(f"unexpected or duplicate advertisement from {sender!r}")
            signed = advert.signed_bytes(state.digest)
            self._verify(sender, advert.signature, signed, "advertisement")
            accepted[sender] = advert
        self._need(len(accepted), "advertised neighbours")

        holders = {j: holder_number(setup, j) for j in sorted(accepted)}
        b = self._rng.bytes(32)
        seed_shares = shamir.split(
            b, threshold=setup.t, holders=list(holders.values()), rng=self._rng
        )
        key_shares = shamir.split(
            state.s_sk.private_bytes_raw(),
            threshold=setup.t,
            holders=list(holders.values()),
            rng=self._rng,
        )
        out = []
        for j, x in holders.items():
            plaintext = SharePlaintext(
                sender=self._me,
                receiver=j,
                seed_share=seed_shares[x].to_bytes(),
                key_share=key_shares[x].to_bytes(),
            ).to_bytes()
            nonce = self._rng.bytes(_NONCE_BYTES)
            key = self._share_key(accepted[j].c_pk, sender=self._me, receiver=j)
            aad = share_aad(self._federation, self._round, self._me, j)
            ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)
            out.append(
                EncryptedShare(
                    federation=self._federation,
                    round=self._round,
                    sender=self._me,
                    receiver=j,
                    nonce=nonce,
                    ciphertext=ciphertext,
                )
            )
        self._u1 = accepted
        self._b = b
        self._stage = Stage.SHARES
        return ShareKeys(
            federation=self._federation, round=self._round, sender=self._me, shares=tuple(out)
        )

    # -- stage 2 -> 3 -------------------------------------------------------------------

    def on_shares(
        self,
        shares: Sequence[EncryptedShare],
        *,
        x: npt.ArrayLike | None,
        weight: int,
        integers: npt.NDArray[np.int64] | None = None,
    ) -> MaskedInput:
        """Decrypt the shares addressed to this client and send the masked input.

        Parameters
        ----------
        shares : sequence of EncryptedShare
            The ciphertexts neighbours addressed to this client (``U2 ∩ N(i)``).
        x : array_like
            This client's float update, shape ``(setup.dim,)``; clipped to
            ``[-clip_range, clip_range]`` and stochastically quantized.
        weight : int
            Its integer weight, ``1 <= weight <= setup.max_weight``.
        integers : numpy.ndarray, optional
            Instead of ``x``: an already encoded signed ``int64`` vector of shape
            ``(setup.dim,)`` (distributed DP, :mod:`fedshield.privacy.distributed`),
            summed exactly in a 64-bit ring (two's complement). ``x`` must then be
            ``None`` and ``weight`` 1.

        Returns
        -------
        MaskedInput
            ``encode(x, w) + self mask + Σ ± pairwise masks (mod 2**ring_bits)``.

        Raises
        ------
        ProtocolError
            On a wrong stage, federation or round, a share from a non-advertised or
            duplicate sender or for another receiver, a failed decryption, or fewer than
            ``t`` shares.
        PayloadError
            If ``x`` has the wrong shape or a non-finite value, or ``weight`` is out of
            range.
        """
        self._expect(Stage.SHARES, EncryptedShare, *shares)
        state = self._state()
        setup = state.setup
        values = np.zeros(0)
        if integers is not None:
            if x is not None or weight != 1 or setup.ring_bits != 64:
                raise PayloadError("integer inputs need x=None, weight 1 and a 64-bit ring")
            if integers.dtype != np.int64 or integers.shape != (setup.dim,):
                raise PayloadError(
                    f"integers must be int64 of shape ({setup.dim},), got "
                    f"{integers.dtype} {integers.shape}"
                )
        else:
            values = np.asarray(x, dtype=np.float64)
            if values.shape != (setup.dim,) or not np.isfinite(values).all():
                raise PayloadError(
                    f"x must be a finite vector of shape ({setup.dim},), got shape {values.shape}"
                )
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise PayloadError(f"weight must be an int, got {type(weight).__name__}")
        weight = int(weight)
        if not 1 <= weight <= setup.max_weight:
            raise PayloadError(f"weight must be in [1, {setup.max_weight}], got {weight}")
        received: dict[str, SharePlaintext] = {}
        for share in shares:
            sender = share.sender
            if share.receiver != self._me or sender not in self._u1 or sender in received:
                raise ProtocolError(f"unexpected or duplicate share from {sender!r}")
            key = self._share_key(self._u1[sender].c_pk, sender=sender, receiver=self._me)
            try:
                plaintext = AESGCM(key).decrypt(share.nonce, share.ciphertext, share.aad())
            except InvalidTag as exc:
                raise ProtocolError(f"the share from {sender!r} failed to decrypt") from exc
            opened = SharePlaintext.from_bytes(plaintext)
            if opened.sender != sender or opened.receiver != self._me:
                raise ProtocolError(f"the share from {sender!r} names other parties")
            mine = holder_number(setup, self._me)
            for raw in (opened.seed_share, opened.key_share):
                if shamir.Share.from_bytes(raw).x != mine:
                    raise ProtocolError(f"the share from {sender!r} is for another holder")
            received[sender] = opened
        self._need(len(received), "neighbours' shares")

        if integers is not None:
            # Two's complement: the ring sum read as int64 is the exact signed sum.
            y = np.empty(setup.dim + 1, dtype=np.uint64)
            y[:-1] = integers.view(np.uint64)
            y[-1] = 1
        else:
            y = state.quantizer.encode(values, weight, rng=self._rng)
        # y += self mask + sum of sign(i, j) * pair mask, streamed into y in place.
        mask_input(
            y,
            b=self._b,
            s_sk=state.s_sk,
            others={j: self._u1[j].s_pk for j in sorted(received)},
            setup=setup,
            me=self._me,
        )
        self._u2 = received
        self._stage = Stage.SURVIVORS
        return MaskedInput.from_vector(
            federation=self._federation, round=self._round, sender=self._me, vector=y
        )

    # -- stage 3 -> 4 -------------------------------------------------------------------

    def on_survivors(self, u3: frozenset[str]) -> Consistency:
        """Sign the survivor list ``U3`` (clients whose masked input arrived).

        Parameters
        ----------
        u3 : frozenset of str
            The server's claim of who survived stage 3.

        Returns
        -------
        Consistency
            This client's signature over ``("consistency", federation, round, sorted(U3))``.

        Raises
        ------
        ProtocolError
            On a wrong stage, if ``U3`` names non-participants or misses this client, if
            a neighbour in ``U3`` never sent this client its shares, or if fewer than
            ``t`` neighbours survived.
        """
        self._expect(Stage.SURVIVORS, str, *u3)
        state = self._state()
        setup = state.setup
        survivors = frozenset(u3)
        if not survivors <= set(setup.participants) or self._me not in survivors:
            raise ProtocolError("the survivor list names non-participants or misses me")
        live = survivors & self._neighbours
        if not live <= self._u2.keys():
            raise ProtocolError(f"survivors {sorted(live - self._u2.keys())} never shared with me")
        self._need(len(live), "surviving neighbours")
        signature = self._identity.sign(
            consistency_bytes(self._federation, self._round, sorted(survivors), state.digest)
        )
        self._u3 = survivors
        self._stage = Stage.UNMASK
        return Consistency(
            federation=self._federation,
            round=self._round,
            sender=self._me,
            survivors=tuple(sorted(survivors)),
            signature=signature,
        )

    # -- stage 4 -> 5 -------------------------------------------------------------------

    def on_unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Check the neighbours agree on ``U3``, then reveal one share per neighbour asked.

        Parameters
        ----------
        request : UnmaskRequest
            The consistency messages of this client's surviving neighbours and the
            server's asks: seed shares for ``seed_for``, key shares for ``key_for``.

        Returns
        -------
        UnmaskResponse
            The requested shares. For a neighbour ``j``: the share of ``b_j`` only if
            ``j ∈ U3``, the share of ``s_sk_j`` only if ``j ∉ U3``, never both.

        Raises
        ------
        ProtocolError
            On a wrong stage, federation, round or receiver; a consistency message from
            outside ``U3``, over another survivor list, or with a bad signature; fewer
            than ``t`` neighbours' signatures; or an ask that would reveal both shares of
            a neighbour, a key share of a survivor, a seed share of a dropped client, or
            a share this client does not hold.
        """
        self._expect(Stage.UNMASK, UnmaskRequest, request)
        self._expect(Stage.UNMASK, Consistency, *request.consistency)
        if request.receiver != self._me:
            raise ProtocolError(f"unmask request addressed to {request.receiver!r}")
        both = set(request.seed_for) & set(request.key_for)
        if both:
            raise ProtocolError(f"refusing to reveal both shares of {sorted(both)}")
        for j in request.seed_for:
            if j not in self._u2 or j not in self._u3 or self._revealed.get(j, "seed") != "seed":
                raise ProtocolError(f"refusing to reveal a seed share of {j!r}")
        for j in request.key_for:
            if j not in self._u2 or j in self._u3 or self._revealed.get(j, "key") != "key":
                raise ProtocolError(f"refusing to reveal a key share of {j!r}")
        signed = consistency_bytes(
            self._federation, self._round, sorted(self._u3), self._state().digest
        )
        signers: set[str] = set()
        for message in request.consistency:
            sender = message.sender
            if sender not in self._u3 or sender in signers:
                raise ProtocolError(f"unexpected or duplicate consistency from {sender!r}")
            if frozenset(message.survivors) != self._u3:
                raise ProtocolError(
                    f"{sender!r} signed another survivor list: the server showed "
                    "different survivor sets to different clients"
                )
            self._verify(sender, message.signature, signed, "consistency signature")
            signers.add(sender)
        self._need(len(signers & self._neighbours), "neighbours' consistency signatures")

        for j in request.seed_for:
            self._revealed[j] = "seed"
        for j in request.key_for:
            self._revealed[j] = "key"
        self._stage = Stage.DONE
        return UnmaskResponse(
            federation=self._federation,
            round=self._round,
            sender=self._me,
            seed_shares=tuple((j, self._u2[j].seed_share) for j in request.seed_for),
            key_shares=tuple((j, self._u2[j].key_share) for j in request.key_for),
        )

    # -- helpers ------------------------------------------------------------------------

    def _expect(self, stage: Stage, kind: type[Any], *messages: Any) -> None:
        """Check the stage, then each message's type, federation and round (str: type only)."""
        if self._stage is not stage:
            raise ProtocolError(
                f"{self._me!r} expected stage {self._stage.value!r}, got {stage.value!r}"
            )
        for message in messages:
            if not isinstance(message, kind):
                raise ProtocolError(f"expected {kind.__name__}, got {type(message).__name__}")
            if kind is str:
                continue
            if message.federation != self._federation or message.round != self._round:
                raise ProtocolError(
                    f"message from {message.sender!r} is for federation "
                    f"{message.federation!r} round {message.round}, this is "
                    f"{self._federation!r} round {self._round} (replay?)"
                )

    def _state(self) -> _RoundState:
        if self._round_state is None:  # unreachable after the stage check
            raise ProtocolError("no setup yet")
        return self._round_state

    def _need(self, count: int, what: str) -> None:
        t = self._state().setup.t
        if count < t:
            raise ProtocolError(f"only {count} {what}, threshold t={t}")

    def _verify(self, signer: str, signature: bytes, data: bytes, what: str) -> None:
        try:
            self._roster[signer].verify(signature, data)
        except (InvalidSignature, KeyError) as exc:
            raise ProtocolError(f"the {what} of {signer!r} does not verify") from exc

    def _share_key(self, c_pk_other: bytes, *, sender: str, receiver: str) -> bytes:
        return kdf.derive(
            exchange(self._state().c_sk, c_pk_other),
            label="share",
            federation=self._federation,
            round=self._round,
            parties=(sender, receiver),
        )
