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
from dataflows.impressions.windows import WindowSlice


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
    if late.any():
        on_time = ~late
        rows, ts, starts = rows.filter(pl.Series(on_time)), ts[on_time], starts[on_time]
    return out + _slices(rows, ts, starts, source, watermark, watermark_before, window_ms), max_timestamp


_SHARDS = movie_shards()
_SHARD_NUMBERS = {shard: number for number, shard in enumerate(_SHARDS)}


def _codes(column: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Each value's number among the column's distinct values (in no particular order), and those values."""
    distinct = column.unique()
    return column.cast(pl.Enum(distinct)).to_physical().to_numpy().astype(np.int64), distinct


def _slices(
    rows: pl.DataFrame,
    ts: np.ndarray,
    starts: np.ndarray,
    source: str,
    watermark: int,
    watermark_before: int,
    window_ms: int,
) -> list[WindowSlice | DeadLetter | LateEvent]:
    """A slice per (shard, window) of the on-time `rows` (ts and window starts given), in
    window and shard order, tallied per (movie, user): the events numbered by (window,
    shard, movie, user) and sorted once with numpy, each run summed, then cut into
    zero-copy slices. Integers throughout: no string is hashed twice or compared."""
    if rows.height == 0:
        return []
    movie_of, movies = _codes(rows.get_column("movieId"))
    user_of, users = _codes(rows.get_column("userId"))
    names = movies.to_list()
    shard_of = np.array([_SHARD_NUMBERS[movie_shard(m)] for m in names], dtype=np.int64)
    windows = starts // window_ms
    first_window = int(windows.min())
    piece_of = (windows - first_window) * MOVIE_SHARDS + shard_of[movie_of]
    pieces, n_movies, n_users = (int(windows.max()) - first_window + 1) * MOVIE_SHARDS, len(names), len(users)
    if pieces * n_movies * n_users < 2**62:  # one int64 key
        key = (piece_of * n_movies + movie_of) * n_users + user_of
        order = np.argsort(key)
        key = key[order]
        firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    else:  # a batch spanning years of tiny windows
        order = np.lexsort((user_of, movie_of, piece_of))
        p, m, u = piece_of[order], movie_of[order], user_of[order]
        firsts = np.flatnonzero(np.r_[True, (p[1:] != p[:-1]) | (m[1:] != m[:-1]) | (u[1:] != u[:-1])])
    take = order[firsts]  # a row of each (piece, movie, user)
    latest = np.maximum.reduceat(ts[order], firsts)
    tallies = rows.select("movieId", "userId")[take].with_columns(
        impressions=pl.Series(np.diff(firsts, append=len(order)), dtype=pl.Int64),
        latestImpression=pl.Series(latest, dtype=pl.Int64),
    )
    piece_of, movie_of = piece_of[take], movie_of[take]
    firsts = np.flatnonzero(np.r_[True, piece_of[1:] != piece_of[:-1]])
    newest = np.maximum.reduceat(latest, firsts).tolist()
    # Each piece's movies: the first row of each (piece, movie) run.
    runs = np.flatnonzero(np.r_[True, (piece_of[1:] != piece_of[:-1]) | (movie_of[1:] != movie_of[:-1])])
    run_movies = np.array(names, dtype=object)[movie_of[runs]]
    piece_movies = np.split(run_movies, np.searchsorted(runs, firsts[1:]))
    ends = [*firsts[1:].tolist(), tallies.height]
    out: list[WindowSlice | DeadLetter | LateEvent] = []
    for first, end, latest_in, in_piece in zip(firsts.tolist(), ends, newest, piece_movies, strict=True):
        piece = int(piece_of[first])
        shard, start = _SHARDS[piece % MOVIE_SHARDS], (piece // MOVIE_SHARDS + first_window) * window_ms
        out.append(
            WindowSlice(
                shard,
                start,
                latest_in,
                in_piece.tolist(),
                tallies.slice(first, end - first),
                source,
                watermark,
                watermark_before,
            )
        )
    return out
