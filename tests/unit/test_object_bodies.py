"""An object's body is a function of its rows alone, whether written alone or with a write's other objects."""

import io
from itertools import pairwise

import polars as pl
import pytest

from connectors.sinks.object_bodies import (
    ENCODE_GROUP,
    PARQUET_ROW_GROUP_ROWS,
    decode,
    encode,
    encode_each,
    encoded_in_turn,
)
from dataflows.impressions.layout import OUTPUT_SCHEMA


def impressions(movie: str, users: int, window: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movieId": [movie] * users,
            "userId": [f"u{(i * 7919) % 100_003}" for i in range(users)],
            "impressions": [1 + i % 5 for i in range(users)],
            "latestImpression": [1_546_300_800_000 + i for i in range(users)],
            "windowStart": [window * 900_000] * users,
            "windowEnd": [(window + 1) * 900_000] * users,
        },
        schema=OUTPUT_SCHEMA,
    )


def chunked(frame: pl.DataFrame, cuts: list[int]) -> pl.DataFrame:
    """The same rows held in memory as several chunks, cut before each row of `cuts`."""
    bounds = [0, *cuts, frame.height]
    return pl.concat([frame.slice(a, b - a) for a, b in pairwise(bounds)], rechunk=False)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_each_object_of_a_write_is_what_encoding_it_alone_gives(fmt: str) -> None:
    objects = [impressions("m1", 3), impressions("m2", 0), impressions("m%2F", 1, window=2), impressions("m4", 2_000)]
    rows = pl.concat([chunked(objects[0], [1]), *objects[1:]], rechunk=False)
    bodies = encode_each(rows, [o.height for o in objects], fmt)
    assert bodies == [encode(o.rechunk(), fmt) for o in objects]
    assert [decode(b, fmt, OUTPUT_SCHEMA).rows() for b in bodies] == [o.rows() for o in objects]
    assert encode_each(objects[3], [objects[3].height], fmt) == [encode(objects[3], fmt)]
    assert encode_each(objects[1], [], fmt) == []


def test_runs_that_do_not_cut_the_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="runs of 4 rows in all do not cut 3 rows"):
        encode_each(impressions("m1", 3), [2, 2], "parquet")


def test_a_large_objects_bytes_do_not_depend_on_how_its_rows_are_held() -> None:
    """Past a row group, polars' own row-group cut followed the memory chunks: a replay that
    folds the same window in other batches would have written other bytes."""
    whole = impressions("m1", PARQUET_ROW_GROUP_ROWS + 50_000)
    in_chunks = chunked(whole, [70_000, 140_000, 200_000, 250_000])
    assert encode(in_chunks, "parquet") == encode(whole, "parquet")
    assert encode_each(pl.concat([impressions("m0", 5), in_chunks]), [5, whole.height], "parquet")[1] == encode(
        whole, "parquet"
    )
    assert pl.read_parquet(io.BytesIO(encode(in_chunks, "parquet"))).equals(whole)


def test_a_writes_objects_in_turn_are_each_what_encoding_it_alone_gives_across_groups() -> None:
    objects = [impressions(f"m{i}", 1 + i % 4, window=i) for i in range(2 * ENCODE_GROUP + 3)]
    rows = pl.concat(objects, rechunk=False)
    bodies = list(encoded_in_turn(rows, [o.height for o in objects], "parquet"))
    assert bodies == [encode(o, "parquet") for o in objects]
