"""Movie impressions: the event, its validation, window and bucket arithmetic, output rows.

Pure functions only; the dataflow module wires them, connectors do the I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import msgspec
import polars as pl

from dataflows.dead_letters import DeadLetter, LateEvent, SourcePosition, rejected
from dataflows.event_time import is_late, partition_watermark, to_datetime, window_start
from dataflows.untrusted_json import (
    MAX_EVENT_BYTES,
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
    parts = [prefix.strip("/")] if prefix.strip("/") else []
    folder = quote(movie_id, safe="")
    if not folder.strip("."):
        folder = folder.replace(".", "%2E")
    return "/".join([*parts, hour_folder(window_start_ms), folder])


class UserTallies(dict[str, tuple[int, int]]):
    """Per-user (impressions, latestImpression) of one movie in one window.

    Values are immutable tuples, so a shallow copy is a safe snapshot; bytewax
    deep-copies window state at every snapshot, which for large dicts dominates.
    """

    def __deepcopy__(self, memo: dict) -> UserTallies:
        return UserTallies(self)

    def add(self, user_id: str, count: int, latest: int) -> None:
        seen = self.get(user_id)
        if seen is None:
            self[user_id] = (count, latest)
        else:
            self[user_id] = (seen[0] + count, max(seen[1], latest))

    def merge(self, other: dict[str, tuple[int, int]]) -> UserTallies:
        for user_id, (count, latest) in other.items():
            self.add(user_id, count, latest)
        return self


def window_rows(movie_id: str, window_start_ms: int, length_ms: int, tallies: UserTallies) -> dict[str, list]:
    """Output columns (OUTPUT_SCHEMA order) of one closed window of one movie, sorted by user."""
    users = sorted(tallies)
    return {
        "movieId": [movie_id] * len(users),
        "userId": users,
        "impressions": [tallies[u][0] for u in users],
        "latestImpression": [tallies[u][1] for u in users],
        "windowStart": [window_start_ms] * len(users),
        "windowEnd": [window_start_ms + length_ms] * len(users),
    }


@dataclass(slots=True)
class WindowSlice:
    """One input batch's valid, on-time impressions of one movie in one window, per user.

    Pre-aggregating each batch keeps per-event work out of the window operator
    (docs/architecture.md, "Where the time goes"). `source_watermark` is the input
    partition's watermark after the batch.
    """

    movie_id: str
    window_start: int
    latest: int
    tallies: UserTallies
    source: str
    source_watermark: int


def slice_batch(
    source: str,
    messages: list,
    max_timestamp: int,
    *,
    window_ms: int,
    max_out_of_orderness_ms: int,
) -> tuple[list[WindowSlice | DeadLetter | LateEvent], int]:
    """Decode, judge lateness and pre-aggregate one input partition's batch, in offset order.

    Takes and returns the partition's newest event time (its watermark state).
    """
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    slices: dict[tuple[str, int], WindowSlice] = {}
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
        piece = slices.get((movie_id, start))
        if piece is None:
            piece = slices[(movie_id, start)] = WindowSlice(movie_id, start, ts, UserTallies(), source, 0)
        elif ts > piece.latest:
            piece.latest = ts
        piece.tallies.add(user_id, 1, ts)
    watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
    for piece in slices.values():
        piece.source_watermark = watermark
        out.append(piece)
    return out, max_timestamp


def late_slice_record(piece: WindowSlice) -> bytes:
    """Late-topic record for impressions the window operator found late (already aggregated)."""
    return json.dumps(
        {
            "reason": f"window starting {piece.window_start} closed before these impressions arrived "
            "(an idle input partition let the watermark pass)",
            "movieId": piece.movie_id,
            "windowStart": piece.window_start,
            "source": piece.source,
            "impressions": {user: list(tally) for user, tally in piece.tallies.items()},
        }
    ).encode()
