"""Run a whole SecAgg+ round in memory: one server, ``n`` clients, scripted dropouts.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), with the sparse neighbour graph of Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS); ``docs/secagg.md``
is the design. This is the simulation shell around the pure state machines of
:mod:`fedshield.secagg.client` and :mod:`fedshield.secagg.server`: it relays every
message, drops the participants it is told to drop, and decodes the unmasked sum.

Each participant gets a fresh Ed25519 identity key and the roster is handed to the
clients directly, never through the server. A client that refuses a message
(``ProtocolError``, e.g. fewer than ``t`` live neighbours) leaves the round, exactly as
a dropout would.

What misuse breaks: a fixed ``seed`` makes every key, mask and share reproducible by
anyone who knows it (``deterministic_random`` is for tests); leave it ``None`` for real
secrecy. Inputs outside ``[-clip_range, clip_range]`` are clipped before aggregation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.errors import ConfigError, PayloadError, ProtocolError
from fedshield.secagg.client import SecAggClient
from fedshield.secagg.graph import choose_k, choose_threshold, neighbours
from fedshield.secagg.messages import (
    Advertise,
    Consistency,
    MaskedInput,
    Setup,
    ShareKeys,
    UnmaskResponse,
)
from fedshield.secagg.quantize import Quantizer
from fedshield.secagg.randomness import SecureRandom, deterministic_random, system_random
from fedshield.secagg.server import SecAggServer

__all__ = ["STAGES", "InMemoryResult", "SecAggConfig", "plan_round", "run_in_memory"]

STAGES: tuple[str, ...] = ("advertise", "share", "masked", "consistency", "unmask")
"""The stages at which a participant can drop, before sending that stage's message."""

ServerMessage = Advertise | ShareKeys | MaskedInput | Consistency | UnmaskResponse

M = TypeVar("M", Advertise, ShareKeys, MaskedInput, Consistency, UnmaskResponse)

_COORDINATOR = "coordinator"


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Parameters of one secure aggregation round.

    Parameters
    ----------
    federation : str
        Federation id, bound into every signature, key and message.
    round : int
        Round number, >= 0.
    clip_range : float
        ``c > 0``: every coordinate is clipped to ``[-c, c]`` before quantization.
    ring_bits : {32, 64}
        The ring ``Z / 2**ring_bits`` of the masked vectors (upload: ``ring_bits / 8``
        bytes per coordinate, plus one element for the weight).
    max_weight : int
        Largest integer weight a participant may use, >= 1; with ``n`` and
        ``ring_bits`` it fixes the value bits (at least 8, else ``ConfigError``).
    k : int or None
        Degree of the neighbour graph; ``None`` means
        :func:`~fedshield.secagg.graph.choose_k`. ``k >= n - 1`` is the complete graph.
    threshold : int or None
        Shamir threshold ``t`` with ``degree / 2 < t <= degree``; ``None`` means
        :func:`~fedshield.secagg.graph.choose_threshold`.
    dropout : float
        Expected fraction of participants that drop during a round, in ``[0, 1)``.
    corruption : float
        Largest fraction of participants colluding with the server, in ``[0, 1)``.

    Raises
    ------
    ConfigError
        If a value is out of range.
    """

    federation: str
    round: int
    clip_range: float
    ring_bits: Literal[32, 64] = 32
    max_weight: int = 1
    k: int | None = None
    threshold: int | None = None
    dropout: float = 0.1
    corruption: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.federation, str) or not self.federation:
            raise ConfigError(f"federation must be a non-empty str, got {self.federation!r}")
        _check_int("round", self.round, minimum=0)
        if isinstance(self.clip_range, bool) or not isinstance(self.clip_range, int | float):
            raise ConfigError(f"clip_range must be a float > 0, got {self.clip_range!r}")
        if not 0 < self.clip_range < math.inf:
            raise ConfigError(f"clip_range must be a finite float > 0, got {self.clip_range!r}")
        if self.ring_bits not in (32, 64):
            raise ConfigError(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        _check_int("max_weight", self.max_weight, minimum=1)
        if self.k is not None:
            _check_int("k", self.k, minimum=1)
        if self.threshold is not None:
            _check_int("threshold", self.threshold, minimum=1)
        for name in ("dropout", "corruption"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a fraction in [0, 1), got {value!r}")
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be a fraction in [0, 1), got {value!r}")


@dataclass(frozen=True)
class InMemoryResult:
    """What an in-memory round produced.

    Attributes
    ----------
    aggregate : numpy.ndarray
        ``float64`` of shape ``(d,)``: the weighted mean of the survivors' dequantized
        (clipped, stochastically rounded) inputs.
    survivors : tuple of str
        The participants whose inputs are in the aggregate (``U3``), sorted. Participant
        ``i`` (row ``i`` of the updates) is ``ids[i]`` of :attr:`setup`'s participants.
    transcript : list
        Every message the server received, in arrival order.
    setup : Setup
        The round's setup (graph, ``k``, ``t``, value bits) as every client saw it.
    """

    aggregate: npt.NDArray[np.float64]
    survivors: tuple[str, ...]
    transcript: list[ServerMessage]
    setup: Setup
    signed_sum: npt.NDArray[np.int64] | None = None
    """With integer inputs: the survivors' exact signed sum (``aggregate`` is then empty)."""


def run_in_memory(
    updates: Sequence[npt.ArrayLike] | npt.ArrayLike,
    config: SecAggConfig,
    *,
    weights: Sequence[int] | None = None,
    drop: Mapping[str, set[int]] | None = None,
    seed: bytes | int | None = None,
    integers: bool = False,
) -> InMemoryResult:
    """Securely aggregate ``n`` float updates in one simulated SecAgg+ round.

    With ``integers=True`` the rows are signed ``int64`` vectors (distributed DP),
    summed exactly in the 64-bit ring with weight 1 each; the result's
    :attr:`InMemoryResult.signed_sum` holds the sum.

    Parameters
    ----------
    updates : array_like
        ``n x d`` finite floats, one row per participant (``n >= 2``, ``d >= 1``).
    config : SecAggConfig
        The round's parameters.
    weights : sequence of int, optional
        Integer weight per participant in ``[1, config.max_weight]``; default all 1.
    drop : mapping of str to set of int, optional
        Stage name (one of :data:`STAGES`) to the participant indices that drop just
        before sending that stage's message. A participant that dropped stays dropped.
    seed : bytes or int, optional
        Makes the round reproducible with
        :func:`~fedshield.secagg.randomness.deterministic_random` (tests only); ``None``
        uses the system CSPRNG. The setup (graph, ``k``, ``t``) is drawn first and
        depends only on ``n``, ``d``, ``config`` and ``seed``, not on ``drop``.

    Returns
    -------
    InMemoryResult
        The aggregate, the survivors and the server's transcript.

    Raises
    ------
    RoundFailedError
        If too many participants dropped for the sum to be unmasked; no output then.
    ConfigError
        If the configuration, the degree/threshold or ``drop`` is invalid, or the ring
        cannot hold 8 value bits for ``n`` participants.
    PayloadError
        If ``updates`` is not a finite ``n x d`` array or a weight is out of range.
    """
    matrix = np.asarray(updates, dtype=np.int64 if integers else np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise PayloadError(f"updates must be n x d with n >= 2 and d >= 1, got {matrix.shape}")
    if not integers and not np.isfinite(matrix).all():
        raise PayloadError("updates have NaN or infinite values")
    n, dim = matrix.shape
    weight_list = _weights(weights, n=n, max_weight=config.max_weight)
    dropped_at = _drops(drop, n=n)

    rng = _master_rng(seed)
    ids = tuple(f"p{i:0{len(str(n - 1))}d}" for i in range(n))
    setup, quantizer = plan_round(config, ids, dim=dim, rng=rng)
    keys = {i: Ed25519PrivateKey.from_private_bytes(rng.bytes(32)) for i in ids}
    roster = {i: key.public_key() for i, key in keys.items()}
    clients = {
        i: SecAggClient(
            keys[i],
            i,
            roster,
            deterministic_random(rng.bytes(32)) if seed is not None else system_random(),
            federation=config.federation,
            round=config.round,
        )
        for i in ids
    }
    index = {i: position for position, i in enumerate(ids)}
    server = SecAggServer(setup)
    transcript: list[ServerMessage] = []
    alive = set(ids)

    def stage(
        name: str,
        senders: Sequence[str],
        act: Callable[[str], ServerMessage],
        deliver: Callable[[ServerMessage], None],
    ) -> None:
        for i in sorted(set(senders) & alive):
            if index[i] in dropped_at.get(name, set()):
                alive.discard(i)
                continue
            try:
                message = act(i)
            except ProtocolError:
                alive.discard(i)  # an honest client that refuses leaves the round
                continue
            deliver(message)  # a server refusal here is a bug: let it propagate
            transcript.append(message)

    stage("advertise", ids, lambda i: clients[i].on_setup(setup), _to(server.receive_advertise))
    adverts = server.advertisements()
    stage(
        "share",
        list(adverts),
        lambda i: clients[i].on_advertisements(adverts[i]),
        _to(server.receive_shares),
    )
    ciphertexts = server.shares()
    stage(
        "masked",
        list(ciphertexts),
        lambda i: (
            clients[i].on_shares(ciphertexts[i], x=None, weight=1, integers=matrix[index[i]])
            if integers
            else clients[i].on_shares(
                ciphertexts[i], x=matrix[index[i]], weight=weight_list[index[i]]
            )
        ),
        _to(server.receive_masked),
    )
    u3 = server.survivors()
    stage(
        "consistency",
        sorted(u3),
        lambda i: clients[i].on_survivors(u3),
        _to(server.receive_consistency),
    )
    requests = server.unmask_requests()
    stage(
        "unmask",
        list(requests),
        lambda i: clients[i].on_unmask(requests[i]),
        _to(server.receive_unmask),
    )
    ring_sum, total_weight, survivors = server.finish()
    if integers:
        signed = np.asarray(ring_sum[:-1], dtype=np.uint64).view(np.int64).copy()
        return InMemoryResult(
            aggregate=np.zeros(0),
            survivors=survivors,
            transcript=transcript,
            setup=setup,
            signed_sum=signed,
        )
    aggregate, _ = quantizer.decode(ring_sum, total_weight)
    return InMemoryResult(
        aggregate=aggregate, survivors=survivors, transcript=transcript, setup=setup
    )


def plan_round(
    config: SecAggConfig,
    ids: Sequence[str],
    *,
    dim: int,
    rng: SecureRandom,
    sender: str = _COORDINATOR,
) -> tuple[Setup, Quantizer]:
    """Choose ``k``, ``t`` and the value bits, draw the graph, and build the round's setup.

    The one place where a round's parameters are fixed, for the in-memory driver and
    for the networked coordinator alike. A configured ``k`` that admits no ``k``-regular
    graph on ``len(ids)`` nodes (odd product) is raised by one: more neighbours, never
    fewer.

    Returns
    -------
    tuple of (Setup, Quantizer)
        The setup every client receives and the quantizer that decodes the sum.

    Raises
    ------
    ConfigError
        If there are fewer than 2 ids, the threshold is out of range or the ring cannot
        hold 8 value bits for ``len(ids)`` participants.
    """
    n = len(ids)
    if n < 2:
        raise ConfigError(f"secure aggregation needs at least 2 participants, got {n}")
    k = (
        config.k
        if config.k is not None
        else choose_k(n, dropout=config.dropout, corruption=config.corruption)
    )
    if k < n - 1 and (n * k) % 2:
        k += 1
    degree = min(k, n - 1)
    t = config.threshold
    if t is None:
        t = choose_threshold(degree, dropout=config.dropout, corruption=config.corruption, n=n)
    if not (2 * t > degree and t <= degree):
        raise ConfigError(f"threshold must satisfy degree/2 < t <= degree={degree}, got {t}")
    quantizer = Quantizer.for_budget(
        n, max_weight=config.max_weight, clip_range=config.clip_range, ring_bits=config.ring_bits
    )
    setup = Setup.build(
        federation=config.federation,
        round=config.round,
        sender=sender,
        graph=neighbours(ids, k=k, rng=rng),
        k=k,
        t=t,
        ring_bits=config.ring_bits,
        value_bits=quantizer.value_bits,
        clip_range=float(config.clip_range),
        max_weight=config.max_weight,
        dim=dim,
    )
    return setup, quantizer


def _to(receive: Callable[[M], None]) -> Callable[[ServerMessage], None]:
    """Adapt a typed ``server.receive_*`` to the driver's message union."""

    def deliver(message: ServerMessage) -> None:
        receive(cast(M, message))

    return deliver


def _master_rng(seed: bytes | int | None) -> SecureRandom:
    if seed is None:
        return system_random()
    if isinstance(seed, bool) or not isinstance(seed, bytes | int):
        raise ConfigError(f"seed must be bytes, int or None, got {type(seed).__name__}")
    tagged = b"bytes:" + seed if isinstance(seed, bytes) else b"int:" + str(seed).encode()
    return deterministic_random(hashlib.sha256(b"fedshield/secagg/v1/driver\x00" + tagged).digest())


def _weights(weights: Sequence[int] | None, *, n: int, max_weight: int) -> list[int]:
    if weights is None:
        return [1] * n
    out = list(weights)
    if len(out) != n:
        raise PayloadError(f"expected {n} weights, got {len(out)}")
    for w in out:
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or not 1 <= w <= max_weight:
            raise PayloadError(f"weights must be integers in [1, {max_weight}], got {w!r}")
    return [int(w) for w in out]


def _drops(drop: Mapping[str, set[int]] | None, *, n: int) -> dict[str, set[int]]:
    if drop is None:
        return {}
    unknown = sorted(set(drop) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown drop stage(s) {unknown}; stages are {list(STAGES)}")
    out = {}
    for name, indices in drop.items():
        bad = sorted(i for i in indices if not isinstance(i, int) or not 0 <= i < n)
        if bad:
            raise ConfigError(f"drop[{name!r}] has indices outside [0, {n}): {bad}")
        out[name] = set(indices)
    return out


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
