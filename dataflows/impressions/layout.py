"""Where rows and window state live: the output columns, the object folders, the Delta
table's partitions, and the movie shards that key the windows."""

from __future__ import annotations

import functools
import itertools
import zlib
from collections.abc import Iterable
from urllib.parse import quote

import polars as pl

from dataflows.event_time import to_datetime, window_start

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


def folder_runs(prefix: str, window_start_ms: int, rows: pl.DataFrame) -> list[tuple[str, int]]:
    """(object folder, row count) of rows sorted by movie, in row order: the sink's split."""
    runs = rows.get_column("movieId").rle().struct.unnest()  # (len, value) of each run
    starts = pl.Series([window_start_ms] * runs.height, dtype=pl.Int64)
    return list(
        zip(object_folders(prefix, starts, runs.get_column("value")), runs.get_column("len").to_list(), strict=True)
    )


# The ids `quote` keeps as they are: unreserved characters only (RFC 3986), not only dots.
_OWN_DIRECTORY = r"^[0-9A-Za-z_.~-]*[0-9A-Za-z_~-][0-9A-Za-z_.~-]*$"


def object_folders(prefix: str, window_starts: pl.Series, movie_ids: pl.Series) -> list[str]:
    """`object_folder` of each (window start, movie id), in one pass: hours named once per
    window start, and ids quoted one by one only if they are not their own directory."""
    if window_starts.is_empty():
        return []
    starts = window_starts.unique()
    hours = window_starts.replace_strict(starts, [_hour_directory(prefix, start) for start in starts.to_list()])
    own = movie_ids.str.contains(_OWN_DIRECTORY)
    if not own.all():
        others = movie_ids.filter(~own).unique()
        movie_ids = movie_ids.replace(others, [_movie_directory(movie) for movie in others.to_list()])
    return (hours + "/" + movie_ids).to_list()


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
        self._open: dict[int, set[str]] = {}  # an hour's end -> its folders

    def closed(self, window_start_ms: int, window_ms: int, folders: Iterable[str]) -> list[str]:
        """Folders of the window just closed are noted; returns the folders complete now."""
        hour_end = window_start(window_start_ms, HOUR_MS) + HOUR_MS
        self._open.setdefault(hour_end, set()).update(folders)
        complete_before = window_start(window_start_ms + window_ms, HOUR_MS)
        done = [end for end in self._open if end <= complete_before]
        return sorted(itertools.chain.from_iterable(self._open.pop(end) for end in done))


# A Delta table partitioned by the window start's hour and movieId as columns
# (`windowHour=2019-01-07--07/movieId=2000/`), committed through the Delta log.
DELTA_PARTITION_BY = ("windowHour", "movieId")
DELTA_SCHEMA = pl.Schema([*OUTPUT_SCHEMA.items(), ("windowHour", pl.String)])


def with_window_hour(rows: pl.DataFrame) -> pl.DataFrame:
    """The partition column: the window start's UTC hour, as the object layout's hour folder."""
    return rows.with_columns(windowHour=pl.from_epoch("windowStart", time_unit="ms").dt.strftime("%Y-%m-%d--%H"))


# Windows are keyed by a shard of movies, not by movie: each batch then feeds the window
# operator a handful of columnar slices instead of one item per movie (docs/architecture.md,
# "Where the time goes"). Fixed, and part of the state's shape (settings.state_shape):
# a movie's open windows live under its shard's key, so another count would split them.
# The tallies' module is part of it too: pickle names their class by module, so a store
# made before a move could not be read (tests/unit/test_impressions.py holds them together).
MOVIE_SHARDS = 16
WINDOW_STATE = f"movieId crc32 % {MOVIE_SHARDS}, columnar tallies (dataflows.impressions.windows)"


def _shard_key(shard: int) -> str:
    return f"movies-{shard:02d}"


def movie_shards() -> list[str]:
    """Every key `movie_shard` gives."""
    return [_shard_key(i) for i in range(MOVIE_SHARDS)]


@functools.lru_cache(maxsize=1 << 16)
def movie_shard(movie_id: str) -> str:
    """The window key of a movie: stable across processes and runs, unlike hash()."""
    return _shard_key(zlib.crc32(movie_id.encode()) % MOVIE_SHARDS)
