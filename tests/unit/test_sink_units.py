"""Each object's units in one pass over a write's objects, and a folder's parts in unit order."""

import polars as pl

from connectors.sinks.rows import in_unit_order
from connectors.sinks.s3_manifests import units_of, units_of_runs


def frame(units: list[tuple], **extra: list) -> pl.DataFrame:
    return pl.DataFrame(
        {"movieId": [m for m, _ in units], "windowStart": [w for _, w in units], **extra},
        schema={"movieId": pl.String, "windowStart": pl.Int64, **{k: pl.Int64 for k in extra}},
    )


def units_of_each(frames: list[pl.DataFrame], columns: list[str]) -> list[list[tuple]]:
    """`units_of_runs` over `frames` one after another, as a write's objects."""
    rows = pl.concat(frames, rechunk=False) if frames else frame([])
    return units_of_runs(rows, [f.height for f in frames], columns)


def test_each_frames_units_are_its_distinct_units_sorted_whatever_the_runs() -> None:
    frames = [
        frame([("m2", 900), ("m2", 900), ("m1", 0), ("m2", 900)]),  # a unit's rows in two runs
        frame([]),
        frame([("m2", 900), ("m1", None), ("m1", None)]),  # the last unit of the frame before: a new frame's
        frame([("m1", 0)]),
    ]
    expected = [sorted(set(f.rows())) for f in frames[:2]] + [[("m1", None), ("m2", 900)], [("m1", 0)]]
    assert units_of_each(frames, ["movieId", "windowStart"]) == expected
    assert units_of_each([], ["movieId"]) == []


def test_a_unit_column_named_like_the_frame_index_is_kept() -> None:
    frames = [frame([("m1", 0), ("m1", 0)], _frame=[7, 8]), frame([("m1", 0)], _frame=[7])]
    columns = ["movieId", "_frame"]
    assert units_of_each(frames, columns) == [[("m1", 7), ("m1", 8)], [("m1", 7)]]
    assert units_of_each(frames, columns) == [units_of(f, columns) for f in frames]


def test_parts_go_in_their_first_units_order_and_empty_ones_go() -> None:
    late, early, empty, other = frame([("m1", 900), ("m1", 900)]), frame([("m1", 0)]), frame([]), frame([("m0", 900)])
    ordered = in_unit_order([late, empty, early, other], ["movieId", "windowStart"])
    assert [part.rows() for part in ordered] == [other.rows(), early.rows(), late.rows()]


def test_an_object_that_starts_with_the_unit_the_one_before_ended_with_has_it_too() -> None:
    objects = [frame([(None, None)]), frame([(None, None)] * 2), frame([]), frame([("m1", None), ("m2", 0)])]
    objects.append(frame([("m2", 0), ("m1", None)]))
    heights = [o.height for o in objects]
    assert units_of_runs(pl.concat(objects), heights, ["movieId", "windowStart"]) == [
        [(None, None)],
        [(None, None)],
        [],
        [("m1", None), ("m2", 0)],
        [("m1", None), ("m2", 0)],
    ]
    assert units_of_runs(objects[2], [], ["movieId"]) == []
