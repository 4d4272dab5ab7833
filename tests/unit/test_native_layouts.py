"""The impressions decode's first tier done natively (native/src/layouts.rs) against its polars
path (the reference): the same rows for any batch (values in the producers' layouts, near misses of
every rule, arbitrary bytes and None), from a list or a Binary Series; and `decode_batch` the same,
its invalid records with the same reasons, with and without the native tier.

The extension is optional (built by `make install` when cargo is on PATH): without cargo these
tests are skipped with the reason; with cargo and no extension (or one built from an older
checkout, with other `LAYOUT_RULES`) they fail.
"""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.transports.kafka_native import BUILD_FIX
from dataflows.impressions import decode
from dataflows.impressions.decode import decode_batch
from dataflows.untrusted_json import MAX_ID_BYTES, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS

_MISSING = (
    None
    if decode._native is not None
    else f"the native decode (waxstreams_native.layout_rows, LAYOUT_RULES {decode.NATIVE_RULES}) is not built: {BUILD_FIX}"
)
if _MISSING is not None and shutil.which("cargo") is None:
    pytest.skip(f"no Rust toolchain, so no native decode: {_MISSING}", allow_module_level=True)


@pytest.fixture(autouse=True)
def native_decode_built() -> None:
    assert _MISSING is None, _MISSING


SPACED, COMPACT = decode._LAYOUTS
# Near misses of the layouts themselves: another key order, other whitespace.
LAYOUTS = (
    SPACED,
    COMPACT,
    decode._Layout('{"userId": "', '", "movieId": "', '", "timestamp": '),
    decode._Layout('{ "movieId": "', '", "userId": "', '", "timestamp": '),
    decode._Layout('{"movieId":"', '", "userId":"', '","timestamp":'),
)
ID_CHARS = ["a", "Z", "7", " ", "-", "é", "€", "😀", "\x00", "\x1f", "\x7f", "\x80", "\x9f", "\xa0", '"', "\\", "\n"]
ALNUM = st.from_regex(r"[0-9A-Za-z]{1,8}", fullmatch=True)
IDS = st.one_of(
    ALNUM,
    st.tuples(ALNUM, st.sampled_from(ID_CHARS), ALNUM).map("".join),  # one character of interest
    st.lists(st.sampled_from(ID_CHARS), max_size=6).map("".join),
    st.text(max_size=8),
    st.integers(MAX_ID_BYTES - 1, MAX_ID_BYTES + 1).map(lambda n: "m" * n),
    st.integers(0, 2).map(lambda n: "é" * (MAX_ID_BYTES // 2 - 1) + "a" * n),  # 2-byte characters, 198-200 bytes
    st.integers(0, 2).map(lambda n: "1" * (MAX_ID_BYTES - 4) + "😀" + "x" * n),  # a 4-byte one at the end
)
TIMES = st.one_of(
    st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1).map(str),
    st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1).map(str),
    st.integers(MIN_TIMESTAMP_MS - 2, MIN_TIMESTAMP_MS + 1).map(str),
    st.integers(MAX_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS + 1).map(str),
    st.integers(0, 10**20).map(str),
    st.sampled_from(["0", "01546844400001", "-1546844400001", "1546844400001.0", "1.5e12", "", " 1546844400001"]),
    st.sampled_from(["1" + "0" * 17, "9" * 18, "1" + "0" * 18, "9223372036854775807", "9223372036854775808"]),
)
ENDS = st.one_of(st.just("}"), st.just("}"), st.sampled_from(["", " }", "}\n", "}}", "} ", ', "x": 1}', "\n}"]))


@st.composite
def records(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=60))
    layout = draw(st.sampled_from(LAYOUTS))
    raw = (layout.head + draw(IDS) + layout.middle + draw(IDS) + layout.tail + draw(TIMES) + draw(ENDS)).encode()
    if kind == 2:  # one byte changed: invalid UTF-8, a stray quote, a control, a digit for a brace...
        i = draw(st.integers(0, len(raw) - 1))
        byte = draw(st.one_of(st.sampled_from(b'"\\\x00\x7f\x80\xc2\xff0 }'), st.integers(0, 255)))
        raw = raw[:i] + bytes([byte]) + raw[i + 1 :]
    return raw


BATCHES = st.lists(records(), max_size=24)


def as_series(values: list[bytes | None]) -> list[pl.Series]:
    """The batch as the Series a reader hands over: one chunk, a slice (an Arrow offset), several chunks."""
    whole = pl.Series("value", values, dtype=pl.Binary)
    sliced = pl.Series("value", [b"x", *values], dtype=pl.Binary).slice(1)
    half = len(values) // 2
    chunks = pl.concat([whole.slice(0, half), pl.Series("value", values[half:], dtype=pl.Binary)], rechunk=False)
    return [whole, sliced, chunks]


def judged(values: list[bytes | None] | pl.Series) -> tuple[list[tuple], list[tuple[int, type, str]]]:
    rows, invalid = decode_batch(values)
    assert rows.schema == decode.ROWS_SCHEMA
    return rows.rows(), [(i, type(exc), str(exc)) for i, exc in invalid]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_the_native_tier_returns_exactly_the_polars_tiers_rows(values: list[bytes | None]) -> None:
    reference = decode._polars_layout_rows(values)
    assert reference.schema == decode.ROWS_SCHEMA
    batches: list[list[bytes | None] | pl.Series] = [values, *as_series(values)]
    for batch in batches:
        native = decode._native_layout_rows(batch)
        assert native.schema == decode.ROWS_SCHEMA
        assert native.rows() == reference.rows(), batch


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_decode_batch_is_the_same_with_and_without_the_native_tier(values: list[bytes | None]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "_native", None)
        reference = judged(values), judged(pl.Series(values, dtype=pl.Binary))
    assert decode._native is not None
    assert (judged(values), judged(pl.Series(values, dtype=pl.Binary))) == reference


def test_the_native_tier_takes_what_the_rules_accept_and_nothing_else() -> None:
    """Against the rules written out, independently of either tier."""

    def spaced(movie: str, user: str = "u1", ts: str = "1546844400001", end: str = "}") -> bytes:
        return f'{{"movieId": "{movie}", "userId": "{user}", "timestamp": {ts}{end}'.encode()

    accepted: list[bytes | None] = [
        spaced("m" * MAX_ID_BYTES),
        spaced("é" * (MAX_ID_BYTES // 2 - 1) + "a1"),  # 200 bytes, 101 characters
        spaced(" \xa0x€"),  # a no-break space (not a control), a letter
        spaced("m", ts=str(MIN_TIMESTAMP_MS)),
        spaced("m", ts=str(MAX_TIMESTAMP_MS - 1)),
        b'{"movieId":"m","userId":"u","timestamp":1546844400001}',
    ]
    refused: list[bytes | None] = [
        spaced("m" * (MAX_ID_BYTES + 1)),
        spaced("é" * (MAX_ID_BYTES // 2) + "a"),  # 201 bytes
        spaced("a\x80"),  # C1
        spaced("a\x9f"),
        spaced("a\x7f"),
        spaced("a\x1f"),
        spaced('a\\"'),
        spaced("--"),
        spaced("m", ts=str(MIN_TIMESTAMP_MS - 1)),
        spaced("m", ts=str(MAX_TIMESTAMP_MS)),
        spaced("m", ts="01546844400001"),
        spaced("m", ts="1" + "0" * 18),  # 19 digits
        spaced("m", end=""),
        spaced("m", end=" }"),
        spaced("m", end="}\n"),
        spaced("m").replace(b"m", b"m\xff"),
        b'{"userId": "u1", "movieId": "m", "timestamp": 1546844400001}',
        None,
    ]
    values = accepted + refused
    expected = [0, 1, 2, 3, 4, 5]
    batches: list[list[bytes | None] | pl.Series] = [values, *as_series(values)]
    for batch in batches:
        assert decode._native_layout_rows(batch)["row"].to_list() == expected
    rows = decode._native_layout_rows(accepted)
    assert rows.row(2) == (2, " \xa0x€", "u1", 1546844400001)
    assert rows.row(5) == (5, "m", "u", 1546844400001)
    assert rows["ts"].to_list()[3:5] == [MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1]


def test_a_value_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(TypeError, match="bytes or None"):
        decode._native_layout_rows(["text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Arrow binary"):
        decode._native_layout_rows(pl.Series([1, 2]))  # type: ignore[arg-type]
