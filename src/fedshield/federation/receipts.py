"""A participant's audit receipts: fetched after each round it contributed to, kept verified.

After a round this site contributed to commits, the agent asks the coordinator for its
receipt (``GET /v1/rounds/{round}/receipt``; the coordinator names the participant from
the client certificate), checks it offline with :func:`~fedshield.audit.verify_receipt`
and keeps it in ``<kit>/receipts/round-N.json`` (temporary file, fsync, rename).

Which audit key a receipt must verify under:

* ``audit_public_key`` in ``participant.toml`` (hex), if set: the key the federation
  published out of band. It takes precedence over anything stored.
* Otherwise the key pinned on first use: the first receipt that verifies under its own
  ``public_key`` pins it in ``<kit>/receipts/audit.pub``; every later receipt must
  verify under that key.

A receipt that fails (another key, a bad signature, not this site's contribution to
that round) is *not* stored; the agent reports it as an error with what to do, and goes
on training: a receipt is evidence for later, not a condition of the round. A receipt
the coordinator does not have (404) or cannot send is a warning and is asked for once
more, at the next round's end or when the federation finishes.

What the pin does not cover: trust on first use trusts the first key. A coordinator
that signed the first receipt with a key it later denies is caught; one that was
dishonest from the start is caught only by pinning a key published out of band.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit import Receipt, verify_receipt
from fedshield.errors import AuditError, ConfigError, FedshieldError

__all__ = [
    "PIN_FILE",
    "RECEIPTS_DIR",
    "ReceiptCollector",
    "ReceiptStore",
    "parse_audit_key",
]

RECEIPTS_DIR: Final = "receipts"
PIN_FILE: Final = "audit.pub"


def parse_audit_key(text: str, *, source: str) -> bytes:
    """Return the raw 32 bytes of an Ed25519 audit public key written as 64 hex characters.

    Raises
    ------
    ConfigError
        If ``text`` is not a valid Ed25519 public key in hex (``source`` says where it was).
    """
    cleaned = text.strip()
    try:
        raw = bytes.fromhex(cleaned)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{source}: an audit public key is 64 hex characters (32 bytes), "
            f"got {len(cleaned)} characters that are not one",
            hint="Copy it from the coordinator's <workdir>/audit.pub (published by the "
            "federation's admin) or from a verified receipt's public_key.",
        ) from exc
    return raw


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ReceiptStore:
    """One participant's verified receipts in ``directory``, under one audit key.

    ``pinned_key`` (hex, from ``participant.toml``) overrides the key pinned on first use.

    Raises
    ------
    ConfigError
        If ``pinned_key`` or a stored pin file is not an audit public key.
    """

    def __init__(
        self,
        directory: Path,
        *,
        participant: str,
        federation: str,
        pinned_key: str | None = None,
    ) -> None:
        self.directory = directory
        self.participant = participant
        self.federation = federation
        self._pin: bytes | None = None
        self.pin_source: str | None = None
        pin_file = directory / PIN_FILE
        if pinned_key is not None:
            self._pin = parse_audit_key(pinned_key, source="participant.toml audit_public_key")
            self.pin_source = "audit_public_key in participant.toml"
        elif pin_file.exists():
            try:
                text = pin_file.read_text("ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read the pinned audit key {pin_file}: {exc}",
                    hint="Restore it from a backup, or set audit_public_key in participant.toml.",
                ) from exc
            self._pin = parse_audit_key(text, source=str(pin_file))
            self.pin_source = f"{pin_file} (pinned on first use)"

    @property
    def pinned(self) -> bytes | None:
        """The raw audit public key receipts must verify under (None: not pinned yet)."""
        return self._pin

    def path(self, round: int) -> Path:
        """Where the receipt of ``round`` is kept."""
        return self.directory / f"round-{round}.json"

    def accept(self, receipt: Receipt, *, round: int) -> Path:
        """Verify ``receipt`` as this site's contribution to ``round``; keep it durably.

        The first receipt accepted without a configured key pins its ``public_key``.

        Returns
        -------
        Path
            The file the receipt was written to.

        Raises
        ------
        AuditError
            If it does not verify under the pinned key (or, unpinned, its own), or it is
            not this participant's contribution to ``round`` in this federation. Nothing
            is written then.
        OSError
            If the receipt or the pin cannot be written.
        """
        entry = receipt.entry
        head = receipt.head
        if (
            entry.action != "round.contribution"
            or entry.resource != f"participant/{self.participant}"
            or entry.metadata.get("round") != round
            or head.federation != self.federation
            or head.round != round
        ):
            raise AuditError(
                f"the coordinator's receipt for round {round} is not a receipt of "
                f"{self.participant!r}'s contribution to that round of {self.federation!r}",
                hint="Not stored. Tell the federation's admin; keep the coordinator's log.",
            )
        key = self._pin if self._pin is not None else receipt.public_key
        if self._pin is not None and receipt.public_key != self._pin:
            raise AuditError(
                f"the receipt for round {round} names audit key {receipt.public_key.hex()[:16]}, "
                f"not the pinned {self._pin.hex()[:16]} ({self.pin_source})",
                hint="Not stored. The coordinator changed its audit key or shows this site "
                "another history: ask the federation's admin which key is right, out of band, "
                "before trusting its log.",
            )
        try:
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(key)
            verify_receipt(receipt, public_key)
        except (AuditError, ValueError, OverflowError) as exc:
            raise AuditError(
                f"the receipt for round {round} does not verify under the audit key "
                f"{key.hex()[:16]}",
                hint="Not stored. The coordinator sent a receipt that proves nothing: tell "
                "the federation's admin (fedshield audit verify on the coordinator host).",
            ) from exc
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._pin is None:
            _write_atomic(self.directory / PIN_FILE, (key.hex() + "\n").encode("ascii"))
            self._pin = key
            self.pin_source = f"{self.directory / PIN_FILE} (pinned on first use)"
        path = self.path(round)
        _write_atomic(path, (json.dumps(receipt.to_json(), indent=2) + "\n").encode("utf-8"))
        return path


class ReceiptCollector:
    """Fetch, verify and keep the receipts of the rounds this site contributed to.

    ``fetch(round)`` asks the coordinator (raising a :class:`FedshieldError` when it
    cannot); ``say`` reports. Nothing here raises: a receipt is never worth a round.
    """

    def __init__(
        self,
        store: ReceiptStore,
        fetch: Callable[[int], Receipt],
        say: Callable[[str], None],
    ) -> None:
        self.store = store
        self._fetch = fetch
        self._say = say
        self._pending: set[int] = set()
        # Round -> the round boundary it failed at; retried once, after a later one.
        self._retry: dict[int, int] = {}
        self.stored: list[int] = []
        self.refused: list[int] = []
        self.missing: list[int] = []

    def contributed(self, round: int) -> None:
        """Note that this site sent its part of ``round`` (a receipt is due once it commits)."""
        if not self.store.path(round).exists():
            self._pending.add(round)

    def collect(self, *, before: int | None) -> None:
        """Fetch receipts of rounds that ended: those ``< before`` (``None``: all of them).

        A task for round ``R`` means every round before ``R`` committed. Receipts that
        were missing at an earlier boundary are asked for a second and last time.
        """
        due = sorted(r for r in self._pending if before is None or r < before)
        for r in due:
            self._pending.discard(r)
            self._one(r, before=before, last=False)
        again = sorted(r for r, at in self._retry.items() if before is None or before > at)
        for r in again:
            del self._retry[r]
            self._one(r, before=before, last=True)

    def _one(self, round: int, *, before: int | None, last: bool) -> None:
        try:
            receipt = self._fetch(round)
        except FedshieldError as exc:
            if last:
                self.missing.append(round)
                self._say(
                    f"WARNING: no audit receipt for round {round} ({exc.message}); giving up. "
                    f"The admin can issue it: fedshield audit receipt {self.store.participant} "
                    f"--round {round} --workdir COORDINATOR_WORKDIR"
                )
            elif before is None:
                # The federation ended: this is the last chance, so ask once more now.
                self._say(
                    f"WARNING: no audit receipt for round {round} yet ({exc.message}); "
                    "asking once more"
                )
                self._one(round, before=None, last=True)
            else:
                self._retry[round] = before
                self._say(
                    f"WARNING: no audit receipt for round {round} yet ({exc.message}); "
                    "will ask once more after the next round"
                )
            return
        try:
            path = self.store.accept(receipt, round=round)
        except AuditError as exc:
            self.refused.append(round)
            self._say(f"ERROR: audit receipt for round {round} refused: {exc.message}. {exc.hint}")
            return
        except OSError as exc:
            self.refused.append(round)
            self._say(
                f"ERROR: cannot store the audit receipt for round {round} in "
                f"{self.store.directory}: {exc}. Free space or fix permissions; the admin "
                f"can issue it again (fedshield audit receipt {self.store.participant} "
                f"--round {round})"
            )
            return
        self.stored.append(round)
        self._say(f"round {round}: audit receipt verified and kept in {path}")
