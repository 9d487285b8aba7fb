"""SecAgg+ over the network, coordinator side: one relay per secure fit round.

The pure :class:`~fedshield.secagg.server.SecAggServer` collects messages and unmasks
the sum. This relay adds what a network round needs around it:

* *when* the protocol starts: once every selected participant has reported its
  training (or the training deadline passed), over those who reported;
* *groups* (``secure_aggregation.min_group_size``): a random split, one server each;
* *what each participant fetches* with its long-poll: the stage it owes and that
  stage's input (the setup plus the certificates of its group, its neighbours'
  advertisements, the shares addressed to it, the survivor list, its unmask request);
* *deadlines*: a stage closes as soon as everyone who owes it answered or refused,
  or when ``stage_timeout_s`` passed; who has not answered then has dropped out;
* *who may speak*: a message's ``sender`` must be the participant the TLS certificate
  names; anything else is refused.

The relay holds no update in the clear: it sees masked vectors and the unmasked sum.
It is a shell object driven by :class:`~fedshield.federation.service.CoordinatorService`
(clock and certificates come in as arguments; one lock guards its state).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedshield.config import SecureAggregationConfig
from fedshield.errors import (
    ConfigError,
    FedshieldError,
    IdentityError,
    PayloadError,
    ProtocolError,
    RoundFailedError,
)
from fedshield.federation.coordinator import Coordinator, utcnow
from fedshield.federation.round import SecureProgress
from fedshield.identity import signing_key_of
from fedshield.privacy.distributed import DistributedEncoding
from fedshield.secagg import SecAggServer, SecureRandom
from fedshield.secagg.driver import SecAggConfig, plan_round
from fedshield.secagg.graph import split_groups
from fedshield.secagg.messages import (
    Advertise,
    Consistency,
    MaskedInput,
    Setup,
    ShareKeys,
    UnmaskResponse,
)
from fedshield.secagg.quantize import Quantizer
from fedshield.secagg.wire import from_wire, to_wire
from fedshield.transport.messages import SECAGG_STAGES, SecAggStage

__all__ = [
    "SecureAggregation",
    "SecureRelay",
    "SecureSum",
    "check_secure_sum",
    "secagg_params",
    "secagg_round",
    "usable_members",
]

_DONE = "done"
_HELD = "held"  # signed its survivor list; waits for every group before unmasking
_FINISHING = "finishing"  # unmasking, outside the lock


def secagg_round(round: int, attempt: int) -> int:
    """Return the SecAgg+ round id of a fit round's attempt (keys and masks never repeat).

    Raises
    ------
    ProtocolError
        If ``attempt`` is outside 1..999 (the id would collide with another round's).
    """
    if not 1 <= attempt <= 999 or round < 0:
        raise ProtocolError(f"round {round} attempt {attempt} has no secure aggregation id")
    return round * 1000 + attempt


def secagg_params(
    config: SecureAggregationConfig, federation: str, round: int, attempt: int
) -> SecAggConfig:
    """Return the pure core's parameters for one fit round's attempt, from the config."""
    return SecAggConfig(
        federation=federation,
        round=secagg_round(round, attempt),
        clip_range=config.clip_range,
        ring_bits=config.ring_bits,
        max_weight=config.max_weight,
        k=config.neighbours,
        threshold=config.threshold,
        dropout=config.dropout,
        corruption=config.corruption,
    )


@dataclass(frozen=True)
class SecureSum:
    """What the relay hands to the round logic: only sums, never an update.

    Attributes
    ----------
    mean : numpy.ndarray
        The weighted mean of the survivors' (clipped, quantized) updates, float64.
    total_weight : int
        The sum of the survivors' weights.
    survivors : tuple of str
        Everyone whose input is in the sum.
    groups : tuple of (tuple of str, int)
        Per group: its survivors and their total weight (the coordinator learns one
        sum per group, nothing finer).
    group_means : tuple of numpy.ndarray
        Per group (same order): the weighted mean of its survivors' updates, which a
        robust rule combines in group-wise mode.
    """

    mean: np.ndarray
    total_weight: int
    survivors: tuple[str, ...]
    groups: tuple[tuple[tuple[str, ...], int], ...]
    group_means: tuple[np.ndarray, ...] = ()
    noise_shares: int = 0
    """Distributed DP: how many participants each added ``1/n`` of the noise."""


@dataclass
class _Group:
    setup: Setup
    quantizer: Quantizer
    server: SecAggServer
    certificates: dict[str, str]
    stage: str = "advertise"
    deadline: datetime = datetime.min
    owed: set[str] = field(default_factory=set)
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    result: tuple[np.ndarray, int, tuple[str, ...]] | None = None
    failure: str | None = None


class SecureRelay:
    """The network shell of one secure fit round (one :class:`SecAggServer` per group).

    Parameters
    ----------
    progress : SecureProgress
        The open round, as the round machine reports it.
    members : mapping of str to bytes
        The participants that take part (they reported their training) and the DER
        certificate each connected with; relayed so that peers learn each other's
        identity keys from the CA, not from the coordinator.
    federation : str
        The federation id.
    config : SecureAggregationConfig
        The ``[secure_aggregation]`` table.
    dim : int
        Length of the flat update vector.
    now : datetime
        When the first stage opens.
    rng : SecureRandom
        Source of the groups and the neighbour graphs.
    min_survivors : int
        Fewest survivors (over all groups) worth unmasking; with fewer, the round fails
        before anything is unmasked.
    encoding_for : callable, optional
        Distributed DP: ``encoding_for(n, seed)`` returns the round's
        :class:`~fedshield.privacy.distributed.DistributedEncoding` for ``n`` members and
        a fresh 32-byte rotation seed (or ``None`` without distributed DP). Its public
        settings travel with the setup; the members' signed integers are summed and
        decoded with it, and the vector length is the rotation's.

    Raises
    ------
    ConfigError
        If the members cannot form a round (fewer than 2, fewer than
        ``min_group_size``, or no valid threshold).
    IdentityError
        If a member's certificate carries no signing key (filter with
        :func:`usable_members` first).

    The relay checks every advertisement's and consistency message's signature with
    the signer's certificate key before it forwards it, so one participant's forged
    signature costs only that participant its place, not its neighbours their round.
    No group is sent unmask requests until every group has signed its survivor list,
    enough participants survived overall, and there is time to unmask: a sum is never
    revealed and then thrown away.
    """

    def __init__(
        self,
        progress: SecureProgress,
        members: Mapping[str, bytes],
        *,
        federation: str,
        config: SecureAggregationConfig,
        dim: int,
        now: datetime,
        rng: SecureRandom,
        min_survivors: int = 2,
        encoding_for: Callable[[int, bytes], DistributedEncoding | None] | None = None,
    ) -> None:
        self.round = progress.round
        self.attempt = progress.attempt
        self.round_deadline = progress.deadline
        self.stage_timeout = timedelta(seconds=config.stage_timeout_s)
        # Unmasking and decoding must fit before the round's deadline: a sum the round
        # can no longer take would have been revealed for nothing.
        self.unmask_by = progress.deadline - timedelta(seconds=min(5.0, config.stage_timeout_s / 2))
        self.min_survivors = min_survivors
        self._lock = threading.Lock()
        self._keys = {name: _signing_key(name, der) for name, der in members.items()}
        names = sorted(members)
        if config.min_group_size is None:
            if len(names) < 2:
                raise ConfigError(
                    f"secure aggregation needs at least 2 participants, {len(names)} reported"
                )
            parts = [tuple(names)]
        else:
            parts = split_groups(names, min_size=config.min_group_size, rng=rng)
        params = secagg_params(config, federation, progress.round, progress.attempt)
        self.encoding = encoding_for(len(names), rng.bytes(32)) if encoding_for else None
        extra: dict[str, Any] = {}
        if self.encoding is not None:
            dim = self.encoding.rotation.padded
            extra["ddgauss"] = self.encoding.public()
        self.noise_shares = len(names) if self.encoding is not None else 0
        self.groups: list[_Group] = []
        self._group_of: dict[str, _Group] = {}
        for part in parts:
            setup, quantizer = plan_round(params, part, dim=dim, rng=rng)
            certificates = {name: base64.b64encode(members[name]).decode("ascii") for name in part}
            group = _Group(setup, quantizer, SecAggServer(setup), certificates)
            payload = {"setup": to_wire(setup), "certificates": certificates, **extra}
            self._open_stage(group, "advertise", {name: payload for name in part}, now)
            self.groups.append(group)
            self._group_of.update(dict.fromkeys(part, group))

    # -- participants ---------------------------------------------------------------

    def task_for(self, name: str) -> tuple[SecAggStage, dict[str, Any]] | None:
        """Return the stage ``name`` owes now and its input, or None."""
        with self._lock:
            group = self._group_of.get(name)
            if group is None or name not in group.owed:
                return None
            return _stage(group.stage), group.outbox[name]

    def owes(self, name: str, stage: str) -> Setup:
        """Raise :class:`ProtocolError` unless ``name`` owes ``stage`` now; return its setup.

        The shell asks this before it reads a request body.
        """
        with self._lock:
            group = self._group_of.get(name)
            if group is None:
                raise ProtocolError(
                    f"participant {name!r} is not in round {self.round}'s secure aggregation"
                )
            if group.stage != stage or name not in group.owed:
                raise ProtocolError(
                    f"participant {name!r} owes no {stage!r} message now "
                    f"(the group is at stage {group.stage!r})"
                )
            return group.setup

    def receive(self, name: str, stage: str, body: bytes | object) -> None:
        """Accept ``name``'s message for ``stage``: JSON for most, raw bytes for masked.

        A message that is refused (malformed, for another round, not what was asked)
        takes its sender out of the stage, exactly like a dropout.

        Raises
        ------
        ProtocolError
            If ``name`` owes no such message, or the message is refused.
        PayloadError
            If a masked input has the wrong size.
        """
        setup = self.owes(name, stage)
        try:
            message = _decode(stage, body, setup=setup, sender=name)
            with self._lock:
                group = self._group_of[name]
                if group.stage != stage or name not in group.owed:
                    raise ProtocolError(f"participant {name!r} already answered {stage!r}")
                if isinstance(message, Advertise | Consistency):
                    signed = message.signed_bytes(group.setup.digest())
                    try:
                        self._keys[name].verify(message.signature, signed)
                    except InvalidSignature as exc:
                        raise ProtocolError(
                            f"the {stage!r} signature of {name!r} does not verify with its "
                            "certificate's signing key"
                        ) from exc
                _deliver(group.server, message)
                group.owed.discard(name)
        except (ProtocolError, PayloadError) as exc:
            self.refuse(name, stage, f"message refused: {exc.message}")
            raise

    def refuse(self, name: str, stage: str, reason: str) -> None:
        """Record that ``name`` leaves the round at ``stage`` (it refused, or was refused)."""
        with self._lock:
            group = self._group_of.get(name)
            if group is None or group.stage != stage or name not in group.owed:
                return
            group.owed.discard(name)
            group.refused[name] = f"{stage}: {reason}"

    # -- driving --------------------------------------------------------------------

    def step(self, now: datetime) -> bool:
        """Close every stage that is complete or past its deadline; True if any moved.

        Unmasking (the expensive part) runs outside the lock, so participants'
        requests are answered meanwhile.
        """
        moved = False
        finishing: list[_Group] = []
        with self._lock:
            for group in self.groups:
                ready = group.stage in SECAGG_STAGES and (not group.owed or now >= group.deadline)
                if not ready:
                    continue
                moved = True
                if group.stage == "unmask":
                    group.stage, group.owed = _FINISHING, set()
                    finishing.append(group)
                elif group.stage == "consistency":
                    self._hold(group)
                else:
                    self._advance(group, now)
            moved |= self._release(now)
        for group in finishing:
            try:
                ring_sum, total_weight, survivors = group.server.finish()
                if self.encoding is not None:
                    if total_weight != len(survivors):
                        raise RoundFailedError(
                            f"the distributed sum counts {total_weight} inputs for "
                            f"{len(survivors)} survivors: the sum is not used"
                        )
                    signed = np.asarray(ring_sum[:-1], dtype=np.uint64).view(np.int64)
                    mean = self.encoding.decode(signed, denominator=len(survivors))
                else:
                    mean, _ = group.quantizer.decode(ring_sum, total_weight)
            except FedshieldError as exc:
                # Missing shares, a forged share, a total weight that wrapped to 0.
                with self._lock:
                    group.failure, group.stage = exc.message, _DONE
                continue
            with self._lock:
                group.result, group.stage = (mean, total_weight, survivors), _DONE
        return moved

    def outcome(self) -> SecureSum | None:
        """Return the combined sum once every group is done; None while one still runs.

        Raises
        ------
        RoundFailedError
            If a group failed: its participants' inputs cannot be unmasked, and the
            round is retried (no partial sum is used).
        """
        with self._lock:
            if any(g.stage != _DONE for g in self.groups):
                return None
            failed = [g.failure for g in self.groups if g.failure is not None]
            if failed:
                raise RoundFailedError(failed[0])
            results = [g.result for g in self.groups if g.result is not None]
        total = sum(weight for _, weight, _ in results)
        if total <= 0:
            raise RoundFailedError("secure aggregation summed a total weight of 0")
        mean = sum((m * (w / total) for m, w, _ in results), start=np.zeros_like(results[0][0]))
        survivors = tuple(sorted(p for _, _, group in results for p in group))
        groups = tuple((group, weight) for _, weight, group in results)
        return SecureSum(
            mean=mean,
            total_weight=total,
            survivors=survivors,
            groups=groups,
            group_means=tuple(m for m, _, _ in results),
            noise_shares=self.noise_shares,
        )

    def refusals(self) -> dict[str, str]:
        """Participants that left the protocol by refusing (or being refused), and why."""
        with self._lock:
            return {name: why for g in self.groups for name, why in g.refused.items()}

    def stages(self) -> dict[str, str]:
        """Each group's current stage, keyed by its first member (for status and logs)."""
        with self._lock:
            return {g.setup.participants[0]: g.stage for g in self.groups}

    # -- helpers --------------------------------------------------------------------

    def _open_stage(
        self, group: _Group, stage: str, outbox: dict[str, dict[str, Any]], now: datetime
    ) -> None:
        group.stage = stage
        group.outbox = outbox
        group.owed = set(outbox)
        group.deadline = min(now + self.stage_timeout, self.unmask_by)

    def _hold(self, group: _Group) -> None:
        """Close the consistency stage; keep the unmask requests until every group is held."""
        try:
            requests = group.server.unmask_requests()
        except RoundFailedError as exc:
            group.failure, group.stage, group.owed = exc.message, _DONE, set()
            return
        group.stage, group.owed = _HELD, set()
        group.outbox = {n: {"request": to_wire(r)} for n, r in requests.items()}

    def _release(self, now: datetime) -> bool:
        """Open the unmask stage of every group at once, or fail them all unmasked."""
        held = [g for g in self.groups if g.stage == _HELD]
        if not held or any(g.stage in SECAGG_STAGES for g in self.groups):
            return False  # a group is still running its earlier stages
        reason = None
        failed = [g.failure for g in self.groups if g.failure is not None]
        survivors = sum(len(g.outbox) for g in held)
        if failed:
            reason = f"another group failed ({failed[0]})"
        elif survivors < self.min_survivors:
            reason = (
                f"only {survivors} participant(s) signed the survivor list, at least "
                f"{self.min_survivors} are required"
            )
        elif now >= self.unmask_by:
            reason = "no time is left before the round's deadline to unmask the sum"
        for group in held:
            if reason is not None:
                group.failure = (
                    f"secure aggregation round {group.setup.round}: {reason}; nothing unmasked"
                )
                group.stage, group.outbox = _DONE, {}
            else:
                self._open_stage(group, "unmask", group.outbox, now)
        return True

    def _advance(self, group: _Group, now: datetime) -> None:
        server = group.server
        try:
            following = SECAGG_STAGES[SECAGG_STAGES.index(_stage(group.stage)) + 1]
            outbox: dict[str, dict[str, Any]]
            if following == "share":
                adverts = server.advertisements()
                outbox = {
                    n: {"advertisements": [to_wire(a) for a in got]} for n, got in adverts.items()
                }
            elif following == "masked":
                shares = server.shares()
                outbox = {n: {"shares": [to_wire(c) for c in got]} for n, got in shares.items()}
            else:
                survivors = sorted(server.survivors())
                outbox = {n: {"survivors": survivors} for n in survivors}
        except RoundFailedError as exc:
            group.failure, group.stage, group.owed = exc.message, _DONE, set()
            return
        self._open_stage(group, following, outbox, now)


def _signing_key(name: str, der: bytes) -> Ed25519PublicKey:
    try:
        return signing_key_of(x509.load_der_x509_certificate(der))
    except ValueError as exc:
        raise IdentityError(f"the certificate of {name!r} is not valid DER") from exc


def usable_members(certificates: Mapping[str, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Split participants into those whose certificate carries a signing key and the rest.

    Returns
    -------
    tuple of (dict, dict)
        ``{name: certificate DER}`` of the usable ones, ``{name: why not}`` of the others
        (for example a kit provisioned before signing keys existed). Leaving them out
        keeps their peers from refusing the whole roster.
    """
    usable: dict[str, bytes] = {}
    excluded: dict[str, str] = {}
    for name, der in certificates.items():
        try:
            _signing_key(name, der)
        except IdentityError as exc:
            excluded[name] = exc.message
            continue
        usable[name] = der
    return usable, excluded


def _stage(name: str) -> SecAggStage:
    for stage in SECAGG_STAGES:
        if stage == name:
            return stage
    raise ProtocolError(f"unknown secure aggregation stage {name!r}")


_KINDS: dict[str, type[Advertise] | type[ShareKeys] | type[Consistency] | type[UnmaskResponse]]
_KINDS = {
    "advertise": Advertise,
    "share": ShareKeys,
    "consistency": Consistency,
    "unmask": UnmaskResponse,
}


def _decode(
    stage: str, body: bytes | object, *, setup: Setup, sender: str
) -> Advertise | ShareKeys | MaskedInput | Consistency | UnmaskResponse:
    if stage == "masked":
        if not isinstance(body, bytes):
            raise ProtocolError("a masked input travels as raw bytes")
        expected = (setup.dim + 1) * setup.ring_bits // 8
        if len(body) != expected:
            raise PayloadError(
                f"masked input is {len(body)} bytes; round {setup.round} needs {expected} "
                f"({setup.dim + 1} elements of {setup.ring_bits} bits)"
            )
        return MaskedInput(
            federation=setup.federation,
            round=setup.round,
            sender=sender,
            ring_bits=setup.ring_bits,
            data=body,
        )
    message = from_wire(_KINDS[stage], body)
    if message.sender != sender:
        raise ProtocolError(
            f"the message names sender {message.sender!r} but comes from {sender!r}"
        )
    return message


def _deliver(
    server: SecAggServer,
    message: Advertise | ShareKeys | MaskedInput | Consistency | UnmaskResponse,
) -> None:
    receive: dict[type[Any], Callable[[Any], None]] = {
        Advertise: server.receive_advertise,
        ShareKeys: server.receive_shares,
        MaskedInput: server.receive_masked,
        Consistency: server.receive_consistency,
        UnmaskResponse: server.receive_unmask,
    }
    receive[type(message)](message)


def check_secure_sum(
    outcome: SecureSum, reported: Mapping[str, int], config: SecureAggregationConfig
) -> None:
    """Refuse a sum that cannot be the survivors' honest inputs.

    The total weight must be what the survivors reported (each weight is
    ``min(examples, max_weight)``) and every mean coordinate must lie within the
    clipping range. A participant that masked another weight, or forged a share, fails
    the round here instead of corrupting the model. (Which participant did it stays
    hidden: that is what secure aggregation hides.)

    Raises
    ------
    RoundFailedError
        With what does not add up.
    """
    expected = sum(min(reported.get(n, 0), config.max_weight) for n in outcome.survivors)
    if outcome.total_weight != expected:
        raise RoundFailedError(
            f"the secure sum's total weight is {outcome.total_weight}, but the survivors "
            f"reported {expected}: a participant masked another weight or sent a forged "
            "share; the sum is not used"
        )
    largest = float(np.max(np.abs(outcome.mean))) if outcome.mean.size else 0.0
    if not largest <= config.clip_range * (1 + 1e-9):
        raise RoundFailedError(
            f"the secure mean has a coordinate of {largest:.6g}, outside the clipping range "
            f"{config.clip_range:g}: a participant masked an out-of-range input; the sum is "
            "not used"
        )


class SecureAggregation:
    """Runs SecAgg+ for every secure fit round of a networked coordinator.

    Each :meth:`step` (the service's driver calls it after every coordinator step)
    starts a :class:`SecureRelay` once the open round's training is in, advances it,
    and hands its sum to the round machine, or fails the round's secure aggregation
    with the reason. Certificates come from the TLS layer (:meth:`saw`).

    Parameters
    ----------
    coordinator : Coordinator
        The coordinator whose secure fit rounds this runs.
    rng : callable returning SecureRandom
        Source of groups and graphs, one per round (``system_random`` in production).
    clock : callable returning datetime
        Stamps the ``secagg.finish`` and ``secagg.fail`` events when they happen (after
        the unmasking), not when the step began.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        rng: Callable[[], SecureRandom],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.coordinator = coordinator
        self._clock = clock
        self.config = coordinator.config
        self._rng = rng
        self._certificates: dict[str, bytes] = {}
        self.relay: SecureRelay | None = None

    def saw(self, name: str, certificate_der: bytes) -> None:
        """Remember the certificate ``name`` connected with (relayed to its peers)."""
        self._certificates[name] = certificate_der

    def task_for(self, name: str) -> tuple[int, int, SecAggStage, dict[str, Any]] | None:
        """Return ``(round, attempt, stage, input)`` that ``name`` owes now, if any."""
        relay = self.relay
        if relay is None:
            return None
        task = relay.task_for(name)
        if task is None:
            return None
        return relay.round, relay.attempt, task[0], task[1]

    def relay_for(self, round: int, attempt: int) -> SecureRelay:
        """Return the running relay of ``round``/``attempt``; :class:`ProtocolError` if none."""
        relay = self.relay
        if relay is None or (relay.round, relay.attempt) != (round, attempt):
            raise ProtocolError(
                f"no secure aggregation is running for round {round} attempt {attempt}"
            )
        return relay

    def step(self, now: datetime) -> bool:
        """Start, advance or finish the open round's protocol; True if anything moved."""
        progress = self.coordinator.secure_progress()
        relay = self.relay
        if relay is not None and (
            progress is None or (progress.round, progress.attempt) != (relay.round, relay.attempt)
        ):
            self.relay = relay = None  # its round closed (deadline, restart, failure)
        if progress is None:
            return False
        if relay is None:
            return self._start(progress, now)
        try:
            moved = relay.step(now)
            outcome = relay.outcome()
            if outcome is None:
                return moved
            if relay.encoding is None:
                # (Distributed DP: the decoder checked the count and the sum's norm.)
                check_secure_sum(outcome, progress.reported, self.config.secure_aggregation)
            self.coordinator.submit_secure_sum(
                round=relay.round,
                attempt=relay.attempt,
                mean_update=outcome.mean,
                survivors=outcome.survivors,
                now=now,
                group_means=outcome.group_means,
                noise_shares=outcome.noise_shares,
            )
        except FedshieldError as exc:
            # Whatever went wrong, the round fails with the reason; the coordinator lives.
            self._fail(progress, exc.message, relay.refusals(), now)
            return True
        self._record(
            "secagg.finish",
            progress,
            "ok",
            {
                "survivors": list(outcome.survivors),
                "groups": [{"survivors": list(g), "total_weight": w} for g, w in outcome.groups],
                "refused": relay.refusals(),
            },
            self._clock(),
        )
        return True

    def _start(self, progress: SecureProgress, now: datetime) -> bool:
        waiting = set(progress.selected) - set(progress.reported) - progress.refused
        if waiting and now < progress.training_deadline:
            return False
        revoked = self.coordinator.revoked()
        members, excluded = usable_members(
            {
                n: self._certificates[n]
                for n in progress.reported
                if n in self._certificates and n not in revoked
            }
        )
        try:
            self.relay = SecureRelay(
                progress,
                members,
                federation=self.config.federation.name,
                config=self.config.secure_aggregation,
                dim=self.coordinator.layout.size,
                now=now,
                rng=self._rng(),
                min_survivors=self.config.rounds.min_participants,
                encoding_for=lambda n, seed: self.coordinator.distributed_encoding(n, seed=seed),
            )
        except FedshieldError as exc:
            reason = f"secure aggregation cannot start: {exc.message}"
            self._fail(progress, reason, excluded, now)
            return True
        groups = [list(g.setup.participants) for g in self.relay.groups]
        setup = self.relay.groups[0].setup
        self._record(
            "secagg.start",
            progress,
            "ok",
            {
                "groups": groups,
                "k": setup.k,
                "t": setup.t,
                "value_bits": setup.value_bits,
                "excluded": excluded,
            },
            now,
        )
        return True

    def _fail(
        self, progress: SecureProgress, reason: str, refused: Mapping[str, str], now: datetime
    ) -> None:
        self.coordinator.fail_secure(reason, round=progress.round, attempt=progress.attempt)
        details = {"reason": reason, "refused": refused}
        self._record("secagg.fail", progress, "failed", details, self._clock())
        self.relay = None

    def _record(
        self,
        action: str,
        progress: SecureProgress,
        outcome: str,
        details: Mapping[str, object],
        now: datetime,
    ) -> None:
        self.coordinator.events.record(
            actor=self.coordinator.actor,
            action=action,
            resource=f"round/{progress.round}",
            outcome=outcome,
            details={"attempt": progress.attempt, **details},
            now=now,
        )
