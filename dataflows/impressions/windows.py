"""The windows' items and accumulators: a batch's slice of one shard's window, the tallies
it folds into, the rows a closed window gives, and the open movies gauge."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

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


class OpenMovies:
    """Movies holding window state in this process, for the keys gauge: windows are keyed
    by shard, so the movies are counted from the accumulators (`WindowTallies.add`)."""

    def __init__(self) -> None:
        self._windows: Counter[str] = Counter()  # movie -> its open windows
        self._lock = threading.Lock()  # workers are threads of one process
        self._gauge = KEYS_IN_STATE.labels(JOB)

    def opened(self, movies: Iterable[str]) -> None:
        with self._lock:
            for movie in movies:
                self._windows[movie] += 1
                if self._windows[movie] == 1:
                    self._gauge.inc()

    def closed(self, movies: Iterable[str]) -> None:
        with self._lock:
            for movie in movies:
                self._windows[movie] -= 1
                if self._windows[movie] == 0:
                    del self._windows[movie]
                    self._gauge.dec()


OPEN_MOVIES = OpenMovies()


def fold(tallies: WindowTallies, piece: WindowSlice) -> WindowTallies:
    """The window operator's folder: a slice into its window's tallies, its new movies counted."""
    OPEN_MOVIES.opened(tallies.add(piece.tallies, piece.movies))
    return tallies


def arrival_watermark(item: WindowSlice | Heartbeat) -> int:
    """The watermark its key may close windows up to when `item` arrives (per-key closing)."""
    return item.source_watermark if isinstance(item, Heartbeat) else item.watermark_before
