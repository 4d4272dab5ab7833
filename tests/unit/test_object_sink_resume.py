"""Which manifests a resuming object-sink partition reads, and which replayed rows it drops."""

import polars as pl
from botocore.exceptions import ClientError

from connectors.sinks.s3_manifests import sort_manifests
from connectors.sinks.s3_objects import S3Location, describe_s3_error, drop_units

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
