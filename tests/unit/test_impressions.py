import json
import pickle
import zlib
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from connectors.sinks.rows import ObjectRows
from dataflows.dead_letters import MAX_DEAD_LETTER_BYTES, DeadLetter, LateEvent
from dataflows.event_time import NO_WATERMARK, window_bounds
from dataflows.impressions import JOB, windows
from dataflows.impressions.decode import MovieImpression, decode_impression
from dataflows.impressions.layout import (
    MOVIE_SHARDS,
    OUTPUT_SCHEMA,
    WINDOW_STATE,
    HourFolders,
    folder_runs,
    hour_folder,
    movie_shard,
    object_folder,
)
from dataflows.impressions.outputs import late_slice_records
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import TALLY_SCHEMA, WindowSlice, WindowTallies, window_rows
from dataflows.metrics import KEYS_IN_STATE
from dataflows.untrusted_json import MAX_ID_BYTES, InvalidEvent
from tests.support.factories import batch_of, kafka_message, tally_dict

MIN15 = 15 * 60 * 1000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"movieId": "2000", "userId": "1000", "timestamp": 1546845718557}',
            MovieImpression("2000", "1000", 1546845718557),
        ),
        (
            b'{"movieId": 2000, "userId": 1000, "timestamp": 1546845718557}',
            MovieImpression("2000", "1000", 1546845718557),
        ),
        (
            b'{"movieId": "a/b", "userId": "u", "timestamp": 1546845718557, "extra": [1]}',
            MovieImpression("a/b", "u", 1546845718557),
        ),
    ],
)
def test_decode_accepts_valid_impressions(raw: bytes, expected: MovieImpression) -> None:
    assert decode_impression(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b"", "empty message"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"2000"', "not a JSON object"),
        (b'{"userId": "1", "timestamp": 1546845718557}', "missing movieId"),
        (b'{"movieId": "", "userId": "1", "timestamp": 1546845718557}', "movieId is empty"),
        (b'{"movieId": "  ", "userId": "1", "timestamp": 1546845718557}', "movieId is empty"),
        (b'{"movieId": "1", "userId": null, "timestamp": 1546845718557}', "missing userId"),
        (b'{"movieId": true, "userId": "1", "timestamp": 1546845718557}', "movieId must be a string or integer"),
        (b'{"movieId": {"a": 1}, "userId": "1", "timestamp": 1546845718557}', "movieId must be a string or integer"),
        (b'{"movieId": "1", "userId": "1"}', "missing timestamp"),
        (b'{"movieId": "1", "userId": "1", "timestamp": "1546845718557"}', "timestamp must be integer"),
        (b'{"movieId": "1", "userId": "1", "timestamp": 1546845718557.5}', "timestamp must be integer"),
        (b'{"movieId": "1", "userId": "1", "timestamp": true}', "timestamp must be integer"),
        (b'{"movieId": "1", "userId": "1", "timestamp": 42}', "outside 2000-01-01"),
        (b'{"movieId": "1", "userId": "1", "timestamp": 4102444800000}', "outside 2000-01-01"),
        (b'{"movieId": "1", "userId": "1", "timestamp": 1, "pad": "' + b"x" * 70000 + b'"}', "exceeds"),
    ],
)
def test_decode_rejects_with_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_impression(raw)


@pytest.mark.parametrize(
    ("timestamp", "bounds"),
    [
        (ms(2019, 1, 7, 7, 0), (ms(2019, 1, 7, 7, 0), ms(2019, 1, 7, 7, 15))),  # exactly a start
        (ms(2019, 1, 7, 7, 15) - 1, (ms(2019, 1, 7, 7, 0), ms(2019, 1, 7, 7, 15))),  # last ms inside
        (ms(2019, 1, 7, 7, 15), (ms(2019, 1, 7, 7, 15), ms(2019, 1, 7, 7, 30))),  # exactly `end`: next window
        (ms(2019, 1, 7, 23, 59, 59), (ms(2019, 1, 7, 23, 45), ms(2019, 1, 8, 0, 0))),  # ends at midnight
        (0, (0, MIN15)),
    ],
)
def test_window_bounds_at_edges(timestamp: int, bounds: tuple[int, int]) -> None:
    assert window_bounds(timestamp, MIN15) == bounds


@pytest.mark.parametrize(
    ("prefix", "start", "movie", "expected"),
    [
        ("out", ms(2019, 1, 7, 7, 45), "2000", "out/2019-01-07--07/2000"),
        ("out/", ms(2019, 1, 7, 23, 45), "2000", "out/2019-01-07--23/2000"),  # last window of a day
        ("a/b", ms(2019, 1, 8, 0, 0), "2000", "a/b/2019-01-08--00/2000"),  # first of the next day
        ("out", ms(2020, 2, 29, 12, 0), "x", "out/2020-02-29--12/x"),  # leap day
        ("out", ms(2019, 12, 31, 23, 45), "7", "out/2019-12-31--23/7"),  # year end
        ("", ms(2019, 1, 7, 7, 0), "2000", "2019-01-07--07/2000"),
        ("out", ms(2019, 1, 7, 7, 0), "../etc", "out/2019-01-07--07/..%2Fetc"),  # cannot escape its folder
    ],
)
def test_object_folder(prefix: str, start: int, movie: str, expected: str) -> None:
    assert object_folder(prefix, start, movie) == expected


def test_hour_folder_is_utc_regardless_of_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert hour_folder(ms(2019, 1, 7, 7, 30)) == "2019-01-07--07"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def tallies(*rows: tuple[str, str, int, int]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TALLY_SCHEMA, orient="row")


def test_window_rows_in_schema_order_sorted_by_movie_and_user() -> None:
    acc = WindowTallies()
    acc.add(tallies(("m2", "u2", 2, 30), ("m", "u1", 1, 10)), ["m2", "m"])
    acc.add(tallies(("m2", "u2", 1, 20), ("m", "u2", 4, 5)), ["m2", "m"])
    assert window_rows(900_000, MIN15, acc).to_dict(as_series=False) == {
        "movieId": ["m", "m", "m2"],
        "userId": ["u1", "u2", "u2"],
        "impressions": [1, 4, 3],
        "latestImpression": [10, 5, 30],
        "windowStart": [900_000] * 3,
        "windowEnd": [1_800_000] * 3,
    }
    assert window_rows(0, MIN15, acc).schema == OUTPUT_SCHEMA
    assert window_rows(0, MIN15, WindowTallies()).schema == OUTPUT_SCHEMA


@pytest.mark.parametrize("room", [1, 2**40])  # a key of 2**40 * 2**40 * 8 would overflow an int64
def test_rows_are_ordered_by_their_keys_whether_one_integer_holds_them_or_not(room: int) -> None:
    rng = np.random.default_rng(7)
    keys = (rng.integers(0, 8, 500), rng.integers(0, 50, 500), rng.integers(0, 50, 500))
    order = windows.sort_order(keys, (8, 50 * room, 50 * room))
    assert sorted(zip(*(k.tolist() for k in keys), strict=True)) == list(
        zip(*(k[order].tolist() for k in keys), strict=True)
    )


@pytest.mark.parametrize("rows_per_part", [1, 2_000])
def test_tallies_merge_adds_counts_and_keeps_latest_and_folds_when_many(rows_per_part: int) -> None:
    merged = WindowTallies()
    merged.add(tallies(("m", "a", 2, 50)), ["m"])
    other = WindowTallies()
    other.add(tallies(("m", "a", 1, 40), ("m", "b", 1, 7)), ["m"])
    merged.merge(other)
    filler = [f"f{i}" for i in range(rows_per_part - 1)]
    for _ in range(100):  # past the fold threshold: the state stays small
        merged.add(tallies(*[("m", u, 1, 5) for u in ["c", *filler]]), ["m"])
    assert len(merged.parts) < 100
    summed = tally_dict(merged.summed())
    assert summed == {
        ("m", "a"): (3, 50),
        ("m", "b"): (1, 7),
        ("m", "c"): (100, 5),
        **{("m", f): (100, 5) for f in filler},
    }
    restored = pickle.loads(pickle.dumps(merged))
    assert tally_dict(restored.summed()) == summed


def test_tallies_count_their_movies_once_and_a_restored_window_again_from_its_next_slice() -> None:
    acc = WindowTallies()
    assert sorted(acc.add(tallies(("a", "u", 1, 1), ("b", "u", 1, 1)), ["a", "b"])) == ["a", "b"]
    assert acc.add(tallies(("b", "v", 1, 1), ("c", "u", 1, 1)), ["b", "c"]) == ["c"]
    restored = pickle.loads(pickle.dumps(acc))  # a resume: this process has not counted it
    assert not restored.counted
    assert sorted(restored.add(tallies(("a", "w", 1, 1)), ["a"])) == ["a", "b", "c"]
    assert restored.counted and restored.movies == {"a", "b", "c"}


def test_open_movies_gauge_counts_movies_not_windows() -> None:
    gauge = KEYS_IN_STATE.labels(JOB)
    before = gauge._value.get()
    movies = windows.OpenMovies()
    movies.opened(["a", "b"])  # window 1
    movies.opened(["b", "c"])  # window 2, another shard or time
    assert gauge._value.get() - before == 3
    movies.closed(["a", "b"])
    assert gauge._value.get() - before == 2  # b still has its second window open, and c
    movies.closed(["b", "c"])
    assert gauge._value.get() == before


def test_object_rows_split_by_folder_equal_the_per_movie_frames() -> None:
    """A shard's window frame, split into its folders, is each movie's own rows in its own folder."""
    acc = WindowTallies()
    expected: dict[str, set[tuple[str, int, int]]] = {}
    for movie in ["b/1", "a", "..", "c"]:
        for i in range(3):
            expected.setdefault(movie, set()).add((f"u{i}", i + 1, 100 + i))
            acc.add(tallies((movie, f"u{i}", i + 1, 100 + i)), [movie])
    start = ms(2019, 1, 7, 7, 15)
    rows = window_rows(start, MIN15, acc)
    split = ObjectRows.split(rows, folder_runs("out", start, rows))
    got = {folder: frame for folder, frame in split.by_folder()}
    assert set(got) == {f"out/2019-01-07--07/{m}" for m in ["b%2F1", "a", "%2E%2E", "c"]}
    for movie, users in expected.items():
        frame = got[object_folder("out", start, movie)]
        assert frame.schema == OUTPUT_SCHEMA
        assert set(frame["movieId"]) == {movie}
        assert set(frame.select("userId", "impressions", "latestImpression").rows()) == users
        assert set(frame["windowStart"]) == {start} and set(frame["windowEnd"]) == {start + MIN15}
    assert sum(f.height for f in got.values()) == rows.height
    assert list(ObjectRows("one/folder", rows).by_folder()) == [("one/folder", rows)]


def test_every_movie_has_one_stable_shard_among_a_few() -> None:
    movies = [str(2000 + m) for m in range(500)] + ["a/b", "..", "\u00e9t\u00e9", "x" * 200]
    shards = {movie: movie_shard(movie) for movie in movies}
    assert len(set(shards.values())) == MOVIE_SHARDS  # all used, and no more
    assert all(movie_shard(m) == shard for m, shard in shards.items())  # the same every time
    # Stable across processes (unlike hash()): a fixed expectation from crc32.
    assert movie_shard("2000") == f"movies-{zlib.crc32(b'2000') % MOVIE_SHARDS:02d}"


def event(movie: str, user: str, ts: int) -> bytes:
    return json.dumps({"movieId": movie, "userId": user, "timestamp": ts}).encode()


def test_slice_batch_preaggregates_and_routes_bad_and_late_in_offset_order() -> None:
    base = ms(2019, 1, 7, 7, 0)
    bound = 10_000
    messages = [
        kafka_message(event("m1", "u1", base + 1000), offset=0),
        kafka_message(b"{oops", offset=1),
        kafka_message(event("m1", "u1", base + 3000), offset=2),
        kafka_message(event("m1", "u2", base + MIN15 + 20_000), offset=3),  # next window; wm -> end + 10 s
        # window [base, base+15m) ended at/before the watermark now: late, even though
        # its timestamp is within the bound of the previous event's...
        kafka_message(event("m2", "u9", base + MIN15 - 1), offset=4),
        # ...while this one is older than the watermark but its window is still open: not late.
        kafka_message(event("m1", "u3", base + MIN15 + 1), offset=5),
    ]
    items, newest = slice_batch("0-t", batch_of(messages), NO_WATERMARK, window_ms=MIN15, max_out_of_orderness_ms=bound)
    assert newest == base + MIN15 + 20_000
    dead = [i for i in items if isinstance(i, DeadLetter)]
    late = [i for i in items if isinstance(i, LateEvent)]
    slices = {(movie, s.window_start): s for s in items if isinstance(s, WindowSlice) for movie in s.movies}
    assert [(d.position.offset, d.raw) for d in dead] == [(1, b"{oops")]
    assert dead[0].error.startswith("not valid JSON")
    assert [(e.position.offset, e.window_end, e.watermark) for e in late] == [(4, base + MIN15, base + MIN15 + 10_000)]
    assert tally_dict(slices[("m1", base)].tallies) == {("m1", "u1"): (2, base + 3000)}
    assert tally_dict(slices[("m1", base + MIN15)].tallies) == {
        ("m1", "u2"): (1, base + MIN15 + 20_000),
        ("m1", "u3"): (1, base + MIN15 + 1),
    }
    assert all(s.source_watermark == newest - bound and s.source == "0-t" for s in slices.values())


def test_slice_batch_continues_from_partition_state() -> None:
    base = ms(2019, 1, 7, 7, 0)
    # Newest event seen before this batch is 2 windows ahead: this event's window has closed.
    items, newest = slice_batch(
        "0-t",
        batch_of([kafka_message(event("m", "u", base))]),
        base + 2 * MIN15,
        window_ms=MIN15,
        max_out_of_orderness_ms=0,
    )
    assert newest == base + 2 * MIN15
    assert [type(i) for i in items] == [LateEvent]


def test_dead_letter_record_keeps_binary_raw_as_base64() -> None:
    import base64

    [dead], _ = slice_batch(
        "0-t",
        batch_of([kafka_message(b"\xff\x00", offset=9)]),
        NO_WATERMARK,
        window_ms=MIN15,
        max_out_of_orderness_ms=0,
    )
    record = json.loads(dead.to_json())
    assert record["rawEncoding"] == "base64"
    assert base64.b64decode(record["raw"]) == b"\xff\x00"
    assert (record["topic"], record["partition"], record["offset"]) == ("t", 0, 9)
    assert record["error"]


def test_a_late_slice_becomes_one_late_record_per_movie() -> None:
    piece = WindowSlice(
        movie_shard("m1"),
        900_000,
        900_010,
        ["m1", "m2"],
        tallies(("m1", "u1", 2, 900_010), ("m2", "u1", 1, 900_005), ("m1", "u2", 1, 900_001)),
        "0-t",
        1_000_000,
    )
    records = {key.decode(): json.loads(value) for key, value in late_slice_records(piece)}
    assert set(records) == {"m1", "m2"}
    assert records["m1"]["impressions"] == {"u1": [2, 900_010], "u2": [1, 900_001]}
    assert records["m2"]["impressions"] == {"u1": [1, 900_005]}
    assert {(r["movieId"], r["windowStart"], r["source"]) for r in records.values()} == {
        ("m1", 900_000, "0-t"),
        ("m2", 900_000, "0-t"),
    }
    assert all("closed before these impressions arrived" in r["reason"] for r in records.values())


def test_a_late_slice_of_many_users_is_cut_into_records_that_fit_a_kafka_message() -> None:
    longest_id = "\u00e9" * (MAX_ID_BYTES // 2)  # escaped by JSON to six characters per character
    users = [f"{i:06d}{longest_id}"[: MAX_ID_BYTES // 2] for i in range(2_000)]
    rows = [("m1", user, 1_000_000_000_000_000_000, 900_000 + i) for i, user in enumerate(users)]
    piece = WindowSlice(movie_shard("m1"), 900_000, 901_999, ["m1"], tallies(*rows), "0-t", 1_000_000)

    records = late_slice_records(piece)
    assert all(len(value) <= MAX_DEAD_LETTER_BYTES for _, value in records)
    merged: dict[str, list[int]] = {}
    for key, value in records:
        assert key == b"m1"
        merged.update(json.loads(value)["impressions"])
    assert merged == {user: [1_000_000_000_000_000_000, 900_000 + i] for i, user in enumerate(users)}


HOUR = 3_600_000
T0 = 1_546_844_400_000  # 2019-01-07 07:00 UTC


def test_an_hour_folder_is_complete_once_the_last_window_of_its_hour_closed() -> None:
    folders, quarter = HourFolders(), 900_000
    assert folders.closed(T0, quarter, ["h07/m1", "h07/m2"]) == []
    assert folders.closed(T0 + 2 * quarter, quarter, ["h07/m1"]) == []
    # The shard had no rows in 07:45-08:00; its 08:00 window closing shows 07:xx is done.
    assert sorted(folders.closed(T0 + HOUR, quarter, ["h08/m1"])) == ["h07/m1", "h07/m2"]
    assert folders.closed(T0 + HOUR + 3 * quarter, quarter, ["h08/m2"]) == ["h08/m1", "h08/m2"]
    assert folders.closed(T0 + 2 * HOUR, quarter, []) == [], "each folder is complete once"


def test_with_windows_that_straddle_the_hour_a_folder_waits_for_the_last_window_starting_in_it() -> None:
    folders, seven = HourFolders(), 7 * 60_000  # 7-minute windows: one starts before 08:00, ends after
    straddling = (T0 + HOUR) - (T0 + HOUR) % seven
    assert straddling < T0 + HOUR < straddling + seven
    assert folders.closed(straddling - seven, seven, ["h07/m1"]) == [], "the straddling window may hold 07 rows"
    assert folders.closed(straddling, seven, ["h07/m1"]) == ["h07/m1"]
    assert folders.closed(straddling + seven, seven, ["h08/m1"]) == []


def test_the_recorded_window_state_names_the_module_the_tallies_are_pickled_from() -> None:
    """A snapshot pickles WindowTallies by module: after a move, a store made before must be
    refused in one line by its recorded WINDOW_STATE, not fail to unpickle."""
    assert f"({WindowTallies.__module__})" in WINDOW_STATE
