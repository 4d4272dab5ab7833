"""Which manifests a resuming object-sink partition reads, and which replayed rows it drops."""

import json
from datetime import date

import polars as pl
from botocore.exceptions import ClientError

from connectors.sinks.fence import CommitState
from connectors.sinks.object_bodies import drop_units
from connectors.sinks.s3_client import S3Location, describe_s3_error
from connectors.sinks.s3_manifests import (
    fence_of,
    listed_units,
    manifest_body,
    object_units,
    segment_body,
    sort_manifests,
    visible_of,
)

DIR = "out/_sink/p00/run-a/"


def single(seq: int) -> str:
    return f"{DIR}{seq:012d}.json"


def segment(first: int, last: int) -> str:
    return f"{DIR}{last:012d}-from-{first:012d}.json"


def test_segments_reaching_the_restored_seq_are_read_and_singles_they_hold_are_folded() -> None:
    keys = [segment(0, 7), segment(8, 15), single(14), single(16), single(17)]
    listing = sort_manifests(keys, next_seq=15)
    assert listing.segments_past == [segment(8, 15)]  # holds seq 15, written after the snapshot
    assert listing.folded == [single(14)]  # a compaction cut short between its PUT and its DELETE
    assert listing.singles == {16: single(16), 17: single(17)}


def test_a_resume_past_every_write_reads_no_segment() -> None:
    listing = sort_manifests([segment(0, 7), single(8)], next_seq=9)
    assert listing.segments_past == [] and listing.folded == [] and listing.singles == {8: single(8)}


def test_a_legacy_listing_sorts_the_same_way() -> None:
    keys = ["out/_sink/p00/000000000003-from-000000000000.json", "out/_sink/p00/000000000004.json"]
    listing = sort_manifests(keys, next_seq=0)
    assert listing.segments_past == [keys[0]] and listing.singles == {4: keys[1]}


def test_replayed_rows_of_visible_units_go_and_the_rest_stay_whole() -> None:
    rows = pl.DataFrame(
        {
            "movieId": ["m1", "m1", "m1", "m2", "m2"],
            "userId": ["u1", "u2", "u1", "u1", "u3"],
            "windowStart": [0, 0, 900_000, 0, 0],
        }
    )
    kept, skipped = drop_units(rows, {("m1", 0), ("m3", 0)}, ["movieId", "windowStart"])
    assert skipped == 1  # (m1, 0); (m3, 0) is not in these rows
    assert sorted(kept.rows()) == [("m1", "u1", 900_000), ("m2", "u1", 0), ("m2", "u3", 0)]


def test_no_visible_unit_returns_the_rows_untouched() -> None:
    rows = pl.DataFrame({"movieId": ["m1"], "windowStart": [0]})
    kept, skipped = drop_units(rows, set(), ["movieId", "windowStart"])
    assert kept is rows and skipped == 0


def test_an_endpoint_without_conditional_writes_is_one_clear_error() -> None:
    refused = ClientError({"Error": {"Code": "NotImplemented", "Message": "If-None-Match"}}, "PutObject")
    reason = describe_s3_error(refused, S3Location("out", "impressions"))
    assert (
        reason == "S3 bucket 'out': the S3 endpoint lacks conditional writes (PUT If-None-Match), which the sink needs"
    )


def test_the_fence_goes_into_the_snapshot_and_back_by_folder() -> None:
    visible = {"out/h/m1": {("m1", 0), ("m1", 900_000)}, "out/h/m2": {("m2", 0)}}
    fence = fence_of(visible)
    assert fence == {("out/h/m1", ("m1", 0)), ("out/h/m1", ("m1", 900_000)), ("out/h/m2", ("m2", 0))}
    assert visible_of(fence) == visible
    restored = CommitState.from_snapshot(CommitState("run-a", 7, None, fence).to_snapshot(), "fresh")
    assert visible_of(restored.fence) == visible and restored.next_seq == 7


def test_manifests_name_each_objects_units_and_segments_keep_them() -> None:
    units = {"out/h/m1/a.parquet": [("m1", 0)], "out/h/m2/a.parquet": [("m2", 0), ("m2", 900_000)]}
    first = manifest_body(3, list(units), units)
    assert listed_units(json.loads(json.dumps(first))) == units, "what a resume reads back"
    old = {"seq": 4, "objects": ["out/h/m3/b.parquet"]}  # an older release's manifest: no units
    segment = json.loads(json.dumps(segment_body({4: old, 3: first})))
    assert segment["seqs"] == {"3": list(units), "4": ["out/h/m3/b.parquet"]}
    assert listed_units(segment) == units, "m3's object is read on resume, as before"


def test_units_json_would_not_give_back_exactly_are_left_to_the_objects() -> None:
    units = {"a.parquet": [("m1", 0)], "b.parquet": [("m2", date(2019, 1, 7))]}
    assert object_units(units) == {"a.parquet": [["m1", 0]]}
