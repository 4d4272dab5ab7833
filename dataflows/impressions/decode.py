"""An impression's bytes to its fields, in three tiers: the producers' layouts cut natively,
other clean batches by one typed decode, and anything else record by record (the reference rules)."""

from __future__ import annotations

import functools
import re
import types
from dataclasses import dataclass

import msgspec
import numpy as np
import polars as pl

from dataflows.untrusted_json import (
    MAX_EVENT_BYTES,
    MAX_ID_BYTES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    decode_json_object,
    event_time_value,
    has_only_these_strings,
    id_value,
    is_clean_id,
)


@dataclass(frozen=True, slots=True)
class MovieImpression:
    movie_id: str
    user_id: str
    timestamp: int  # epoch milliseconds, UTC


def decode_impression(raw: bytes | None) -> MovieImpression:
    """Parse and validate one Kafka message value; raises InvalidEvent with the reason."""
    obj = decode_json_object(raw)
    return MovieImpression(
        id_value(obj.get("movieId"), "movieId"),
        id_value(obj.get("userId"), "userId"),
        event_time_value(obj.get("timestamp"), "timestamp"),
    )


class _WireImpression(msgspec.Struct, rename="camel", gc=False):
    movie_id: str | int
    user_id: str | int
    timestamp: int


_typed = msgspec.json.Decoder(_WireImpression)


def decode_fields(raw: bytes | None) -> tuple[str, str, int]:
    """(movieId, userId, timestamp) of a message: `decode_impression`, faster on the common case.

    The typed decoder validates in C; anything it rejects, or that it cannot prove
    clean (integer ids, escapes, other fields that might repeat a key), takes the full
    path, which accepts the same events and explains the rejections.
    """
    if raw and len(raw) <= MAX_EVENT_BYTES:
        try:
            wire = _typed.decode(raw)
        except Exception:  # whatever the fast decoder trips on, the full path judges
            pass
        else:
            movie, user, ts = wire.movie_id, wire.user_id, wire.timestamp
            if (
                type(movie) is str
                and type(user) is str
                and has_only_these_strings(raw, 5)  # 3 keys + 2 string ids: nothing else, no repeats
                and is_clean_id(movie)
                and is_clean_id(user)
                and MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS
            ):
                return movie, user, ts
    event = decode_impression(raw)
    return event.movie_id, event.user_id, event.timestamp


# A decoded batch's valid records: their index in the batch (offset order) and fields.
ROWS_SCHEMA = pl.Schema({"row": pl.Int64, "movieId": pl.String, "userId": pl.String, "ts": pl.Int64})


def decode_batch(values: list[bytes | None] | pl.Series) -> tuple[pl.DataFrame, list[tuple[int, Exception]]]:
    """The batch's valid records (ROWS_SCHEMA, in offset order), and each invalid record's
    index with the reason. `values`: a list, or a Binary Series (of which only the records
    not in a producer's layout are listed).

    Records in one of the producers' layouts are proven clean and cut natively
    (`_layout_rows`); the others are tried together by one typed decode (`_typed_rows`,
    all or none of them); every record left is judged alone by the per-record rules
    (`decode_fields`), which accept the same events and explain the rejections.
    """
    # The record boundary's batch side: whatever a batch decode trips on, its records are judged alone.
    try:
        native = _layout_rows(values)
    except Exception:
        native = ROWS_SCHEMA.to_frame()
    if native.height == len(values):
        return native, []
    rest = _others(native, len(values))
    # Only the records left are listed (from a Series: gathered, then listed).
    left = [values[i] for i in rest] if isinstance(values, list) else values.gather(rest).to_list()
    try:
        typed = _typed_rows(left)
    except Exception:
        typed = ROWS_SCHEMA.to_frame()
    if typed.height:  # all of `rest`, numbered within it
        return pl.concat([native, typed.with_columns(row=pl.Series(rest))]).sort("row"), []
    valid: list[tuple[int, str, str, int]] = []
    invalid: list[tuple[int, Exception]] = []
    for i, value in zip(rest.tolist(), left, strict=True):
        try:
            valid.append((i, *decode_fields(value)))
        except Exception as exc:  # the record boundary: see dead_letters.rejected
            invalid.append((i, exc))
    if valid:
        native = pl.concat([native, pl.DataFrame(valid, schema=ROWS_SCHEMA, orient="row")]).sort("row")
    return native, invalid


def _listed(values: list[bytes | None] | pl.Series) -> list[bytes | None]:
    return values if isinstance(values, list) else values.to_list()


def _others(rows: pl.DataFrame, count: int) -> np.ndarray:
    """The indices of a batch of `count` records that `rows` does not hold, in order."""
    others = np.ones(count, dtype=bool)
    others[rows.get_column("row").to_numpy()] = False
    return np.flatnonzero(others)


_ASCII_ALNUM = r"[0-9A-Za-z]"


def _accepted_as_is(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows whose fields the per-record path would accept as they are: ids of at most
    MAX_ID_BYTES holding an ASCII letter or digit (so never blank), the time in range."""
    ids = pl.col("movieId", "userId")
    ok = pl.all_horizontal(
        ids.str.len_bytes() <= MAX_ID_BYTES,
        ids.str.contains(_ASCII_ALNUM),
        pl.col("ts").is_between(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS, closed="left"),
    )
    checked = rows.select(ok.all()).item()
    return rows if checked else rows.filter(ok)


@dataclass(frozen=True)
class _Layout:
    """A producer's exact layout: `head` <movieId> `middle` <userId> `tail` <digits> `}`."""

    head: str
    middle: str
    tail: str

    @functools.cached_property
    def pattern(self) -> str:
        # An id the per-record path takes as it is: no quote, escape, C0, DEL or C1 control,
        # an ASCII letter or digit somewhere (so never blank; its length in bytes is checked
        # after); the digits an integer without sign, fraction, exponent or leading zero that
        # fits an int64. The DFA proves it all in the one pass.
        text = r'[^"\\\x00-\x1f\x7f-\x9f]*'
        text_id = text + _ASCII_ALNUM + text
        parts = (re.escape(self.head), text_id, re.escape(self.middle), text_id, re.escape(self.tail))
        return "^" + "".join(parts) + r"[1-9][0-9]{0,17}\}$"

    def cut(self, lines: pl.DataFrame) -> pl.DataFrame:
        """ROWS_SCHEMA of `lines` (row, line, text) that match `pattern`, cut between the
        literal pieces (found where they first occur: the ids hold no quote), and only the
        rows whose fields are accepted as they are (`_accepted_as_is`, the rest of it:
        each id's length in bytes, the time's range)."""
        head, middle, tail = len(self.head), len(self.middle), len(self.tail)
        text = pl.col("text")
        # Byte offsets (`str.find` counts bytes, `str.slice` would count characters).
        cuts = lines.select(
            "row",
            "line",
            movie_end=text.str.find(self.middle, literal=True),
            user_end=text.str.find(self.tail, literal=True),
            end=text.str.len_bytes() - 1,
        )
        raw, movie_end, user_end = pl.col("line"), pl.col("movie_end"), pl.col("user_end")
        movie_bytes, user_bytes = movie_end - head, user_end - movie_end - middle
        rows = cuts.select(
            pl.col("row").cast(pl.Int64),
            raw.bin.slice(head, movie_bytes).cast(pl.String).alias("movieId"),
            raw.bin.slice(movie_end + middle, user_bytes).cast(pl.String).alias("userId"),
            raw.bin.slice(user_end + tail, pl.col("end") - user_end - tail).cast(pl.String).cast(pl.Int64).alias("ts"),
            ok=pl.max_horizontal(movie_bytes, user_bytes) <= MAX_ID_BYTES,
        )
        ok = pl.col("ok") & pl.col("ts").is_between(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS, closed="left")
        if rows.select(ok.all()).item():
            return rows.drop("ok")
        return rows.filter(ok).drop("ok")


# json.dumps' default and the compact one (JSON.stringify, Jackson), keys in the producers' order.
_LAYOUTS = (
    _Layout('{"movieId": "', '", "userId": "', '", "timestamp": '),
    _Layout('{"movieId":"', '","userId":"', '","timestamp":'),
)


def _layout_rows(values: list[bytes | None] | pl.Series) -> pl.DataFrame:
    """ROWS_SCHEMA of the records in one of `_LAYOUTS` whose fields are accepted as they are:
    natively when the extension is installed (`_native_layout_rows`), else by polars."""
    if _native is None:
        return _polars_layout_rows(values)
    return _native_layout_rows(values)


def _native_layout_rows(values: list[bytes | None] | pl.Series) -> pl.DataFrame:
    """`_polars_layout_rows` by the extension (native/src/layouts.rs): one pass over each record's
    bytes under the same rules, the ids handed over as Arrow text columns without a copy."""
    assert _native is not None
    rows, movies, users, ts = _native.layout_rows(
        values, _NATIVE_LAYOUTS, MAX_ID_BYTES, MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS
    )
    columns = {
        "row": np.frombuffer(rows, np.int64),
        "movieId": pl.Series(movies),
        "userId": pl.Series(users),
        "ts": np.frombuffer(ts, np.int64),
    }
    return pl.DataFrame(columns, schema=ROWS_SCHEMA)


# The rules native/src/layouts.rs hard-codes (the characters an id may hold, the digits): a
# change to them here or there bumps both, so an extension built from an older checkout is not used.
NATIVE_RULES = 1


def _load_native() -> types.ModuleType | None:
    """The optional extension (native/, built by `make install` when cargo is there) if it
    decodes by these rules (one built from an older checkout may not), else None: polars decodes."""
    try:
        import waxstreams_native  # type: ignore[import-not-found]
    except ImportError:
        return None
    return waxstreams_native if getattr(waxstreams_native, "LAYOUT_RULES", None) == NATIVE_RULES else None


_native = _load_native()
_NATIVE_LAYOUTS = [(layout.head.encode(), layout.middle.encode(), layout.tail.encode()) for layout in _LAYOUTS]


def _polars_layout_rows(values: list[bytes | None] | pl.Series) -> pl.DataFrame:
    """`_layout_rows` without the extension (and its reference).

    One regex match per record proves it (valid UTF-8 first, by the cast): a JSON object
    with exactly these keys, whose ids hold no quote. No Python object per field and no
    JSON parse (on 50,000-record batches: about 290 ns per event, against 650 for proving
    the layout with numpy over the bytes and 960 for polars' NDJSON reader).
    """
    column = values.alias("line") if isinstance(values, pl.Series) else pl.Series("line", values, dtype=pl.Binary)
    lines = column.to_frame().with_row_index("row")
    try:
        text = lines.get_column("line").cast(pl.String)
    except pl.exceptions.PolarsError:  # not all UTF-8 (polars has no lenient cast): the others are judged alone
        lines = lines.filter(pl.Series(_utf8(_listed(values))))
        text = lines.get_column("line").cast(pl.String)
    lines = lines.with_columns(text=text)
    found = []
    for layout in _in_likely_order(text):
        matches = lines.get_column("text").str.contains(layout.pattern).fill_null(False)
        if matches.all():
            found.append(layout.cut(lines))
            break
        if matches.any():
            found.append(layout.cut(lines.filter(matches)))
            lines = lines.filter(~matches)
    if not found:
        return ROWS_SCHEMA.to_frame()
    return found[0] if len(found) == 1 else pl.concat(found).sort("row")


def _in_likely_order(text: pl.Series) -> tuple[_Layout, ...]:
    """`_LAYOUTS`, the first record's first: a batch is mostly one producer's, so one match pass."""
    first = text[0] if len(text) else None
    for i, layout in enumerate(_LAYOUTS):
        if first is not None and first.startswith(layout.head):
            return (layout, *_LAYOUTS[:i], *_LAYOUTS[i + 1 :])
    return _LAYOUTS


def _utf8(values: list[bytes | None]) -> np.ndarray:
    """Which records are valid UTF-8 (a missing one counts as valid: it has no bytes).

    One numpy pass finds the records with a byte over 0x7F; only those are decoded."""
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    data = np.frombuffer(b"".join(v for v in values if v is not None), np.uint8)
    ends = np.cumsum(lengths)
    valid = np.ones(len(values), dtype=bool)
    for i in np.unique(np.searchsorted(ends, np.flatnonzero(data > 0x7F), side="right")).tolist():
        try:
            values[i].decode()
        except UnicodeDecodeError:
            valid[i] = False
    return valid


class _WireText(msgspec.Struct, rename="camel", gc=False):
    movie_id: str
    user_id: str
    timestamp: int


_typed_batch = msgspec.json.Decoder(list[_WireText])


def _typed_rows(values: list) -> pl.DataFrame:
    """ROWS_SCHEMA of the whole batch by one typed decode of it as a JSON array (any clean
    layout), once the bytes prove that each record is one object of five strings without
    escapes, and each record's fields are accepted as they are; else no rows."""
    none = ROWS_SCHEMA.to_frame()
    if not values or None in values:
        return none
    joined = b",".join(values)
    if b"\\" in joined or b"\x7f" in joined:  # a byte search: faster than a pass of numpy
        return none
    buf = np.frombuffer(joined, np.uint8)
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    if lengths.min() == 0 or lengths.max() > MAX_EVENT_BYTES:
        return none
    starts = np.zeros(len(values), np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    ends = starts + lengths - 1
    if not ((buf[starts] == ord("{")).all() and (buf[ends] == ord("}")).all()):
        return none
    c1_lead = b"\xc2" in joined  # every C1 control in UTF-8 starts with it
    if c1_lead and ((buf[:-1] == 0xC2) & (buf[1:] >= 0x80) & (buf[1:] <= 0x9F)).any():
        return none
    quotes = np.flatnonzero(buf == ord('"'))
    # A record's quotes: from the first at or after its start to the first of the next record.
    if not (np.diff(np.searchsorted(quotes, starts), append=len(quotes)) == 10).all():
        return none
    wires = _typed_batch.decode(b"[" + joined + b"]")
    if len(wires) != len(values):
        return none
    rows = pl.DataFrame(
        {
            "row": np.arange(len(wires), dtype=np.int64),
            "movieId": [w.movie_id for w in wires],
            "userId": [w.user_id for w in wires],
            "ts": np.fromiter((w.timestamp for w in wires), np.int64, len(wires)),
        },
        schema=ROWS_SCHEMA,
    )
    accepted = _accepted_as_is(rows)
    return rows if accepted.height == rows.height else none
