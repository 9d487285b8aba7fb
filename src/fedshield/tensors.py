"""Model weights as named float32 arrays: hashing, flattening and the wire codec.

A model's federated state is the ordered mapping of its floating-point tensors
(``Weights``: name -> float32 ``np.ndarray``). Integer buffers (such as BatchNorm's
``num_batches_tracked``) are not federated.

The canonical hash of a model, :func:`weights_sha3`, is SHA3-256 over a framing of
every tensor in name order: name, dtype, shape and little-endian bytes. It does not
depend on the file format, so the same weights always have the same hash.

:func:`decode` is the only place where bytes from outside become arrays. It enforces
a byte limit before parsing, and it checks that names, shapes and dtypes match the
expected layout and that every value is finite. Safetensors never executes code on
load, unlike pickle.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedshield.errors import PayloadError

__all__ = [
    "Layout",
    "Weights",
    "add",
    "decode",
    "encode",
    "flatten",
    "unflatten",
    "weights_sha3",
]

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a model's federated tensors, in a fixed order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, weights: Mapping[str, np.ndarray]) -> Layout:
        """Return the layout of ``weights`` (names sorted)."""
        names = tuple(sorted(weights))
        return cls(names=names, shapes=tuple(tuple(weights[n].shape) for n in names))

    @property
    def size(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes))

    @property
    def nbytes(self) -> int:
        """Size of the raw float32 parameters in bytes (4 * size)."""
        return 4 * self.size


def weights_sha3(weights: Mapping[str, np.ndarray]) -> str:
    """Return the canonical SHA3-256 hex digest of ``weights``."""
    h = hashlib.sha3_256(b"fedshield/weights/v1\x00")
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name])
        # The hash is over values, not memory layout: normalise to little-endian first.
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        encoded = name.encode()
        dtype = arr.dtype.str.encode()
        h.update(struct.pack("<I", len(encoded)) + encoded)
        h.update(struct.pack("<I", len(dtype)) + dtype)
        h.update(struct.pack("<I", arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape))
        h.update(arr.tobytes())
    return h.hexdigest()


def flatten(
    weights: Mapping[str, np.ndarray], layout: Layout, *, dtype: type = np.float64
) -> np.ndarray:
    """Concatenate ``weights`` into one vector of ``dtype`` in ``layout`` order."""
    if not layout.names:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(weights[n], dtype=dtype).ravel() for n in layout.names])


def unflatten(vector: np.ndarray, layout: Layout) -> Weights:
    """Split a flat vector back into float32 tensors of ``layout``."""
    if vector.shape != (layout.size,):
        raise PayloadError(
            f"flat vector has shape {vector.shape}, the model needs ({layout.size},)"
        )
    out: Weights = {}
    offset = 0
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = vector[offset : offset + n].reshape(shape).astype(np.float32)
        offset += n
    return out


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    """Return ``a + b`` tensor by tensor (both must share a layout), as float32."""
    return {n: (np.asarray(a[n]) + np.asarray(b[n])).astype(np.float32) for n in a}


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize float32 ``weights`` to safetensors bytes."""
    return _st_save({n: np.ascontiguousarray(weights[n], dtype=np.float32) for n in weights})


def decode(
    data: bytes,
    *,
    layout: Layout | None = None,
    max_bytes: int,
) -> Weights:
    """Parse safetensors bytes from outside into validated float32 weights.

    Raises
    ------
    PayloadError
        If the payload exceeds ``max_bytes``, is not safetensors, has tensors that are
        not float32, names or shapes that differ from ``layout``, or non-finite values.
        The message names the first offending tensor.
    """
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload is {len(data)} bytes, over the limit of {max_bytes} bytes",
            hint="Raise transport.max_payload_bytes if the model really is this large.",
        )
    try:
        tensors = _st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise PayloadError("payload is not a valid safetensors file") from exc
    if layout is not None:
        got, want = set(tensors), set(layout.names)
        if got != want:
            missing = sorted(want - got)[:3]
            extra = sorted(got - want)[:3]
            raise PayloadError(
                f"payload tensor names do not match the model: missing {missing}, "
                f"unexpected {extra}"
            )
        for name, shape in zip(layout.names, layout.shapes, strict=True):
            if tuple(tensors[name].shape) != shape:
                raise PayloadError(
                    f"tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                    f"the model needs {shape}"
                )
    for name, arr in tensors.items():
        if arr.dtype != np.float32:
            raise PayloadError(f"tensor {name!r} has dtype {arr.dtype}, expected float32")
        if not np.isfinite(arr).all():
            raise PayloadError(f"tensor {name!r} contains NaN or Inf values")
    return {n: tensors[n] for n in sorted(tensors)}
