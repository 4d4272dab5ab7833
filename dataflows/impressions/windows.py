"""The windows' items and accumulators: a batch's slice of one shard's window, the tallies
it folds into, the rows a closed window gives, and the open movies gauge."""

from __future__ import annotations

import collections
import itertools
import math
import operator
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from dataflows.event_time import NO_WATERMARK, Heartbeat
from dataflows.impressions import JOB
from dataflows.metrics import KEYS_IN_STATE

TALLY_SCHEMA = pl.Schema(
    {"movieId": pl.String, "userId": pl.String, "impressions": pl.Int64, "latestImpression": pl.Int64}
)


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
            new = list(itertools.filterfalse(self.movies.__contains__, movies))
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
    return ClosedRows.of([(window_start_ms, tallies)], length_ms).rows


@dataclass(frozen=True, slots=True)
class ClosedRows:
    """Output rows (OUTPUT_SCHEMA) of many closed windows, made in one pass: each window's
    rows together, in the order the windows were given, sorted by movie and user.

    `counts[w]`: window w's row count. Runs of rows of one (window, movie), in row order:
    `run_rows[r]` rows of window `run_windows[r]` and movie `movies[run_movies[r]]`;
    `movies`: every movie of the rows, sorted.
    """

    rows: pl.DataFrame
    counts: np.ndarray
    run_windows: np.ndarray
    run_movies: np.ndarray
    run_rows: np.ndarray
    movies: pl.Series

    @classmethod
    def of(cls, windows: Sequence[tuple[int, WindowTallies]], length_ms: int) -> ClosedRows:
        """`windows`: (start, tallies) of each. A few polars calls whatever their number:
        per window, each a few hundred microseconds, they cost more than the work."""
        parts = [part for _, tallies in windows for part in tallies.parts]
        frame = pl.concat(parts) if parts else TALLY_SCHEMA.to_frame()
        heights = [sum(part.height for part in tallies.parts) for _, tallies in windows]
        window = np.repeat(np.arange(len(windows), dtype=np.int64), heights)
        # Movies and users ranked (each distinct string sorted once), so that integers order
        # the rows by (window, movie, user) and no string is compared row against row.
        movie, movies = _ranks(frame.get_column("movieId"))
        user, users = _ranks(frame.get_column("userId"))
        order = sort_order((window, movie, user), (len(windows), len(movies), len(users)))
        window, movie, user = window[order], movie[order], user[order]
        new_run = _run_starts(window, movie)  # of (window, movie)
        impressions = frame.get_column("impressions").to_numpy()[order]
        latest = frame.get_column("latestImpression").to_numpy()[order]
        if any(len(tallies.parts) > 1 for _, tallies in windows):  # a (window, movie, user) may repeat: summed
            firsts = np.flatnonzero(new_run | _run_starts(user))
            if len(firsts) < len(order):
                impressions = np.add.reduceat(impressions, firsts)
                latest = np.maximum.reduceat(latest, firsts)
                order, window, movie, new_run = order[firsts], window[firsts], movie[firsts], new_run[firsts]
        starts = np.array([start for start, _ in windows], dtype=np.int64)[window]
        rows = frame.select("movieId", "userId")[order].with_columns(
            impressions=pl.Series(impressions, dtype=pl.Int64),
            latestImpression=pl.Series(latest, dtype=pl.Int64),
            windowStart=pl.Series(starts, dtype=pl.Int64),
            windowEnd=pl.Series(starts + length_ms, dtype=pl.Int64),
        )
        run_starts = np.flatnonzero(new_run)
        return cls(
            rows,
            np.bincount(window, minlength=len(windows)),
            window[run_starts],
            movie[run_starts],
            np.diff(run_starts, append=len(order)),
            movies,
        )


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Which rows differ from the row before in any of `columns` (the first row does)."""
    starts = np.ones(len(columns[0]), dtype=bool)
    if len(starts) > 1:
        starts[1:] = np.logical_or.reduce([column[1:] != column[:-1] for column in columns])
    return starts


def _ranks(column: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Each value's rank among the column's distinct values, and those values, sorted."""
    distinct = column.unique().sort()
    if distinct.is_empty():
        return np.zeros(0, dtype=np.int64), distinct
    return column.cast(pl.Enum(distinct)).to_physical().to_numpy().astype(np.int64), distinct


def sort_order(keys: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """The order of rows by `keys` (each a non-negative int64 below its size, the first
    most significant): one int64 key sorted, or a lexsort if that key would overflow."""
    if math.prod(sizes) < 2**62:
        key = keys[0]
        for column, size in zip(keys[1:], sizes[1:], strict=True):
            key = key * size + column
        return np.argsort(key)
    return np.lexsort(keys[::-1])


class OpenMovies:
    """Movies holding window state in this process, for the keys gauge: windows are keyed
    by shard, so the movies are counted from the accumulators (`WindowTallies.add`).

    Iterated by C (Counter.update, map, compress): no bytecode per movie."""

    def __init__(self) -> None:
        self._windows: Counter[str] = Counter()  # movie -> its open windows
        self._lock = threading.Lock()  # workers are threads of one process
        self._gauge = KEYS_IN_STATE.labels(JOB)

    def opened(self, movies: Iterable[str]) -> None:
        with self._lock:
            before = len(self._windows)
            self._windows.update(movies)
            self._gauge.inc(len(self._windows) - before)

    def closed(self, movies: Iterable[str]) -> None:
        movies = list(movies)
        with self._lock:
            windows = self._windows
            left = list(map(operator.sub, map(windows.__getitem__, movies), itertools.repeat(1)))
            dict.update(windows, zip(movies, left, strict=True))
            gone = list(itertools.compress(movies, map(operator.not_, left)))
            collections.deque(map(windows.__delitem__, gone), maxlen=0)
            self._gauge.dec(len(gone))


OPEN_MOVIES = OpenMovies()


def fold(tallies: WindowTallies, piece: WindowSlice) -> WindowTallies:
    """The window operator's folder: a slice into its window's tallies, its new movies counted."""
    OPEN_MOVIES.opened(tallies.add(piece.tallies, piece.movies))
    return tallies


def arrival_watermark(item: WindowSlice | Heartbeat) -> int:
    """The watermark its key may close windows up to when `item` arrives (per-key closing)."""
    return item.source_watermark if isinstance(item, Heartbeat) else item.watermark_before
