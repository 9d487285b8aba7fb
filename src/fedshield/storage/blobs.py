"""A content-addressed store of model weights as safetensors files.

A blob is named by the canonical hash of the weights it holds
(:func:`fedshield.tensors.weights_sha3`), not by the hash of the file: ``<root>/<sha3>
.safetensors``. Reading a blob recomputes that hash, so a flipped bit on disk or a file
swapped by someone with write access to the directory is detected, never loaded.

Writes are atomic and durable: the bytes go to a temporary file in the same directory,
which is flushed and ``fsync``-ed, renamed over the final name with ``os.replace`` and
then the directory itself is ``fsync``-ed so that the rename survives a power loss. A
reader therefore sees either no blob or a complete one.

A hash given by a caller is checked to be 64 lowercase hex characters before it touches
the file system, so it cannot name a path outside the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedshield.errors import NotFoundError, PayloadError, StorageError
from fedshield.tensors import Weights, decode, encode, weights_sha3

__all__ = ["BlobStore"]

_SHA3_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".safetensors"


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (a rename) to disk, where the OS allows it."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_float32(weights: Mapping[str, np.ndarray]) -> Weights:
    """Return ``weights`` as contiguous float32 arrays, refusing NaN and Inf.

    The hash is computed over exactly what is written, so a float64 input hashes the
    same as the float32 arrays a later :meth:`BlobStore.get` returns.
    """
    out: Weights = {}
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name], dtype=np.float32)
        if not np.isfinite(arr).all():
            raise PayloadError(f"tensor {name!r} contains NaN or Inf values")
        out[name] = arr
    return out


class BlobStore:
    """Model weights on disk, one safetensors file per distinct model.

    Parameters
    ----------
    root
        The directory holding the blobs; created if missing.

    Raises
    ------
    StorageError
        If ``root`` cannot be created.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create blob directory {root}: {exc}") from exc

    def path(self, sha3: str) -> Path:
        """Return the file path of the blob named ``sha3`` (which need not exist).

        Parameters
        ----------
        sha3
            A canonical weights hash: 64 lowercase hex characters.

        Returns
        -------
        Path
            ``<root>/<sha3>.safetensors``.

        Raises
        ------
        StorageError
            If ``sha3`` is not 64 lowercase hex characters.
        """
        if not isinstance(sha3, str) or _SHA3_HEX.fullmatch(sha3) is None:
            shown = repr(sha3) if len(repr(sha3)) <= 80 else repr(sha3)[:77] + "..."
            raise StorageError(f"invalid model hash {shown}: expected 64 lowercase hex characters")
        return self.root / f"{sha3}{_SUFFIX}"

    def exists(self, sha3: str) -> bool:
        """Return whether a blob named ``sha3`` is present (its content is not checked).

        Raises
        ------
        StorageError
            If ``sha3`` is not 64 lowercase hex characters.
        """
        return self.path(sha3).is_file()

    def put(self, weights: Mapping[str, np.ndarray]) -> str:
        """Store ``weights`` durably and return their hash.

        Parameters
        ----------
        weights
            Named tensors; they are stored as float32.

        Returns
        -------
        str
            ``weights_sha3`` of the float32 weights, which names the blob. Storing the
            same weights again is a no-op that returns the same hash.

        Raises
        ------
        PayloadError
            If a tensor contains NaN or Inf (such a blob could never be loaded).
        StorageError
            If the file cannot be written.
        """
        arrays = _as_float32(weights)
        sha3 = weights_sha3(arrays)
        data = encode(arrays)
        final = self.path(sha3)
        try:
            if final.is_file() and final.stat().st_size == len(data):
                # Already stored, maybe by a process that died before its fsyncs:
                # make sure it is on disk before we report it as stored.
                with final.open("rb") as existing:
                    os.fsync(existing.fileno())
                _fsync_dir(self.root)
                return sha3
            self._write_atomic(final, data)
        except OSError as exc:
            raise StorageError(f"cannot write model blob {sha3} in {self.root}: {exc}") from exc
        return sha3

    def _write_atomic(self, final: Path, data: bytes) -> None:
        """Write ``data`` to ``final`` via a temporary file, fsync and rename."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.root)

    def get_bytes(self, sha3: str, *, max_bytes: int = 2**34) -> bytes:
        """Return the verified safetensors bytes of blob ``sha3``.

        Parameters
        ----------
        sha3
            The canonical weights hash naming the blob.
        max_bytes
            Refuse blobs larger than this many bytes (checked before reading).

        Returns
        -------
        bytes
            The file content, whose decoded weights hash to ``sha3``.

        Raises
        ------
        NotFoundError
            If there is no such blob.
        StorageError
            If ``sha3`` is malformed, the blob is over ``max_bytes``, unreadable, not
            valid safetensors, or its weights do not hash to ``sha3``.
        """
        return self._read_verified(sha3, max_bytes=max_bytes)[0]

    def get(self, sha3: str, *, max_bytes: int = 2**34) -> Weights:
        """Load and verify the weights stored under ``sha3``.

        Parameters
        ----------
        sha3
            The canonical weights hash naming the blob.
        max_bytes
            Refuse blobs larger than this many bytes (checked before reading).

        Returns
        -------
        Weights
            Float32 tensors whose ``weights_sha3`` equals ``sha3``.

        Raises
        ------
        NotFoundError
            If there is no such blob.
        StorageError
            If ``sha3`` is malformed, the blob is over ``max_bytes``, unreadable, not
            valid safetensors, or its weights do not hash to ``sha3`` (corruption).
        """
        return self._read_verified(sha3, max_bytes=max_bytes)[1]

    def _read_verified(self, sha3: str, *, max_bytes: int) -> tuple[bytes, Weights]:
        """Read, decode and verify a blob; return its bytes and its weights."""
        path = self.path(sha3)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise StorageError(
                    f"model blob {sha3} is {size} bytes, over the limit of {max_bytes} bytes"
                )
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"model blob {sha3} is missing from {self.root}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read model blob {sha3}: {exc}") from exc
        try:
            weights = decode(data, max_bytes=max_bytes)
        except PayloadError as exc:
            raise StorageError(f"model blob {sha3} is corrupt: {exc.message}") from exc
        if weights_sha3(weights) != sha3:
            raise StorageError(f"model blob {sha3} is corrupt: hash mismatch")
        return data, weights
