"""One input partition's batch into window slices: decoded, judged for lateness and
pre-aggregated per (movie shard, window), as columns."""

from __future__ import annotations

import numpy as np
import polars as pl

from connectors.transports.batch import RecordBatch
from dataflows.dead_letters import DeadLetter, LateEvent, SourcePosition, rejected
from dataflows.event_time import NO_WATERMARK, partition_watermark
from dataflows.impressions.decode import decode_batch
from dataflows.impressions.layout import MOVIE_SHARDS, movie_shard, movie_shards
from dataflows.impressions.windows import TALLY_SCHEMA, WindowSlice, sort_order


def slice_batch(
    source: str,
    batch: RecordBatch,
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
    rows, invalid = decode_batch(batch.values)
    out: list[WindowSlice | DeadLetter | LateEvent] = [rejected(batch, i, exc) for i, exc in invalid]
    if rows.height == 0:
        return out, max_timestamp
    items, max_timestamp = _slice_columns(
        source, batch, rows, max_timestamp, window_ms=window_ms, bound_ms=max_out_of_orderness_ms
    )
    return out + items, max_timestamp


def _slice_columns(
    source: str,
    batch: RecordBatch,
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
            record = int(indices[i])
            position = SourcePosition(*batch.position(record))
            start = int(starts[i])
            out.append(
                LateEvent(position, batch.value(record), int(ts[i]), int(watermarks[i]), start, start + window_ms)
            )
    watermark_before = partition_watermark(max_timestamp, bound_ms)
    max_timestamp = max(max_timestamp, int(ts.max()))  # a late event is older than the newest
    watermark = partition_watermark(max_timestamp, bound_ms)
    on_time = rows.select("movieId", "userId", "ts", window=pl.Series(starts // window_ms))
    if late.any():
        on_time = on_time.filter(pl.Series(~late))
    # Hashed once per event: on few (movie, user) pairs the group-by leaves little to sort.
    tallies = on_time.group_by("movieId", "window", "userId").agg(
        impressions=pl.len().cast(pl.Int64), latestImpression=pl.col("ts").max()
    )
    return out + _slices(tallies, source, watermark, watermark_before, window_ms), max_timestamp


_SHARDS = movie_shards()
_SHARD_NUMBERS = {shard: number for number, shard in enumerate(_SHARDS)}


def _slices(
    tallies: pl.DataFrame, source: str, watermark: int, watermark_before: int, window_ms: int
) -> list[WindowSlice | DeadLetter | LateEvent]:
    """A slice per (shard, window) of the batch's tallies, in window and shard order: the
    rows ordered by (window, shard, movie) with one numpy sort of an integer key (movies
    numbered by an Enum cast), then cut into zero-copy slices."""
    if tallies.height == 0:
        return []
    movies = tallies.get_column("movieId").unique()
    names = movies.to_list()
    shard_of = np.array([_SHARD_NUMBERS[movie_shard(m)] for m in names], dtype=np.int64)
    movie_of = tallies.get_column("movieId").cast(pl.Enum(movies)).to_physical().to_numpy().astype(np.int64)
    windows = tallies.get_column("window").to_numpy()
    first_window = int(windows.min())
    piece_of = (windows - first_window) * MOVIE_SHARDS + shard_of[movie_of]
    pieces = (int(windows.max()) - first_window + 1) * MOVIE_SHARDS
    order = sort_order((piece_of, movie_of), (pieces, len(names)))
    piece_of, movie_of = piece_of[order], movie_of[order]
    rows = tallies.select(*TALLY_SCHEMA.names())[order]
    firsts = np.flatnonzero(np.r_[True, piece_of[1:] != piece_of[:-1]])
    latest = np.maximum.reduceat(rows.get_column("latestImpression").to_numpy(), firsts).tolist()
    # Each piece's movies: the first row of each (piece, movie) run.
    runs = np.flatnonzero(np.r_[True, (piece_of[1:] != piece_of[:-1]) | (movie_of[1:] != movie_of[:-1])])
    run_movies = np.array(names, dtype=object)[movie_of[runs]]
    piece_movies = np.split(run_movies, np.searchsorted(runs, firsts[1:]))
    ends = [*firsts[1:].tolist(), rows.height]
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    for first, end, newest, in_piece in zip(firsts.tolist(), ends, latest, piece_movies, strict=True):
        piece = int(piece_of[first])
        shard, start = _SHARDS[piece % MOVIE_SHARDS], (piece // MOVIE_SHARDS + first_window) * window_ms
        out.append(
            WindowSlice(
                shard,
                start,
                newest,
                in_piece.tolist(),
                rows.slice(first, end - first),
                source,
                watermark,
                watermark_before,
            )
        )
    return out
