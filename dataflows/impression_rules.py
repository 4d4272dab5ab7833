"""Movie impressions: the event, its validation, window and bucket arithmetic, output rows.

Pure functions only; the dataflow module wires them, connectors do the I/O.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

import msgspec
import numpy as np
import polars as pl

from dataflows.dead_letters import DeadLetter, LateEvent, SourcePosition, rejected
from dataflows.event_time import NO_WATERMARK, is_late, partition_watermark, to_datetime, window_start
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

# Column order of every output file (the first four as the Flink job wrote them).
OUTPUT_SCHEMA = pl.Schema(
    {
        "movieId": pl.String,
        "userId": pl.String,
        "impressions": pl.Int64,
        "latestImpression": pl.Int64,
        "windowStart": pl.Int64,
        "windowEnd": pl.Int64,
    }
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


def hour_folder(epoch_ms: int) -> str:
    """The hour folder of an instant, in UTC: `yyyy-MM-dd--HH` (Flink's default bucket name)."""
    return to_datetime(epoch_ms).strftime("%Y-%m-%d--%H")


def object_folder(prefix: str, window_start_ms: int, movie_id: str) -> str:
    """Object folder of a window's rows: `<prefix>/<yyyy-MM-dd--HH of window start>/<movieId>`.

    The id is percent-encoded so that '/' in an id cannot escape its folder, and an id
    of only dots ('.', '..') has its dots encoded too: path tools would resolve them.
    """
    return f"{_hour_directory(prefix, window_start_ms)}/{_movie_directory(movie_id)}"


def _hour_directory(prefix: str, window_start_ms: int) -> str:
    return "/".join([*([prefix.strip("/")] if prefix.strip("/") else []), hour_folder(window_start_ms)])


def _movie_directory(movie_id: str) -> str:
    folder = quote(movie_id, safe="")
    return folder if folder.strip(".") else folder.replace(".", "%2E")


# Windows are keyed by a shard of movies, not by movie: each batch then feeds the window
# operator a handful of columnar slices instead of one item per movie (docs/architecture.md,
# "Where the time goes"). Fixed, and part of the state's shape (settings.state_shape):
# a movie's open windows live under its shard's key, so another count would split them.
MOVIE_SHARDS = 16
WINDOW_STATE = f"movieId crc32 % {MOVIE_SHARDS}, columnar tallies"


def _shard_key(shard: int) -> str:
    return f"movies-{shard:02d}"


def movie_shards() -> list[str]:
    """Every key `movie_shard` gives."""
    return [_shard_key(i) for i in range(MOVIE_SHARDS)]


@functools.lru_cache(maxsize=1 << 16)
def movie_shard(movie_id: str) -> str:
    """The window key of a movie: stable across processes and runs, unlike hash()."""
    return _shard_key(zlib.crc32(movie_id.encode()) % MOVIE_SHARDS)


TALLY_SCHEMA = pl.Schema(
    {"movieId": pl.String, "userId": pl.String, "impressions": pl.Int64, "latestImpression": pl.Int64}
)


def _summed(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """One row per (movie, user): counts added, latest the newest.

    Eager: on frames of a window's size, a lazy query's planning costs as much as the work."""
    if len(parts) <= 1:  # a slice has one row per (movie, user) already
        return parts[0] if parts else TALLY_SCHEMA.to_frame()
    return (
        pl.concat(parts)
        .group_by("movieId", "userId")
        .agg(pl.col("impressions").sum(), pl.col("latestImpression").max())
    )


class WindowTallies:
    """A window's accumulator for one shard of movies: the batches' tallies (TALLY_SCHEMA
    frames), appended; summed once at close, and folded together whenever many pile up, so
    that the state (pickled at every snapshot) stays small.

    `movies`: the movies it holds. `counted`: whether this process counts them in the open
    movies gauge; a restored window is not counted until its next slice (`add`).
    """

    __slots__ = ("counted", "movies", "parts")
    _FOLD_AT = 64

    def __init__(self, parts: list[pl.DataFrame] | None = None, movies: set[str] | None = None) -> None:
        self.parts: list[pl.DataFrame] = parts if parts is not None else []
        self.movies: set[str] = movies if movies is not None else set()
        self.counted = False

    def __deepcopy__(self, memo: dict) -> WindowTallies:
        return WindowTallies(list(self.parts), set(self.movies))  # frames are never changed in place

    def __getstate__(self) -> tuple[list[pl.DataFrame], set[str]]:
        return (self.parts, self.movies)

    def __setstate__(self, state: tuple[list[pl.DataFrame], set[str]]) -> None:
        self.parts, self.movies = state
        self.counted = False

    def add(self, tallies: pl.DataFrame, movies: Iterable[str]) -> list[str]:
        """Appends a slice's tallies; returns the movies that start being counted (see class doc)."""
        self.parts.append(tallies)
        if len(self.parts) >= self._FOLD_AT:
            self.parts = [_summed(self.parts)]
        if self.counted:
            new = [m for m in movies if m not in self.movies]
            self.movies.update(new)
            return new
        self.movies.update(movies)
        self.counted = True
        return list(self.movies)

    def merge(self, other: WindowTallies) -> WindowTallies:
        for tallies in other.parts:
            self.add(tallies, other.movies)
        return self

    def summed(self) -> pl.DataFrame:
        return _summed(self.parts)


def window_rows(window_start_ms: int, length_ms: int, tallies: WindowTallies) -> pl.DataFrame:
    """Output rows (OUTPUT_SCHEMA) of one closed window of a shard's movies, sorted by movie and user."""
    return (
        _summed(tallies.parts)
        .sort("movieId", "userId")
        .select(
            *TALLY_SCHEMA.names(),
            windowStart=pl.lit(window_start_ms, pl.Int64),
            windowEnd=pl.lit(window_start_ms + length_ms, pl.Int64),
        )
    )


def folder_runs(prefix: str, window_start_ms: int, rows: pl.DataFrame) -> list[tuple[str, int]]:
    """(object folder, row count) of rows sorted by movie, in row order: the sink's split."""
    hour = _hour_directory(prefix, window_start_ms)
    runs = rows.get_column("movieId").rle().struct.unnest().rows()  # (length, movie) of each run
    return [(f"{hour}/{_movie_directory(movie)}", count) for count, movie in runs]


HOUR_MS = 3_600_000


class HourFolders:
    """Which of one shard's hour folders can get no more rows, as its windows close.

    A shard's windows close once the watermark passes their end, so once a window ending
    at `end` closed, every folder of an hour that ended by `end` rounded down to the hour
    is complete: its objects can be written before the epoch ends, as one object each.
    Only a hint to the sink, so it lives outside the recovered state: bytewax closes the
    windows one watermark passes in the order they opened, so after out-of-order input an
    earlier window can come out just after a later one, and its rows then cost an extra
    object (never a row).
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}  # folder -> its hour's end

    def closed(self, window_start_ms: int, window_ms: int, folders: Iterable[str]) -> list[str]:
        """Folders of the window just closed are noted; returns the folders complete now."""
        hour_end = window_start(window_start_ms, HOUR_MS) + HOUR_MS
        for folder in folders:
            self._open[folder] = hour_end
        complete_before = window_start(window_start_ms + window_ms, HOUR_MS)
        done = [folder for folder, end in self._open.items() if end <= complete_before]
        for folder in done:
            del self._open[folder]
        return done


@dataclass(slots=True)
class WindowSlice:
    """One input batch's valid, on-time impressions of one shard of movies in one window,
    one TALLY_SCHEMA row per (movie, user).

    Pre-aggregating each batch keeps per-event work out of the window operator
    (docs/architecture.md, "Where the time goes"). `latest` is the newest event time in
    it; `source_watermark` is the input partition's watermark after the batch and
    `watermark_before` its watermark before the batch: every later event of the partition
    was judged against at least that, so the window operator may close up to it on
    arrival (dataflows/event_time.py, "Per key").
    """

    shard: str
    window_start: int
    latest: int
    movies: list[str]
    tallies: pl.DataFrame
    source: str
    source_watermark: int
    watermark_before: int = NO_WATERMARK


def slice_batch(
    source: str,
    messages: list,
    max_timestamp: int,
    *,
    window_ms: int,
    max_out_of_orderness_ms: int,
) -> tuple[list[WindowSlice | DeadLetter | LateEvent], int]:
    """Decode, judge lateness and pre-aggregate one input partition's batch, in offset order.

    Takes and returns the partition's newest event time (its watermark state). The batch's
    valid records are handled as columns (`decode_batch`); only the records it cannot prove
    clean are judged one by one, so bad records cost themselves, not their batch. Equal to
    `slice_records`, the reference (tests/unit/test_columnar.py).
    """
    values = [m.value() for m in messages]
    rows, invalid = decode_batch(values)
    out: list[WindowSlice | DeadLetter | LateEvent] = [rejected(messages[i], exc) for i, exc in invalid]
    if rows.height == 0:
        return out, max_timestamp
    items, max_timestamp = _slice_columns(
        source, messages, values, rows, max_timestamp, window_ms=window_ms, bound_ms=max_out_of_orderness_ms
    )
    return out + items, max_timestamp


# A decoded batch's valid records: their index in the batch (offset order) and fields.
ROWS_SCHEMA = pl.Schema({"row": pl.Int64, "movieId": pl.String, "userId": pl.String, "ts": pl.Int64})


def decode_batch(values: list) -> tuple[pl.DataFrame, list[tuple[int, Exception]]]:
    """The batch's valid records (ROWS_SCHEMA, in offset order), and each invalid record's
    index with the reason.

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
    try:
        typed = _typed_rows([values[i] for i in rest])
    except Exception:
        typed = ROWS_SCHEMA.to_frame()
    if typed.height:  # all of `rest`, numbered within it
        return pl.concat([native, typed.with_columns(row=pl.Series(rest))]).sort("row"), []
    valid: list[tuple[int, str, str, int]] = []
    invalid: list[tuple[int, Exception]] = []
    for i in rest.tolist():
        try:
            valid.append((i, *decode_fields(values[i])))
        except Exception as exc:  # the record boundary: see dead_letters.rejected
            invalid.append((i, exc))
    if valid:
        native = pl.concat([native, pl.DataFrame(valid, schema=ROWS_SCHEMA, orient="row")]).sort("row")
    return native, invalid


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
        # An id the per-record path takes as it is: no quote, escape, C0, DEL or C1 control
        # (its length in bytes is checked after); the digits an integer without sign,
        # fraction, exponent or leading zero that fits an int64.
        text_id = r'[^"\\\x00-\x1f\x7f-\x9f]+'
        parts = (re.escape(self.head), text_id, re.escape(self.middle), text_id, re.escape(self.tail))
        return "^" + "".join(parts) + r"[1-9][0-9]{0,17}\}$"

    def cut(self, lines: pl.DataFrame) -> pl.DataFrame:
        """ROWS_SCHEMA of `lines` (row, line, text) that match `pattern`, cut between the
        literal pieces (found where they first occur: the ids hold no quote)."""
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
        return cuts.select(
            pl.col("row").cast(pl.Int64),
            raw.bin.slice(head, movie_end - head).cast(pl.String).alias("movieId"),
            raw.bin.slice(movie_end + middle, user_end - movie_end - middle).cast(pl.String).alias("userId"),
            raw.bin.slice(user_end + tail, pl.col("end") - user_end - tail).cast(pl.String).cast(pl.Int64).alias("ts"),
        )


# json.dumps' default and the compact one (JSON.stringify, Jackson), keys in the producers' order.
_LAYOUTS = (
    _Layout('{"movieId": "', '", "userId": "', '", "timestamp": '),
    _Layout('{"movieId":"', '","userId":"', '","timestamp":'),
)


def _layout_rows(values: list) -> pl.DataFrame:
    """ROWS_SCHEMA of the records in one of `_LAYOUTS` whose fields are accepted as they are.

    One regex match per record proves it (valid UTF-8 first, by the cast): a JSON object
    with exactly these keys, whose ids hold no quote. No Python object per field and no
    JSON parse (on 50,000-record batches: about 290 ns per event, against 650 for proving
    the layout with numpy over the bytes and 960 for polars' NDJSON reader).
    """
    lines = pl.Series("line", values, dtype=pl.Binary).to_frame().with_row_index("row")
    try:
        text = lines.get_column("line").cast(pl.String)
    except pl.exceptions.PolarsError:  # not all UTF-8 (polars has no lenient cast): the others are judged alone
        lines = lines.filter(pl.Series(_utf8(values)))
        text = lines.get_column("line").cast(pl.String)
    lines = lines.with_columns(text=text)
    found = []
    for layout in _LAYOUTS:
        matches = lines.get_column("text").str.contains(layout.pattern).fill_null(False)
        if matches.all():
            found.append(layout.cut(lines))
            break
        if matches.any():
            found.append(layout.cut(lines.filter(matches)))
            lines = lines.filter(~matches)
    if not found:
        return ROWS_SCHEMA.to_frame()
    return _accepted_as_is(found[0] if len(found) == 1 else pl.concat(found).sort("row"))


def _utf8(values: list) -> np.ndarray:
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


def _slice_columns(
    source: str,
    messages: list,
    values: list,
    rows: pl.DataFrame,
    max_timestamp: int,
    *,
    window_ms: int,
    bound_ms: int,
) -> tuple[list[WindowSlice | DeadLetter | LateEvent], int]:
    """`slice_batch` of the batch's valid records (`rows`: ROWS_SCHEMA, in offset order)."""
    ts = rows["ts"].to_numpy()
    # Lateness in offset order: each event against the watermark of the events before it.
    before = np.maximum.accumulate(np.concatenate(([max_timestamp], ts)))[:-1]
    watermarks = np.where(before > NO_WATERMARK, before - bound_ms, NO_WATERMARK)
    starts = ts - ts % window_ms
    late = starts + window_ms <= watermarks
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    if late.any():
        indices = rows["row"].to_numpy()
        for i in np.flatnonzero(late).tolist():
            msg = messages[indices[i]]
            position = SourcePosition(msg.topic(), msg.partition(), msg.offset())
            start = int(starts[i])
            out.append(
                LateEvent(position, values[indices[i]], int(ts[i]), int(watermarks[i]), start, start + window_ms)
            )
    watermark_before = partition_watermark(max_timestamp, bound_ms)
    max_timestamp = max(max_timestamp, int(ts.max()))  # a late event is older than the newest
    watermark = partition_watermark(max_timestamp, bound_ms)
    on_time = rows.select("movieId", "userId", "ts", start=pl.Series(starts))
    if late.any():
        on_time = on_time.filter(pl.Series(~late))
    tallies = on_time.group_by("movieId", "start", "userId").agg(
        impressions=pl.len().cast(pl.Int64), latestImpression=pl.col("ts").max()
    )
    movies = tallies["movieId"].unique()
    tallies = tallies.with_columns(
        shard=tallies["movieId"].replace_strict(movies, [movie_shard(m) for m in movies.to_list()])
    )
    # Per (shard, window): its newest event and its movies in one pass, then its rows.
    heads = tallies.group_by("shard", "start").agg(pl.col("latestImpression").max(), pl.col("movieId").unique())
    pieces = tallies.partition_by("shard", "start", as_dict=True, include_key=False)
    for shard, start, latest, movie_ids in heads.iter_rows():
        piece = pieces[shard, start]
        out.append(WindowSlice(shard, start, latest, movie_ids, piece, source, watermark, watermark_before))
    return out, max_timestamp


def slice_records(
    source: str,
    messages: list,
    max_timestamp: int,
    *,
    window_ms: int,
    max_out_of_orderness_ms: int,
) -> tuple[list[WindowSlice | DeadLetter | LateEvent], int]:
    """`slice_batch` record by record, each through the record boundary: exact for any input."""
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    slices: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
    for msg in messages:
        try:
            movie_id, user_id, ts = decode_fields(msg.value())
        except Exception as exc:  # the record boundary: see dead_letters.rejected
            out.append(rejected(msg, exc))
            continue
        start = window_start(ts, window_ms)
        if is_late(ts, watermark, window_ms):
            position = SourcePosition(msg.topic(), msg.partition(), msg.offset())
            out.append(LateEvent(position, msg.value(), ts, watermark, start, start + window_ms))
            continue
        if ts > max_timestamp:
            max_timestamp = ts
            watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
        users = slices.setdefault((movie_id, start), {})
        count, newest = users.get(user_id, (0, ts))
        users[user_id] = (count + 1, max(newest, ts))
    watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
    shards: dict[tuple[str, int], list[tuple[str, str, int, int]]] = {}
    for (movie_id, start), users in slices.items():
        rows = shards.setdefault((movie_shard(movie_id), start), [])
        rows.extend((movie_id, user, count, newest) for user, (count, newest) in users.items())
    for (shard, start), rows in shards.items():
        piece = pl.DataFrame(rows, schema=TALLY_SCHEMA, orient="row")
        movies = list(dict.fromkeys(movie for movie, _, _, _ in rows))
        out.append(WindowSlice(shard, start, max(r[3] for r in rows), movies, piece, source, watermark))
    return out, max_timestamp


# Users per late-slice record, so that it fits a Kafka message as a dead letter does
# (MAX_DEAD_LETTER_BYTES): a user's entry is at most about 1,250 bytes (an id of
# MAX_ID_BYTES, each byte escaped to at most six characters, and two integers).
LATE_USERS_PER_RECORD = 500


def late_slice_records(piece: WindowSlice) -> list[tuple[bytes, bytes]]:
    """Late-topic records for impressions the window operator found late (already
    aggregated): per movie, keyed by it, one record per LATE_USERS_PER_RECORD users."""
    reason = (
        f"window starting {piece.window_start} closed before these impressions arrived "
        "(an idle input partition let the watermark pass)"
    )
    records = []
    for (movie_id,), rows in piece.tallies.partition_by("movieId", as_dict=True, maintain_order=True).items():
        for chunk in rows.iter_slices(LATE_USERS_PER_RECORD):
            record = {
                "reason": reason,
                "movieId": movie_id,
                "windowStart": piece.window_start,
                "source": piece.source,
                "impressions": {user: [count, latest] for _, user, count, latest in chunk.iter_rows()},
            }
            records.append((movie_id.encode(), json.dumps(record).encode()))
    return records
