"""`slice_batch`'s reference: the same slices, record by record, exact for any input.

The columnar path is tested equal to it (tests/unit/test_columnar.py)."""

from __future__ import annotations

import polars as pl

from connectors.transports.batch import RecordBatch
from dataflows.dead_letters import DeadLetter, LateEvent, SourcePosition, rejected
from dataflows.event_time import is_late, partition_watermark, window_start
from dataflows.impressions.decode import decode_fields
from dataflows.impressions.layout import movie_shard
from dataflows.impressions.windows import TALLY_SCHEMA, WindowSlice


def slice_records(
    source: str,
    batch: RecordBatch,
    max_timestamp: int,
    *,
    window_ms: int,
    max_out_of_orderness_ms: int,
) -> tuple[list[WindowSlice | DeadLetter | LateEvent], int]:
    """`slice_batch` record by record, each through the record boundary: exact for any input."""
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    slices: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    watermark = partition_watermark(max_timestamp, max_out_of_orderness_ms)
    for i in range(len(batch)):
        try:
            movie_id, user_id, ts = decode_fields(batch.value(i))
        except Exception as exc:  # the record boundary: see dead_letters.rejected
            out.append(rejected(batch, i, exc))
            continue
        start = window_start(ts, window_ms)
        if is_late(ts, watermark, window_ms):
            position = SourcePosition(*batch.position(i))
            out.append(LateEvent(position, batch.value(i), ts, watermark, start, start + window_ms))
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
