"""Sink namespaces against a real S3 endpoint: a run reads and skips only what it wrote itself."""

from __future__ import annotations

import json

import polars as pl
import pytest

from connectors.sinks.fence import CommitState
from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location
from connectors.sinks.s3_manifests import ExistingOutputError, check_existing_output, find_foreign_output
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import OUTPUT_SCHEMA
from tests.support.data import read_s3_rows


def state(namespace: str, seq: int) -> dict:
    """A snapshot with an empty fence (nothing written past the restored snapshot waits for the replay)."""
    return CommitState(namespace, seq).to_snapshot()


def rows(movie: str, user: str, window: int = 0) -> ObjectRows:
    return ObjectRows(
        f"out/2019-01-07--07/{movie}",
        pl.DataFrame(
            {
                "movieId": [movie],
                "userId": [user],
                "impressions": [1],
                "latestImpression": [1],
                "windowStart": [window * 900_000],
                "windowEnd": [(window + 1) * 900_000],
            }
        ),
    )


@pytest.fixture
def location(s3, unique) -> S3Location:
    s3.create_bucket(f"ns-{unique}")
    return S3Location(f"ns-{unique}", "out", s3.endpoint_url, "us-east-1")


def sink(location: S3Location, namespace: str | None) -> PartitionedS3Sink:
    return PartitionedS3Sink(location, OUTPUT_SCHEMA, namespace=namespace)


def pairs(s3, location: S3Location) -> list[tuple[str, str]]:
    table = read_s3_rows(s3, location.bucket, "out")
    return sorted(zip(table["movieId"], table["userId"], strict=True)) if table.height else []


def manifest_keys(s3, location: S3Location) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=location.bucket, Prefix="out/_sink/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_new_namespace_appends_beside_committed_output_of_other_runs(s3, location) -> None:
    legacy = sink(location, None).build_part("s3_out", "p00", None)  # a run from before namespaces
    legacy.write_batch([rows("m1", "u1")])
    assert legacy.snapshot() == state("", 1)
    older = sink(location, "run-a").build_part("s3_out", "p00", None)
    older.write_batch([rows("m2", "u1")])
    assert older.snapshot() == state("run-a", 1)

    new = sink(location, "run-b").build_part("s3_out", "p00", None)  # a fresh store: seq 0, its own namespace
    new.write_batch([rows("m3", "u1")])
    new.close()
    assert pairs(s3, location) == [("m1", "u1"), ("m2", "u1"), ("m3", "u1")]
    assert manifest_keys(s3, location) == [
        "out/_sink/p00/000000000000.json",
        "out/_sink/p00/run-a/000000000000.json",
        "out/_sink/p00/run-b/000000000000.json",
    ]


def test_a_resume_skips_only_units_its_own_namespace_wrote(s3, location) -> None:
    run_a = sink(location, "run-a")
    first = run_a.build_part("s3_out", "p00", None)
    first.write_batch([rows("m1", "u1")])
    committed = first.snapshot()  # bytewax stores this one
    first.write_batch([rows("m1", "u2", window=1)])
    first.snapshot()  # written, but the crash came before bytewax stored it
    other = sink(location, "run-b").build_part("s3_out", "p00", None)  # another run, seqs 0 and 1
    other.write_batch([rows("m9", "u1")])
    other.snapshot()
    other.write_batch([rows("m1", "u9", window=2)])  # a unit run-a has not written yet
    other.snapshot()

    resumed = run_a.build_part("s3_out", "p00", committed)
    assert pairs(s3, location) == [("m1", "u1"), ("m1", "u2"), ("m1", "u9"), ("m9", "u1")]
    resumed.write_batch([rows("m1", "u2", window=1), rows("m1", "u3", window=2)])  # the replay
    resumed.close()
    assert pairs(s3, location) == [("m1", "u1"), ("m1", "u2"), ("m1", "u3"), ("m1", "u9"), ("m9", "u1")]


def test_an_attempt_that_crashed_before_its_first_snapshot_is_not_doubled_by_the_next(s3, location) -> None:
    # The same store (same namespace), still without state: the restart replays everything.
    crashed = sink(location, "run-a").build_part("s3_out", "p01", None)
    crashed.write_batch([rows("m1", "u1")])
    crashed.snapshot()
    restart = sink(location, "run-a").build_part("s3_out", "p01", None)
    restart.write_batch([rows("m1", "u1")])
    restart.close()
    assert pairs(s3, location) == [("m1", "u1")]


def test_a_legacy_state_resumes_in_the_legacy_namespace_and_leaves_namespaces_alone(s3, location) -> None:
    legacy = sink(location, None).build_part("s3_out", "p00", None)
    legacy.write_batch([rows("m1", "u1")])
    legacy.snapshot()
    namespaced = sink(location, "run-a").build_part("s3_out", "p00", None)
    namespaced.write_batch([rows("m2", "u1")])
    namespaced.snapshot()

    # A store written before namespaces holds a bare seq: 0 here, so the legacy seq 0 is past it.
    resumed = sink(location, "run-new").build_part("s3_out", "p00", 0)
    assert pairs(s3, location) == [("m1", "u1"), ("m2", "u1")]
    resumed.write_batch([rows("m1", "u1")])  # the replay: skipped
    assert resumed.snapshot() == state("", 1)  # still the legacy namespace
    assert pairs(s3, location) == [("m1", "u1"), ("m2", "u1")]


def test_foreign_output_is_whatever_this_namespace_did_not_write(s3, location) -> None:
    assert find_foreign_output(location, "run-a") is None  # empty prefix
    own = sink(location, "run-a").build_part("s3_out", "p00", None)
    own.write_batch([rows("m1", "u1")])
    own.snapshot()
    assert find_foreign_output(location, "run-a") is None  # only a crashed attempt of this run
    check_existing_output(location, "run-a", append=False)

    foreign = find_foreign_output(location, "run-b")
    assert foreign == "out/_sink/p00/run-a/000000000000.json"
    with pytest.raises(ExistingOutputError, match=r"ON_EXISTING_OUTPUT=append") as refused:
        check_existing_output(location, "run-b", append=False)
    assert "\n" not in str(refused.value) and f"s3://{location.bucket}/out/" in str(refused.value)
    check_existing_output(location, "run-b", append=True)  # allowed: appends

    # A data object no manifest lists (another tool, or a copy) is output too.
    s3.client().put_object(Bucket=location.bucket, Key="out/2019-01-07--07/m5/by-hand.parquet", Body=b"x")
    assert find_foreign_output(location, "run-a") == "out/2019-01-07--07/m5/by-hand.parquet"


def test_a_legacy_manifest_counts_as_foreign_output(s3, location) -> None:
    s3.client().put_object(
        Bucket=location.bucket, Key="out/_sink/p03/000000000007.json", Body=json.dumps({"objects": []}).encode()
    )
    assert find_foreign_output(location, "run-a") == "out/_sink/p03/000000000007.json"
