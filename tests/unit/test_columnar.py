"""The columnar batch path equals the per-record reference path, on random batches."""

from __future__ import annotations

import contextlib
import json
import random
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.dead_letters import DeadLetter, LateEvent
from dataflows.event_time import NO_WATERMARK
from dataflows.impressions import decode
from dataflows.impressions.decode import decode_batch
from dataflows.impressions.layout import MOVIE_SHARDS
from dataflows.impressions.reference import slice_records
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import WindowSlice
from tests.support.factories import batch_of, kafka_message, record_batch, tally_dict
from tests.support.hostile import hostile, odd_but_valid

W = 900_000
BASE = 1_546_844_400_000  # a window start
IDS = ["2000", "2001", "m-7", "u1", "Zeta", "x" * 200, "\u00e9t\u00e9-1", "a b", "9"]


def canonical(result: tuple[list, int]) -> tuple:
    items, max_timestamp = result
    dead = sorted((d.position.offset, d.error, d.raw, d.internal) for d in items if isinstance(d, DeadLetter))
    late = sorted(
        (e.position.offset, e.timestamp, e.watermark, e.window_start) for e in items if isinstance(e, LateEvent)
    )
    pieces = [s for s in items if isinstance(s, WindowSlice)]
    assert len({(s.shard, s.window_start) for s in pieces}) == len(pieces), "one slice per (shard, window)"
    slices = {
        (s.shard, s.window_start): (s.latest, s.source, s.source_watermark, sorted(s.movies), tally_dict(s.tallies))
        for s in pieces
    }
    for (shard, _), (latest, _, _, movies, tallies) in slices.items():
        assert movies == sorted({movie for movie, _ in tallies}), "a slice names the movies it holds"
        assert {shard_of(movie) for movie in movies} == {shard}, "each movie in its own shard's slice"
        assert latest == max(newest for _, newest in tallies.values())
    return dead, late, slices, max_timestamp


def shard_of(movie: str) -> str:
    """The window key of a movie, computed here as the state's shape says: crc32 modulo the shards."""
    return f"movies-{zlib.crc32(movie.encode()) % MOVIE_SHARDS:02d}"


def events(seed: int, count: int, dirty: bool) -> list[bytes]:
    """Window-boundary times, disorder, late stragglers, repeats; with `dirty`, also bad and odd records."""
    rng = random.Random(seed)
    out: list[bytes] = []
    now = BASE
    for _ in range(count):
        now += rng.choice([0, 1, 500, 30_000, W - 1])
        ts = now - rng.choice([0, 0, 1, 1_000, 5_000, 2 * W])  # some beyond the bound: late
        record = {"movieId": rng.choice(IDS), "userId": rng.choice(IDS), "timestamp": ts}
        roll = rng.random()
        if dirty and roll < 0.1:
            out.append(hostile(rng, record, "movieId", "timestamp")[1])
        elif dirty and roll < 0.2:
            out.append(odd_but_valid(rng, record, rng.choice(["movieId", "userId"]))[1])
        elif out and roll < 0.3:
            out.append(rng.choice(out))  # a repeat of an earlier record
        else:
            out.append(json.dumps(record, ensure_ascii=dirty and rng.random() < 0.5).encode())  # escapes: not clean
    return out


def both_paths(values: list[bytes], max_timestamp: int) -> tuple[tuple, tuple]:
    """`slice_batch` and its reference; the first on the batch as each kind of reader builds it
    (from confluent-kafka's messages, from a list, from a Binary Series), which must agree."""
    kwargs = {"window_ms": W, "max_out_of_orderness_ms": 2_000}
    messages = batch_of([kafka_message(v, offset=i) for i, v in enumerate(values)])
    listed, series = record_batch(values), record_batch(values, series=True)
    columnar = canonical(slice_batch("0-t", messages, max_timestamp, **kwargs))
    for other in (listed, series):
        assert canonical(slice_batch("0-t", other, max_timestamp, **kwargs)) == columnar
    return columnar, canonical(slice_records("0-t", series, max_timestamp, **kwargs))


@given(st.integers(0, 2**32), st.integers(1, 400), st.sampled_from([NO_WATERMARK, BASE, BASE + 3 * W]))
@settings(max_examples=60, deadline=None)
def test_clean_batches_take_the_columnar_path_and_agree(seed: int, count: int, max_timestamp: int) -> None:
    values = events(seed, count, dirty=False)
    with judged_alone() as alone:
        rows, invalid = decode_batch(values)
    assert alone == [] and invalid == [] and rows.height == len(values)
    columnar, reference = both_paths(values, max_timestamp)
    assert columnar == reference


@given(st.integers(0, 2**32), st.integers(1, 200))
@settings(max_examples=60, deadline=None)
def test_any_batch_agrees_with_the_reference(seed: int, count: int) -> None:
    columnar, reference = both_paths(events(seed, count, dirty=True), NO_WATERMARK)
    assert columnar == reference


def test_a_batch_that_only_looks_clean_as_a_whole_is_judged_record_by_record() -> None:
    """Records that are invalid alone but would join into valid JSON objects across the batch."""
    split_a = b'{"movieId":"a","userId":"},{","timestamp":1546844400001}'  # 10 quotes, yet a string spans records
    two_in_one = b'{"movieId":"a","userId":"b","timestamp":1546844400001},{"movieId":"c","userId":"d","timestamp":1}'
    values = [split_a, two_in_one, json.dumps({"movieId": "m", "userId": "u", "timestamp": BASE}).encode()]
    with judged_alone() as alone:
        rows, invalid = decode_batch(values)
    assert alone == [split_a, two_in_one]
    assert rows["row"].to_list() == [0, 2] and [i for i, _ in invalid] == [1]  # "},{" is an id
    columnar, reference = both_paths(values, NO_WATERMARK)
    assert columnar == reference


@contextlib.contextmanager
def judged_alone() -> Iterator[list[bytes]]:
    """The records `slice_batch` judges one by one (by the per-record rules), in call order."""
    alone: list[bytes] = []
    per_record = decode.decode_fields

    def spy(raw: bytes | None) -> tuple[str, str, int]:
        alone.append(raw)
        return per_record(raw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "decode_fields", spy)
        yield alone


SPACED = b'{"movieId": "2000", "userId": "1000", "timestamp": 1546844400001}'  # the producers' layout
COMPACT = b'{"movieId":"2000","userId":"1000","timestamp":1546844400002}'
LAYOUT_LIKE = [
    [SPACED, b'{"movieId": "m 7", "userId": "u:1, x", "timestamp": 1546844400009}'],
    [COMPACT, b'{"movieId":"\xc3\xa9t\xc3\xa9","userId":"a,b}{","timestamp":1546844400003}'],  # UTF-8, structure in ids
    [SPACED, COMPACT, SPACED],  # both layouts in one batch
]
NEAR_MISSES = [
    b'{"movieId": "2000", "userId": "1000", "timestamp": 01546844400001}',  # leading zero: not JSON
    b'{"movieId": "2000", "userId": "1000", "timestamp": 1546844400001.0}',
    b'{"movieId": "2000", "userId": "1000", "timestamp": 1.546844400001e12}',
    b'{"movieId": "2000", "userId": "1000", "timestamp": -1546844400001}',
    b'{"movieId": "2000", "userId": "1000", "timestamp":  1546844400001}',  # two spaces
    b'{"movieId": "2000","userId": "1000", "timestamp": 1546844400001}',  # spacing of both layouts
    b'{"movieId" : "2000", "userId": "1000", "timestamp": 1546844400001}',
    b'{"movieId":\t"2000", "userId": "1000", "timestamp": 1546844400001}',
    b'{"userId": "1000", "movieId": "2000", "timestamp": 1546844400001}',  # valid, another order
    b'{"movieId": "2000", "userId": "1000", "timestamp": 1546844400001 }',
    b'{"movieId": "2000", "userId": "1000", "timestamp": 1546844400001}\n',
    b'{"movieId": "20\x0100", "userId": "1000", "timestamp": 1546844400001}',  # a raw control byte
    b'{"movieId": "20\xc2\x8500", "userId": "1000", "timestamp": 1546844400001}',  # a C1 control
    b'{"movieId": "20\x7f00", "userId": "1000", "timestamp": 1546844400001}',  # DEL
    b'{"movieId": "20\\"00", "userId": "1000", "timestamp": 1546844400001}',  # an escape
    b'{"movieId": "20\xff00", "userId": "1000", "timestamp": 1546844400001}',  # not UTF-8
    b'{"movieId": "", "userId": "1000", "timestamp": 1546844400001}',
    b'{"movieId": "--", "userId": "1000", "timestamp": 1546844400001}',  # no letter or digit
    b'{"movieId": "2000", "userId": "1000", "timestamp": 15468444000010000000}',  # past int64
    b'{"movieId": "2000", "userId": "1000", "timestamp": 1546844400001, "x": 1}',
    b'{"movieId": "2000", "userId": "1000", "userId": 1546844400001}',  # a repeated key
    b'{"movieId": "2000", "userId": "1000", "timestamq": 1546844400001}',
]


def test_the_producers_layouts_are_read_natively_and_anything_else_by_the_reference_rules() -> None:
    for batch in LAYOUT_LIKE:
        with judged_alone() as alone:
            rows, invalid = decode_batch(batch)
        assert alone == [] and invalid == []
        assert rows.rows() == [(i, *slice_fields(record)) for i, record in enumerate(batch)]
    cut = decode._layout_rows
    natively: list[list[int]] = []

    def spy(values: list) -> object:
        rows = cut(values)
        natively.append(rows["row"].to_list())
        return rows

    for record in NEAR_MISSES:
        values = [SPACED, record, SPACED]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(decode, "_layout_rows", spy)
            decode_batch(values)
        assert natively.pop() == [0, 2], f"read natively, yet not exactly a producer's layout: {record!r}"
        columnar, reference = both_paths(values, NO_WATERMARK)
        assert columnar == reference, record


def test_records_in_another_clean_layout_are_decoded_together_not_one_by_one() -> None:
    reordered = [json.dumps({"userId": f"u{i}", "movieId": "m", "timestamp": BASE + i}).encode() for i in range(5)]
    values = [SPACED, *reordered, COMPACT]
    with judged_alone() as alone:
        rows, invalid = decode_batch(values)
    assert alone == [] and invalid == []
    assert rows.rows() == [(i, *slice_fields(record)) for i, record in enumerate(values)]


def slice_fields(record: bytes) -> tuple[str, str, int]:
    obj = json.loads(record)
    return obj["movieId"], obj["userId"], obj["timestamp"]


@pytest.mark.parametrize("bad", [[3, 9_999, 19_998], list(range(7, 20_000, 50))])  # rare, and 2 % spread out
def test_bad_records_are_judged_alone_and_the_rest_as_columns(bad: list[int]) -> None:
    values = [
        json.dumps({"movieId": f"m{i % 50}", "userId": f"u{i % 999}", "timestamp": BASE + i}).encode()
        for i in range(20_000)
    ]
    for i in bad:
        values[i] = b'{"movieId": "m1", "userId": "u1", "timestamp": "soon"}'
    with judged_alone() as alone:
        decode_batch(values)
    assert alone == [values[i] for i in bad], "only the bad records judged one by one"
    columnar, reference = both_paths(values, NO_WATERMARK)
    assert columnar == reference
    assert [offset for offset, *_ in columnar[0]] == bad, "each bad record a dead letter"


def test_dense_bad_records_agree() -> None:
    values = events(11, 6_000, dirty=True)
    columnar, reference = both_paths(values, BASE)
    assert columnar == reference
