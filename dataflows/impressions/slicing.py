"""One input partition's batch into window slices: decoded, judged for lateness and
pre-aggregated per (movie shard, window), as columns."""

from __future__ import annotations

import numpy as np
import polars as pl

from dataflows.dead_letters import DeadLetter, LateEvent, SourcePosition, rejected
from dataflows.event_time import NO_WATERMARK, partition_watermark
from dataflows.impressions.decode import decode_batch
from dataflows.impressions.layout import movie_shard
from dataflows.impressions.windows import WindowSlice


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
    its reference, `reference.slice_records` (tests/unit/test_columnar.py).
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
