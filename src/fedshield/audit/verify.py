"""Verify a whole audit log: the chain, the signatures and every tree head.

:func:`verify_log` streams the log once, in ``seq`` order, and stops at the first entry
that fails, raising :class:`~fedshield.errors.AuditError` with that entry's ``seq`` and
the check that failed. For entry ``seq`` it checks, in this order:

1. ``seq`` is the next number (a gap means entries were deleted; a repeat, inserted);
2. the entry's content exists (its row was not deleted);
3. the coordinator's signature over (federation, seq, stored entry hash), with the key the
   *verifier* trusts, never a key read from the log being verified;
4. the hash recomputed from the previous hash and the canonical entry equals the stored
   one (an edited byte, or two entries swapped, fails here);
5. every tree head of exactly ``seq`` entries: its signature, that the Merkle root of
   entries ``1..seq`` is its root and, for a version-2 head, that the digest of their
   signatures is the one it signs.

Then it refuses entries that are not in the chain at all (rows added without a
signature), and tree heads larger than the log.

Signatures vouched for by a tree head
-------------------------------------
Step 3 is one Ed25519 verification per entry, the bulk of the cost of a long log (about
150 us each on this machine; 1e5 entries take 15 s on one core). A version-2 tree head
that passed step 5 has vouched, with the same key, for the exact hash and signature of
every entry it covers: the stored log reproduces its root and its signatures digest,
and each entry's hash was recomputed from its content in step 4. So by default
(``all_signatures=False``) step 3 is deferred: an entry's signature is checked one by
one only if no verified version-2 head covers it (the tail after the last head, and
entries under version-1 heads only), and whenever a later check fails, the deferred
signatures before the failure are checked first. The entry and check named are exactly
those of ``all_signatures=True``, which checks every signature one by one: a forger
without the key cannot make a head vouch for a bad signature, and one holding the key
can sign anything in either mode (SHA3-256 collision resistance is assumed in both).

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
    chain_hash_encoded,
    entry_signing_bytes,
    public_key_bytes,
    verify_entry_signature,
)
from fedshield.audit.merkle import MerkleAccumulator
from fedshield.audit.receipt import TreeHead, signatures_digest, verify_tree_head
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
        The entry content, or ``None`` if its row is gone (or if ``encoding`` is given).
    entry_hash
        The hash stored with it (32 bytes).
    signature
        The signature stored with it.
    encoding
        The entry's canonical encoding, when the reader built it straight from the
        stored columns (a faster path than an :class:`Entry`; it must be what
        ``Entry.canonical()`` returns for them). Either it or ``entry`` is set for an
        entry whose content exists.
    """

    seq: int
    entry: Entry | None
    entry_hash: bytes
    signature: bytes
    encoding: bytes | None = None


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification covered.

    Attributes
    ----------
    entries
        Entries verified (chain, hash and signature: its own, or vouched for by a head).
    signatures_checked
        Entry signatures verified one by one (the others a version-2 head vouched for).
    tree_heads
        The log's own tree heads verified.
    external_heads
        Tree heads from outside the log (receipts) verified.
    root
        The Merkle root of the whole log (hex).
    """

    entries: int
    signatures_checked: int
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
    signed: bytes,
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
    if head.signatures is not None and not hmac.compare_digest(signed, head.signatures):
        raise _fail(
            f"the signatures of entries 1..{head.size} are not the ones {what} signs",
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
    all_signatures: bool = False,
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
    all_signatures
        Check every entry signature one by one, also those a verified version-2 tree
        head vouches for (module docstring). The verdict is the same; it costs one
        Ed25519 verification per entry.

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
    signed = signatures_digest()
    prev = anchor_hash(federation=federation, public_key=public_key_bytes(public_key))
    expected = 1
    for what, head in pending.pop(0, []):
        _check_head(
            head,
            acc,
            signed.digest(),
            federation=federation,
            public_key=public_key,
            what=what,
            seq=None,
        )
    # Signatures not yet vouched for by a verified version-2 head, in seq order.
    deferred: list[tuple[int, bytes, bytes]] = []
    checked = 0
    failure: AuditError | None = None  # the first failure other than a signature
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
        if record.entry is None and record.encoding is None:
            failure = _fail(
                "its content is missing (row deleted) or unreadable", seq=seq, check="missing entry"
            )
            break
        if not all_signatures:
            deferred.append((seq, record.signature, record.entry_hash))
        elif signatures is not None:
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
        signed.update(record.signature)
        try:
            _check_entry(record, prev)
            prev = record.entry_hash
            acc.append(record.entry_hash)
            for what, head in pending.pop(seq, []):
                _check_head(
                    head,
                    acc,
                    signed.digest(),
                    federation=federation,
                    public_key=public_key,
                    what=what,
                    seq=seq,
                )
                if head.signatures is not None:
                    deferred.clear()  # vouched for: every signature up to here is known
        except AuditError as exc:
            failure = exc
            break
        expected += 1
    # Signatures come before every later check of the same or a later entry, as inline:
    # only signatures up to the first other failure were queued, so a bad one is always
    # the first failure.
    if all_signatures:
        checked = expected - 1 if failure is None else expected
        if signatures is not None:
            bad = signatures.first_bad()  # position p is entry p + 1
            if bad is not None:
                raise _bad_signature(bad + 1)
    else:
        checked = len(deferred)
        bad_seq = _first_bad_deferred(deferred, signatures, public_key, federation)
        if bad_seq is not None:
            raise _bad_signature(bad_seq)
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
        signatures_checked=checked,
        tree_heads=len(heads),
        external_heads=len(external_heads),
        root=acc.root().hex(),
    )


def _first_bad_deferred(
    deferred: Sequence[tuple[int, bytes, bytes]],
    signatures: SignatureBatch | None,
    public_key: ed25519.Ed25519PublicKey,
    federation: str,
) -> int | None:
    """Check the deferred signatures; return the ``seq`` of the first bad one, if any."""
    if signatures is None:
        bad = first_bad_signature(public_key_bytes(public_key), federation, deferred)
    else:
        for item in deferred:
            signatures.add(*item)
        bad = signatures.first_bad()
    return None if bad is None else deferred[bad][0]


def _bad_signature(seq: int) -> AuditError:
    return _fail("not signed by the trusted coordinator audit key", seq=seq, check="signature")


def _check_entry(record: ChainRecord, prev: bytes) -> None:
    """Check an entry's own ``seq`` and that it hashes, after ``prev``, to its stored hash."""
    seq = record.seq
    try:
        if record.encoding is not None:
            recomputed = chain_hash_encoded(prev, record.encoding)
        elif record.entry is not None:
            if record.entry.seq != seq:
                raise _fail(f"its content says seq {record.entry.seq}", seq=seq, check="sequence")
            recomputed = chain_hash(prev, record.entry)
        else:
            recomputed = b""
    except ValueError:  # content no longer canonical JSON (NaN, a bare value...)
        recomputed = b""
    if not hmac.compare_digest(recomputed, record.entry_hash):
        raise _fail(
            "its content or the entry before it does not hash to the signed hash",
            seq=seq,
            check="hash",
        )
