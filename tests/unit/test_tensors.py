"""Specification of fedshield.tensors: canonical hashing, flattening and the wire codec."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fedshield.errors import PayloadError
from fedshield.tensors import Layout, add, decode, encode, flatten, unflatten, weights_sha3

# Derandomized: the same examples on every run, so a failure is reproducible anywhere.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
LIMIT = 1 << 20


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Return a small deterministic float32 model."""
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "fc1.bias": rng.standard_normal(4).astype(np.float32),
        "fc2.weight": rng.standard_normal((2, 4)).astype(np.float32),
    }


def payload_error(data: bytes, layout: Layout | None = None, max_bytes: int = LIMIT) -> str:
    """Return the message of the PayloadError ``decode`` must raise for ``data``."""
    with pytest.raises(PayloadError) as info:
        decode(data, layout=layout, max_bytes=max_bytes)
    return str(info.value)


# ------------------------------------------------------------------------------ weights_sha3


def reference_sha3(weights: dict[str, np.ndarray]) -> str:
    """The documented framing, written out independently: domain label, then per tensor in
    name order the length-prefixed name, length-prefixed dtype string, ndim + shape as
    little-endian u32 / i64, and the little-endian bytes."""
    h = hashlib.sha3_256(b"fedshield/weights/v1\x00")
    for name in sorted(weights):
        arr = weights[name]
        raw_name, raw_dtype = name.encode(), arr.dtype.str.encode()
        h.update(len(raw_name).to_bytes(4, "little") + raw_name)
        h.update(len(raw_dtype).to_bytes(4, "little") + raw_dtype)
        h.update(arr.ndim.to_bytes(4, "little"))
        h.update(b"".join(int(d).to_bytes(8, "little", signed=True) for d in arr.shape))
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


def test_sha3_matches_the_documented_framing() -> None:
    weights = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), dtype=np.float32)}
    digest = weights_sha3(weights)
    assert digest == reference_sha3(weights)
    # Pinned: registry blobs are named by this hash, it must never change silently.
    assert digest == "698a2e2cbc05539d4f7ca91fb223de7ca01065c064ec6413eb0dbcc8669918c2"
    assert digest == weights_sha3({k: v.copy() for k, v in weights.items()})


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_sha3_matches_the_reference_on_random_models(seed: int) -> None:
    weights = make_weights(seed)
    assert weights_sha3(weights) == reference_sha3(weights)


def test_sha3_does_not_depend_on_insertion_order() -> None:
    weights = make_weights()
    reordered = {name: weights[name] for name in reversed(list(weights))}
    assert list(reordered) != list(weights)
    assert weights_sha3(reordered) == weights_sha3(weights)


def test_sha3_does_not_depend_on_memory_layout() -> None:
    weights = make_weights()
    fortran = {n: np.asfortranarray(a) for n, a in weights.items()}
    assert not fortran["fc1.weight"].flags.c_contiguous
    assert weights_sha3(fortran) == weights_sha3(weights)


@SETTINGS
@given(st.data())
def test_sha3_changes_with_any_single_value(data: st.DataObject) -> None:
    weights = make_weights(data.draw(st.integers(0, 1000), label="seed"))
    name = data.draw(st.sampled_from(sorted(weights)), label="name")
    index = data.draw(st.integers(0, weights[name].size - 1), label="index")
    changed = {n: a.copy() for n, a in weights.items()}
    flat = changed[name].reshape(-1)
    flat[index] = np.nextafter(flat[index], np.float32(np.inf))
    assert weights_sha3(changed) != weights_sha3(weights)


def test_sha3_changes_with_a_name() -> None:
    weights = make_weights()
    renamed = dict(weights)
    renamed["fc1.bias_"] = renamed.pop("fc1.bias")
    assert weights_sha3(renamed) != weights_sha3(weights)


def test_sha3_name_framing_is_unambiguous() -> None:
    # "ab" + "c" and "a" + "bc" must not collide through concatenation.
    a = {"ab": np.zeros(1, np.float32), "c": np.zeros(1, np.float32)}
    b = {"a": np.zeros(1, np.float32), "bc": np.zeros(1, np.float32)}
    assert weights_sha3(a) != weights_sha3(b)


def test_sha3_changes_with_the_shape_even_for_the_same_bytes() -> None:
    weights = make_weights()
    reshaped = dict(weights)
    reshaped["fc1.weight"] = weights["fc1.weight"].reshape(3, 4)
    assert reshaped["fc1.weight"].tobytes() == weights["fc1.weight"].tobytes()
    assert weights_sha3(reshaped) != weights_sha3(weights)


def test_sha3_changes_with_the_dtype() -> None:
    weights = make_weights()
    wider = dict(weights)
    wider["fc1.bias"] = weights["fc1.bias"].astype(np.float64)
    assert np.array_equal(wider["fc1.bias"], weights["fc1.bias"])
    assert weights_sha3(wider) != weights_sha3(weights)


def test_sha3_changes_when_a_tensor_is_added_or_removed() -> None:
    weights = make_weights()
    fewer = {n: a for n, a in weights.items() if n != "fc2.weight"}
    more = {**weights, "extra": np.zeros(0, dtype=np.float32)}
    digests = {weights_sha3(weights), weights_sha3(fewer), weights_sha3(more)}
    assert len(digests) == 3


def test_sha3_does_not_depend_on_byte_order() -> None:
    weights = make_weights()
    big_endian = {n: a.astype(">f4") for n, a in weights.items()}
    assert all(np.array_equal(big_endian[n], weights[n]) for n in weights)
    assert weights_sha3(big_endian) == weights_sha3(weights)


# ------------------------------------------------------------------------------ codec


def test_encode_decode_round_trip_is_exact() -> None:
    weights = make_weights(3)
    data = encode(weights)
    out = decode(data, layout=Layout.of(weights), max_bytes=LIMIT)
    assert list(out) == sorted(weights)
    for name, arr in weights.items():
        assert out[name].dtype == np.float32
        assert np.array_equal(out[name], arr)
    assert weights_sha3(out) == weights_sha3(weights)


def test_decode_without_layout_accepts_any_float32_tensors() -> None:
    weights = {"only": np.full((2, 2), 0.5, np.float32)}
    out = decode(encode(weights), layout=None, max_bytes=LIMIT)
    assert np.array_equal(out["only"], weights["only"])


def test_decode_enforces_the_limit_before_parsing() -> None:
    weights = make_weights()
    data = encode(weights)
    assert decode(data, layout=Layout.of(weights), max_bytes=len(data))  # exactly the limit
    message = payload_error(data, Layout.of(weights), max_bytes=len(data) - 1)
    assert f"payload is {len(data)} bytes" in message
    assert f"limit of {len(data) - 1} bytes" in message
    # Garbage over the limit is refused for its size, i.e. it is never parsed.
    message = payload_error(b"\xff" * 100, max_bytes=99)
    assert "over the limit" in message
    assert "safetensors" not in message


def test_oversize_payload_error_has_a_hint() -> None:
    with pytest.raises(PayloadError) as info:
        decode(b"\x00" * 10, max_bytes=5)
    assert "max_payload_bytes" in info.value.hint


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not safetensors at all",
        b"\xff" * 64,
        struct.pack("<Q", 2**40) + b"{}",
        struct.pack("<Q", 5) + b"{not json",
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    message = payload_error(data, Layout.of(make_weights()))
    assert "not a valid safetensors file" in message


def test_decode_rejects_a_header_that_lies_about_the_data() -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\x00" * 8  # 8 of 16 bytes present
    assert "not a valid safetensors file" in payload_error(data)


@SETTINGS
@given(st.binary(max_size=256))
def test_decode_of_random_bytes_is_refused_with_a_payload_error(data: bytes) -> None:
    layout = Layout.of(make_weights())
    with pytest.raises(PayloadError):
        decode(data, layout=layout, max_bytes=LIMIT)


def test_decode_rejects_missing_and_unexpected_names() -> None:
    weights = make_weights()
    sent = dict(weights)
    sent["fc9.weight"] = sent.pop("fc2.weight")
    message = payload_error(encode(sent), Layout.of(weights))
    assert "fc2.weight" in message  # missing
    assert "fc9.weight" in message  # unexpected


def test_decode_rejects_a_missing_tensor() -> None:
    weights = make_weights()
    sent = {n: a for n, a in weights.items() if n != "fc1.bias"}
    message = payload_error(encode(sent), Layout.of(weights))
    assert "missing ['fc1.bias']" in message


def test_decode_rejects_a_wrong_shape_naming_the_tensor() -> None:
    weights = make_weights()
    sent = dict(weights)
    sent["fc1.weight"] = np.zeros((3, 4), np.float32)
    message = payload_error(encode(sent), Layout.of(weights))
    assert "'fc1.weight'" in message
    assert "(3, 4)" in message
    assert "(4, 3)" in message


def test_decode_rejects_float64_naming_the_tensor() -> None:
    weights = make_weights()
    sent = {n: a for n, a in weights.items()}
    sent["fc1.bias"] = weights["fc1.bias"].astype(np.float64)
    data = st_save(sent)
    message = payload_error(data, Layout.of(weights))
    assert "'fc1.bias'" in message
    assert "float64" in message


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_decode_rejects_other_dtypes_without_a_layout(dtype: type) -> None:
    data = st_save({"w": np.zeros(3, dtype=dtype)})
    message = payload_error(data, layout=None)
    assert "'w'" in message
    assert np.dtype(dtype).name in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_rejects_non_finite_values_naming_the_tensor(bad: float) -> None:
    weights = make_weights()
    sent = {n: a.copy() for n, a in weights.items()}
    sent["fc2.weight"][1, 2] = bad
    message = payload_error(encode(sent), Layout.of(weights))
    assert "'fc2.weight'" in message
    assert "NaN or Inf" in message


# ------------------------------------------------------------------------------ layout, flatten


def test_layout_sorts_names_and_counts_parameters() -> None:
    layout = Layout.of(make_weights())
    assert layout.names == ("fc1.bias", "fc1.weight", "fc2.weight")
    assert layout.shapes == ((4,), (4, 3), (2, 4))
    assert layout.size == 4 + 12 + 8
    assert layout.nbytes == 4 * 24


def test_flatten_follows_layout_order_in_float64() -> None:
    weights = make_weights()
    layout = Layout.of(weights)
    vector = flatten(weights, layout)
    assert vector.dtype == np.float64
    expected = np.concatenate([weights[n].ravel() for n in layout.names]).astype(np.float64)
    assert np.array_equal(vector, expected)
    assert flatten({}, Layout.of({})).shape == (0,)


def test_unflatten_rejects_a_vector_of_the_wrong_size() -> None:
    layout = Layout.of(make_weights())
    with pytest.raises(PayloadError, match=r"\(25,\).*\(24,\)"):
        unflatten(np.zeros(25), layout)
    with pytest.raises(PayloadError):
        unflatten(np.zeros((24, 1)), layout)


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@SETTINGS
@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True), shapes, max_size=5),
    st.integers(0, 2**32 - 1),
)
def test_flatten_unflatten_round_trip(layout_spec: dict[str, tuple[int, ...]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in layout_spec.items()
    }
    layout = Layout.of(weights)
    vector = flatten(weights, layout)
    assert vector.shape == (layout.size,)
    back = unflatten(vector, layout)
    assert set(back) == set(weights)
    for name, arr in weights.items():
        assert back[name].dtype == np.float32
        assert back[name].shape == arr.shape
        assert np.array_equal(back[name], arr)
    assert weights_sha3(back) == weights_sha3(weights)
    assert np.array_equal(flatten(back, layout), vector)


def test_add_is_elementwise_in_float32() -> None:
    a = make_weights(1)
    b = make_weights(2)
    total = add(a, b)
    for name in a:
        assert total[name].dtype == np.float32
        assert np.array_equal(total[name], a[name] + b[name])
