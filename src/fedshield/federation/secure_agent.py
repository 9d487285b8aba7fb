"""SecAgg+ over the network, participant side: one session per secure fit round.

After local training a participant reports only its example count and metrics; its
update stays here. A :class:`SecureSession` then answers the coordinator's ``secagg``
tasks of that round, stage by stage, with the pure
:class:`~fedshield.secagg.client.SecAggClient`, which trusts nothing the coordinator
says. The roster of identity keys comes from the certificates the coordinator relays,
each checked against this kit's CA (:func:`~fedshield.identity.verify_roster`): the
coordinator cannot forge a peer without the CA's signature.

Every refusal is a :class:`~fedshield.errors.ProtocolError`; the agent then tells the
coordinator it leaves the round (``/secagg/refuse``) and keeps its update to itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.errors import ConfigError, IdentityError, PayloadError, ProtocolError
from fedshield.federation.secure import secagg_round
from fedshield.identity import verify_roster
from fedshield.privacy.distributed import DistributedEncoding
from fedshield.secagg import SecAggClient, system_random
from fedshield.secagg.messages import (
    Advertise,
    EncryptedShare,
    Setup,
    UnmaskRequest,
)
from fedshield.secagg.wire import from_wire, to_wire

__all__ = ["SecureSession", "SpentLedger"]

_MAX_LIST = 10_000


class SecureSession:
    """One participant's part in one secure fit round.

    Parameters
    ----------
    name : str
        This participant's name (its certificate's CN).
    federation : str
        The federation id.
    round, attempt : int
        The fit round and attempt whose update this is.
    update : numpy.ndarray
        The flat float update (``local - global``), in the model's layout order.
    num_examples : int
        This participant's example count; its weight is ``min(num_examples,
        setup.max_weight)``.
    signing_key : Ed25519PrivateKey
        This participant's identity key (bound to its certificate).
    ca_cert : x509.Certificate
        The federation CA: the only authority for peers' identity keys.
    clock : callable returning datetime
        Current time, for certificate validity.
    min_participants : int
        The smallest round (or group) this site takes part in: in a round of ``m`` the
        coordinator learns a sum over ``m`` sites, so a site refuses a setup with fewer
        than this many (``secure_min_participants`` in ``participant.toml``).
    model_sha3 : str
        The model the update was trained from (for the agent's :class:`SpentLedger`).
    """

    def __init__(
        self,
        *,
        name: str,
        federation: str,
        round: int,
        attempt: int,
        update: np.ndarray,
        num_examples: int,
        signing_key: Ed25519PrivateKey,
        ca_cert: x509.Certificate,
        clock: Callable[[], datetime],
        min_participants: int = 3,
        model_sha3: str = "",
        min_noise_multiplier: float | None = None,
    ) -> None:
        self.name = name
        self.federation = federation
        self.round = round
        self.attempt = attempt
        self._update = update
        self._num_examples = num_examples
        self._signing_key = signing_key
        self._ca_cert = ca_cert
        self._clock = clock
        self._min_participants = min_participants
        self._min_noise = min_noise_multiplier
        self.model_sha3 = model_sha3
        self._client: SecAggClient | None = None
        self._setup: Setup | None = None
        self._encoding: DistributedEncoding | None = None
        self.done = False

    def matches(self, round: int | None, attempt: int | None) -> bool:
        """Whether a task for ``round``/``attempt`` belongs to this session."""
        return (round, attempt) == (self.round, self.attempt) and not self.done

    def answer(self, stage: str, payload: object) -> tuple[bytes, str]:
        """Answer one stage; return the body to post and its content type.

        Raises
        ------
        ProtocolError
            If the stage's input is malformed or the client refuses it (bad signature,
            fewer than ``t`` live neighbours, a request for both shares...).
        """
        data = _mapping(payload, stage)
        if stage == "advertise":
            return _json(to_wire(self._on_setup(data)))
        client = self._client
        if client is None:
            raise ProtocolError(f"stage {stage!r} arrived before the setup")
        if stage == "share":
            adverts = [from_wire(Advertise, a) for a in _items(data, "advertisements")]
            return _json(to_wire(client.on_advertisements(adverts)))
        if stage == "masked":
            assert self._setup is not None
            shares = [from_wire(EncryptedShare, c) for c in _items(data, "shares")]
            if self._encoding is not None:
                # Distributed DP: this site's clipped, rotated update with its share of
                # the noise, as signed integers; every site weighs the same.
                integers, _ = self._encoding.encode(self._update, rng=system_random())
                masked = client.on_shares(shares, x=None, weight=1, integers=integers)
            else:
                weight = max(1, min(self._num_examples, self._setup.max_weight))
                masked = client.on_shares(shares, x=self._update, weight=weight)
            return masked.data, "application/octet-stream"
        if stage == "consistency":
            survivors = _items(data, "survivors")
            if not all(isinstance(s, str) for s in survivors):
                raise ProtocolError("the survivor list must hold participant names")
            return _json(to_wire(client.on_survivors(frozenset(survivors))))
        if stage == "unmask":
            request = from_wire(UnmaskRequest, data.get("request"))
            response = client.on_unmask(request)
            self.done = True
            return _json(to_wire(response))
        raise ProtocolError(f"unknown secure aggregation stage {stage!r}")

    def _on_setup(self, data: Mapping[str, Any]) -> Advertise:
        setup = from_wire(Setup, data.get("setup"))
        expected = secagg_round(self.round, self.attempt)
        if setup.federation != self.federation or setup.round != expected:
            raise ProtocolError(
                f"the setup is for federation {setup.federation!r} round {setup.round}, "
                f"this session is {self.federation!r} round {expected}"
            )
        if len(setup.participants) < self._min_participants:
            raise ProtocolError(
                f"the setup has {len(setup.participants)} participant(s); this site takes "
                f"part only in sums over at least {self._min_participants}"
            )
        self._encoding = self._distributed(data.get("ddgauss"), setup)
        expected_dim = (
            self._encoding.rotation.padded if self._encoding is not None else self._update.size
        )
        if setup.dim != expected_dim:
            raise ProtocolError(
                f"the setup expects {setup.dim} values, this update needs {expected_dim}"
            )
        raw = data.get("certificates")
        if not isinstance(raw, dict) or set(raw) != set(setup.participants):
            raise ProtocolError("the setup must come with one certificate per participant")
        try:
            ders = {str(n): base64.b64decode(str(v), validate=True) for n, v in raw.items()}
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("a relayed certificate is not base64") from exc
        try:
            roster = verify_roster(ders, self._ca_cert, now=self._clock())
        except IdentityError as exc:
            raise ProtocolError(f"a relayed certificate was refused: {exc.message}") from exc
        mine = self._signing_key.public_key().public_bytes_raw()
        if self.name not in roster or roster[self.name].public_bytes_raw() != mine:
            raise ProtocolError("the setup does not carry this participant's own certificate")
        self._client = SecAggClient(
            self._signing_key,
            self.name,
            roster,
            system_random(),
            federation=self.federation,
            round=expected,
        )
        self._setup = setup
        return self._client.on_setup(setup)

    def _distributed(self, raw: object, setup: Setup) -> DistributedEncoding | None:
        """Parse and check the round's distributed-DP settings, if the coordinator sent them.

        The site checks what it can: the settings are for its update's size and claim
        exactly the setup's participants (a coordinator that claimed more would make
        every site add too small a share of the noise).
        """
        if raw is None:
            if self._min_noise is not None:
                raise ProtocolError(
                    "this site adds participant-level noise in every secure sum "
                    "(min_participant_noise), but the setup carries no distributed DP settings"
                )
            return None
        try:
            encoding = DistributedEncoding.from_public(raw)
        except PayloadError as exc:
            raise ProtocolError(exc.message) from exc
        if self._min_noise is not None and encoding.noise_multiplier < self._min_noise:
            raise ProtocolError(
                f"the setup asks for noise multiplier {encoding.noise_multiplier:g}, below "
                f"this site's minimum {self._min_noise:g} (min_participant_noise)"
            )
        if encoding.rotation.dim != self._update.size:
            raise ProtocolError(
                f"the distributed DP settings are for {encoding.rotation.dim} values, this "
                f"update has {self._update.size}"
            )
        if encoding.participants != len(setup.participants) or setup.ring_bits != 64:
            raise ProtocolError(
                f"the distributed DP settings split the noise over {encoding.participants} "
                f"participants, but the setup has {len(setup.participants)} in a "
                f"{setup.ring_bits}-bit ring"
            )
        return encoding


class SpentLedger:
    """The model versions this site has already masked an update of (durable).

    A site masks an update of a given model into at most one secure sum. Two sums over
    the same update with different companions would let the coordinator subtract them
    and read the update (a malicious coordinator could stage exactly that by re-running
    a round). The ledger is a file in the kit, one model SHA3 per line, fsynced before
    the masked input leaves the site, so a restart does not forget it.

    What this costs: if a round fails after this site sent its masked input, the site
    sits out the retries of that round (the next model version is new again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text("ascii")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the secure aggregation ledger {path}: {exc}") from exc
        self._spent = {line.strip() for line in text.splitlines() if line.strip()}

    def __contains__(self, model_sha3: object) -> bool:
        return model_sha3 in self._spent

    def spend(self, model_sha3: str) -> None:
        """Record, durably, that an update of ``model_sha3`` is being masked."""
        if model_sha3 in self._spent:
            raise ProtocolError(
                f"this site already masked an update of model {model_sha3[:12]} into a "
                "secure sum; a second one could reveal it"
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(self.path, flags, 0o600)
            try:
                os.write(fd, f"{model_sha3}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the secure aggregation ledger {self.path}: {exc}"
            ) from exc
        self._spent.add(model_sha3)


def _mapping(payload: object, stage: str) -> Mapping[str, Any]:
    if not isinstance(payload, dict):
        raise ProtocolError(f"the {stage!r} task carries no input")
    return payload


def _items(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or len(value) > _MAX_LIST:
        raise ProtocolError(f"the task input {key!r} must be a list of at most {_MAX_LIST}")
    return value


def _json(message: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps(message, separators=(",", ":")).encode(), "application/json"
