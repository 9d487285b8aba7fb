"""Verify a whole audit log: the chain, every signature and every tree head.

:func:`verify_log` streams the log once, in ``seq`` order, and stops at the first entry
that fails, raising :class:`~fedshield.errors.AuditError` with that entry's ``seq`` and
the check that failed. For entry ``seq`` it checks, in this order:

1. ``seq`` is the next number (a gap means entries were deleted; a repeat, inserted);
2. the entry's content exists (its row was not deleted);
3. the coordinator's signature over (federation, seq, stored entry hash), with the key the
   *verifier* trusts, never a key read from the log being verified;
4. the hash recomputed from the previous hash and the canonical entry equals the stored
   one (an edited byte, or two entries swapped, fails here);
5. every tree head of exactly ``seq`` entries: its signature, and that the Merkle root of
   entries ``1..seq`` is its root.

Then it refuses entries that are not in the chain at all (rows added without a
signature), and tree heads larger than the log.

What can and cannot be detected:

* editing, deleting, inserting or reordering entries anywhere before the last entry,
  and rewriting the chain without the coordinator's audit key: always;
* truncating the tail: only against a signed tree head of a larger size. The log's own
  tree heads catch it if they survived; if the truncation also removed them (or removed
  only entries after the last head), the log alone is indistinguishable from a shorter
  honest one, and only a head kept *outside* it (a participant's receipt, passed as
  ``external_heads``) catches it;
* anything done by someone holding the coordinator's audit key: they can sign a new
  history. Receipts participants kept still expose a rewrite before their tree size.

The module is pure: records in, a report or an error out.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedshield.audit.entry import (
    Entry,
    anchor_hash,
    chain_hash,
    entry_signing_bytes,
    public_key_bytes,
    verify_entry_signature,
)
from fedshield.audit.merkle import MerkleAccumulator
from fedshield.audit.receipt import TreeHead, verify_tree_head
from fedshield.errors import AuditError

__all__ = [
    "ChainRecord",
    "SignatureBatch",
    "VerifyReport",
    "first_bad_signature",
    "verify_log",
]


@dataclass(frozen=True)
class ChainRecord:
    """One stored entry as the verifier reads it.

    Attributes
    ----------
    seq
        The position stored with the chain link.
    entry
        The entry content, or ``None`` if its row is gone.
    entry_hash
        The hash stored with it (32 bytes).
    signature
        The signature stored with it.
    """

    seq: int
    entry: Entry | None
    entry_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification covered.

    Attributes
    ----------
    entries
        Entries verified (chain, signature, hash).
    tree_heads
        The log's own tree heads verified.
    external_heads
        Tree heads from outside the log (receipts) verified.
    root
        The Merkle root of the whole log (hex).
    """

    entries: int
    tree_heads: int
    external_heads: int
    root: str


def _fail(message: str, *, seq: int | None, check: str) -> AuditError:
    where = f"entry {seq}" if seq is not None else "log"
    return AuditError(
        f"audit log verification failed at {where}: {check}: {message}",
        seq=seq,
        check=check,
        hint="The log was altered after it was written; keep the workdir as evidence.",
    )


def _check_head(
    head: TreeHead,
    acc: MerkleAccumulator,
    *,
    federation: str,
    public_key: ed25519.Ed25519PublicKey,
    what: str,
    seq: int | None,
) -> None:
    if head.federation != federation:
        raise _fail(
            f"{what} is for federation {head.federation!r}, not {federation!r}",
            seq=seq,
            check="tree head",
        )
    try:
        verify_tree_head(head, public_key)
    except AuditError:
        raise _fail(f"{what} has an invalid signature", seq=seq, check="tree head") from None
    if not hmac.compare_digest(acc.root(), head.root):
        raise _fail(
            f"entries 1..{head.size} do not reproduce the root of {what}",
            seq=seq,
            check="tree head",
        )


class SignatureBatch(Protocol):
    """Entry signatures checked apart from the chain (for instance by worker processes).

    :func:`verify_log` calls :meth:`add` for every entry it reaches, in order, once the
    entry passed its ``sequence`` and ``missing entry`` checks, and :meth:`first_bad`
    once at the end.
    """

    def add(self, seq: int, signature: bytes, entry_hash: bytes) -> None:
        """Queue the signature of entry ``seq`` over ``entry_hash``."""

    def first_bad(self) -> int | None:
        """Return the 0-based position (in :meth:`add` order) of the first bad signature."""


def first_bad_signature(
    public_key: bytes, federation: str, items: Sequence[tuple[int, bytes, bytes]]
) -> int | None:
    """Return the position in ``items`` of the first invalid entry signature, or ``None``.

    Parameters
    ----------
    public_key
        The trusted audit public key, 32 raw bytes.
    federation
        The log's federation.
    items
        ``(seq, signature, entry_hash)`` triples.

    A plain function of bytes, so that worker processes can run it on chunks of a log.
    """
    key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    for i, (seq, signature, entry_hash) in enumerate(items):
        try:
            signed = entry_signing_bytes(federation=federation, seq=seq, entry_hash=entry_hash)
            key.verify(signature, signed)
        except (InvalidSignature, ValueError, OverflowError):
            return i
    return None


def verify_log(
    records: Iterable[ChainRecord],
    *,
    federation: str,
    public_key: ed25519.Ed25519PublicKey,
    heads: Sequence[TreeHead] = (),
    external_heads: Sequence[TreeHead] = (),
    unchained: Sequence[int] = (),
    signatures: SignatureBatch | None = None,
) -> VerifyReport:
    """Verify an audit log (see the module docstring for what is checked).

    Parameters
    ----------
    records
        The chain, ordered by ``seq``.
    federation
        The federation the log belongs to.
    public_key
        The coordinator's audit public key, as the verifier trusts it.
    heads
        The tree heads stored with the log.
    external_heads
        Tree heads from elsewhere (participants' receipts), checked the same way.
    unchained
        Ids of stored event rows that no chain record refers to.
    signatures
        Where to check entry signatures instead of inline (for instance in parallel
        worker processes, see :class:`SignatureBatch`). The entry and check named are
        the same as inline.

    Returns
    -------
    VerifyReport
        Counts and the final root, if every check passed.

    Raises
    ------
    AuditError
        At the first failure, with ``seq`` (``None`` for the log as a whole) and ``check``.
    """
    pending: dict[int, list[tuple[str, TreeHead]]] = {}
    for head in heads:
        pending.setdefault(head.size, []).append((f"the tree head of round {head.round}", head))
    for head in external_heads:
        label = f"the external tree head of round {head.round} (a receipt)"
        pending.setdefault(head.size, []).append((label, head))
    acc = MerkleAccumulator()
    prev = anchor_hash(federation=federation, public_key=public_key_bytes(public_key))
    expected = 1
    for zero in pending.pop(0, []):
        _check_head(
            zero[1], acc, federation=federation, public_key=public_key, what=zero[0], seq=None
        )
    failure: AuditError | None = None  # the first failure other than a deferred signature
    for record in records:
        seq = record.seq
        if seq != expected:
            missing = "missing" if seq > expected else "out of order or repeated"
            failure = _fail(
                f"expected entry {expected}, found {seq}: entries {missing}",
                seq=expected,
                check="sequence",
            )
            break
        if record.entry is None:
            failure = _fail(
                "its content is missing (row deleted) or unreadable", seq=seq, check="missing entry"
            )
            break
        if signatures is not None:
            signatures.add(seq, record.signature, record.entry_hash)
        else:
            try:
                verify_entry_signature(
                    public_key,
                    record.signature,
                    federation=federation,
                    seq=seq,
                    entry_hash=record.entry_hash,
                )
            except AuditError:
                raise _bad_signature(seq) from None
        try:
            _check_entry(record.entry, seq, prev, record.entry_hash)
            prev = record.entry_hash
            acc.append(record.entry_hash)
            for what, head in pending.pop(seq, []):
                _check_head(
                    head, acc, federation=federation, public_key=public_key, what=what, seq=seq
                )
        except AuditError as exc:
            failure = exc
            break
        expected += 1
    if signatures is not None:
        # Only entries up to the first other failure were queued, each after its own
        # sequence and missing-entry checks and before its later ones: so a bad signature
        # is always the first failure, as inline. Position p is entry p + 1.
        bad = signatures.first_bad()
        if bad is not None:
            raise _bad_signature(bad + 1)
    if failure is not None:
        raise failure
    if pending:
        size = min(pending)
        what, head = pending[size][0]
        raise _fail(
            f"the log ends at entry {expected - 1} but {what} covers {size} entries "
            "(the tail was truncated)",
            seq=expected,
            check="truncated",
        )
    if unchained:
        raise _fail(
            f"event row(s) {', '.join(map(str, sorted(unchained)[:5]))} are not in the chain "
            "(added without the coordinator's signature)",
            seq=None,
            check="unchained",
        )
    return VerifyReport(
        entries=expected - 1,
        tree_heads=len(heads),
        external_heads=len(external_heads),
        root=acc.root().hex(),
    )


def _bad_signature(seq: int) -> AuditError:
    return _fail("not signed by the trusted coordinator audit key", seq=seq, check="signature")


def _check_entry(entry: Entry, seq: int, prev: bytes, entry_hash: bytes) -> None:
    """Check an entry's own ``seq`` and that it hashes, after ``prev``, to ``entry_hash``."""
    if entry.seq != seq:
        raise _fail(f"its content says seq {entry.seq}", seq=seq, check="sequence")
    try:
        recomputed = chain_hash(prev, entry)
    except ValueError:  # content no longer canonical JSON (NaN, a bare value...)
        recomputed = b""
    if not hmac.compare_digest(recomputed, entry_hash):
        raise _fail(
            "its content or the entry before it does not hash to the signed hash",
            seq=seq,
            check="hash",
        )
