"""The verifier's fast path encodes a stored entry exactly as the careful path does.

``_stored_encoding`` builds an entry's canonical encoding straight from its raw SQLite
columns; when it applies, it must return byte for byte what parsing the columns into an
:class:`~fedshield.audit.entry.Entry` (``_raw_entry``) and encoding that returns, and
when it does not apply (``None``) the careful path decides. Columns are drawn both as
SQLite writes them and as a tamperer could leave them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.storage.audit import _raw_entry, _stored_encoding

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
stored_times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")
)
odd_times = st.sampled_from(
    [
        "2025-13-01 00:00:00.000000",
        "2025-01-01 24:00:00.000000",
        "2025-01-01T00:00:00.000000",
        "2025-01-01 00:00:00",
        "2025-01-01 00:00:00.000000+00:00",
        "\u0662025-01-01 00:00:00.000000",
        "",
    ]
) | st.text(max_size=30)
good_details = st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(json.dumps)
odd_details = st.sampled_from(
    ['{"a": NaN}', '{"a": Infinity}', "[1, 2]", "7", "{", '{"a": 1, "a": 2}', '"x"', "null"]
) | st.text(max_size=20)
texts = st.text(max_size=16)


def check(seq: int, values: tuple[Any, ...]) -> bytes | None:
    fast = _stored_encoding(seq, values)
    if fast is not None:
        entry = _raw_entry(seq, values)
        assert entry is not None
        assert fast == entry.canonical()
    return fast


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**40),
    time=stored_times,
    columns=st.tuples(texts, texts, texts, texts),
    details=good_details,
)
def test_what_sqlite_stores_takes_the_fast_path_and_encodes_the_same(
    seq: int, time: str, columns: tuple[str, str, str, str], details: str
) -> None:
    assert check(seq, (time, *columns, details)) is not None


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**40),
    time=stored_times | odd_times,
    columns=st.tuples(texts, texts, texts, texts),
    details=good_details | odd_details,
)
def test_tampered_columns_never_encode_differently(
    seq: int, time: str, columns: tuple[str, str, str, str], details: str
) -> None:
    check(seq, (time, *columns, details))


def test_non_text_columns_take_the_careful_path() -> None:
    stored = "2025-03-04 05:06:07.000089"
    for odd in (None, 7, b"x"):
        assert _stored_encoding(1, (stored, odd, "a", "r", "ok", "{}")) is None
        assert _stored_encoding(1, (stored, "c", "a", "r", "ok", odd)) is None


def test_the_fast_path_applies_to_what_sqlite_stores() -> None:
    stored = datetime(2025, 3, 4, 5, 6, 7, 89, tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    values = (stored, "coordinator", "round.start", "round/1", "ok", '{"round": 1, "x": 0.1}')
    fast = _stored_encoding(1, values)
    assert fast is not None
    assert fast == (
        b'{"action":"round.start","actor":"coordinator","metadata":{"round":1,"x":0.1},'
        b'"outcome":"ok","resource":"round/1","seq":1,"time":"2025-03-04T05:06:07.000089Z"}'
    )
