"""Closing windows: the windows an activation closes become the sink's items in one pass,
equal to what an independent per-window computation expects, however they are batched."""

from __future__ import annotations

import random
from itertools import groupby

import polars as pl
import pytest

from connectors.sinks.rows import ObjectRows
from dataflows.impressions import JOB
from dataflows.impressions.layout import OUTPUT_SCHEMA, movie_shard, object_folder, object_folders
from dataflows.impressions.outputs import closed_window_rows
from dataflows.impressions.windows import OPEN_MOVIES, TALLY_SCHEMA, WindowTallies
from dataflows.metrics import KEYS_IN_STATE

W = 900_000
T0 = 1_546_844_400_000  # 2019-01-07 07:00 UTC
# Ids quoted or kept by the object layout, non-ASCII ones (sorted by their bytes), and plain numbers.
IDS = [
    "2000",
    "2001",
    "200",
    "a/b",
    "..",
    ".",
    ".a",
    "~x",
    "a.b",
    "-",
    "_",
    "%41",
    "x y",
    "\u00e9t\u00e9",
    "\u00e9",
    "Z",
]


def random_windows(seed: int, count: int) -> list[tuple[str, tuple[int, WindowTallies]]]:
    """Closed windows as fold_window gives them: (shard, (window number, tallies)), each of
    one to three slices whose (movie, user) rows may repeat across slices, a few empty."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        window = T0 // W + rng.randrange(12)
        tallies = WindowTallies()
        shard = rng.choice(sorted({movie_shard(m) for m in IDS}))
        movies = [m for m in IDS if movie_shard(m) == shard] or ["2000"]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            users = {(rng.choice(movies), f"u{rng.randrange(30)}") for _ in range(rng.randrange(1, 40))}
            rows = [(m, u, rng.randrange(1, 5), window * W + rng.randrange(W)) for m, u in users]
            tallies.add(pl.DataFrame(rows, schema=TALLY_SCHEMA, orient="row"), {m for m, _ in users})
        out.append((movie_shard(movies[0]), (window, tallies)))
    return out


def expected_rows(window_start: int, tallies: WindowTallies) -> list[tuple]:
    summed: dict[tuple[str, str], tuple[int, int]] = {}
    for part in tallies.parts:
        for movie, user, count, latest in part.rows():
            before = summed.get((movie, user), (0, latest))
            summed[movie, user] = (before[0] + count, max(before[1], latest))
    return [(m, u, c, latest, window_start, window_start + W) for (m, u), (c, latest) in sorted(summed.items())]


@pytest.mark.parametrize("seed", range(6))
def test_closing_many_windows_at_once_gives_each_its_sorted_rows_split_by_folder(seed: int) -> None:
    closing = random_windows(seed, 40)
    items = closed_window_rows("out", W)(closing)
    assert [shard for shard, _ in items] == [shard for shard, _ in closing], "one item per window, in order"
    for (_, rows), (_, (window, tallies)) in zip(items, closing, strict=True):
        start = window * W
        expected = expected_rows(start, tallies)
        assert rows.rows.schema == OUTPUT_SCHEMA
        assert rows.rows.rows() == expected
        movies = [(m, len(list(g))) for m, g in groupby(r[0] for r in expected)]
        assert list(rows.runs) == [(object_folder("out", start, m), count) for m, count in movies]
        for (_, frame), (movie, count) in zip(rows.by_folder() if movies else [], movies, strict=True):
            assert frame["movieId"].to_list() == [movie] * count


@pytest.mark.parametrize("seed", range(3))
def test_how_the_windows_are_batched_changes_nothing(seed: int) -> None:
    closing = random_windows(100 + seed, 60)
    close_alone = closed_window_rows("out", W)
    alone = [item for window in closing for item in close_alone([window])]
    at_once = closed_window_rows("out", W)(closing)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(closing)), 5))
    close = closed_window_rows("out", W)
    in_batches = [item for a, b in zip([0, *cuts], [*cuts, len(closing)], strict=True) for item in close(closing[a:b])]
    for one, two, three in zip(alone, at_once, in_batches, strict=True):
        assert one[0] == two[0] == three[0]
        assert _plain(one[1]) == _plain(two[1]) == _plain(three[1])


def _plain(rows: ObjectRows) -> tuple:
    return rows.rows.rows(), rows.runs, sorted(rows.complete)


def test_an_hours_folders_are_complete_once_the_shards_windows_passed_it() -> None:
    shard = movie_shard("2000")
    tallies = WindowTallies()
    tallies.add(pl.DataFrame([("2000", "u", 1, T0)], schema=TALLY_SCHEMA, orient="row"), ["2000"])
    later = WindowTallies()
    later.add(pl.DataFrame([("2000", "u", 1, T0 + 4 * W)], schema=TALLY_SCHEMA, orient="row"), ["2000"])
    items = closed_window_rows("out", W)([(shard, (T0 // W, tallies)), (shard, (T0 // W + 4, later))])
    assert items[0][1].complete == ()
    assert items[1][1].complete == (object_folder("out", T0, "2000"),)


def test_closing_counted_windows_takes_their_movies_off_the_keys_gauge() -> None:
    gauge = KEYS_IN_STATE.labels(JOB)
    before = gauge._value.get()
    closing = []
    for window, movies in [(0, ["a", "b"]), (1, ["b", "c"])]:
        tallies = WindowTallies()
        rows = [(m, "u", 1, T0 + window * W) for m in movies]
        OPEN_MOVIES.opened(tallies.add(pl.DataFrame(rows, schema=TALLY_SCHEMA, orient="row"), movies))
        closing.append(("movies-00", (T0 // W + window, tallies)))
    assert gauge._value.get() - before == 3
    closed_window_rows("out", W)(closing[:1])
    assert gauge._value.get() - before == 2  # b still has its second window open
    closed_window_rows("out", W)(closing[1:])
    assert gauge._value.get() == before


@pytest.mark.parametrize("prefix", ["out", "", "/a/b/"])
def test_object_folders_are_each_object_folder(prefix: str) -> None:
    starts = [T0, T0 + W, T0 + 5 * W, 0]
    pairs = [(start, movie) for start in starts for movie in IDS]
    got = object_folders(prefix, pl.Series([s for s, _ in pairs], dtype=pl.Int64), pl.Series([m for _, m in pairs]))
    assert got == [object_folder(prefix, start, movie) for start, movie in pairs]
    assert object_folders(prefix, pl.Series([], dtype=pl.Int64), pl.Series([], dtype=pl.String)) == []
