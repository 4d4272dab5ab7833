"""The exactly-once protocol of the S3 sink against a real S3 endpoint."""

import polars as pl
import pytest

from connectors.sinks.s3_objects import (
    ObjectRows,
    PartitionedS3Sink,
    S3Location,
    S3SinkError,
    check_bucket,
    stable_partition,
)
from dataflows.impression_rules import OUTPUT_SCHEMA
from tests.conftest import read_s3_rows

pytestmark = pytest.mark.integration


def rows(movie: str, user: str, count: int) -> ObjectRows:
    return ObjectRows(
        f"out/2019-01-07--07/{movie}",
        pl.DataFrame(
            {
                "movieId": [movie],
                "userId": [user],
                "impressions": [count],
                "latestImpression": [1],
                "windowStart": [0],
                "windowEnd": [900_000],
            }
        ),
    )


@pytest.fixture
def sink(s3, unique) -> PartitionedS3Sink:
    bucket = f"sink-{unique}"
    s3.create_bucket(bucket)
    return PartitionedS3Sink(S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA)


def test_resume_deletes_what_was_written_after_the_restored_snapshot(s3, sink) -> None:
    first = sink.build_part("s3_out", "p00", None)
    first.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])
    assert first.snapshot() == 1  # committed by bytewax with this epoch
    first.write_batch([rows("m1", "u2", 5)])
    assert first.snapshot() == 2  # written, but say the crash came before bytewax stored this

    resumed = sink.build_part("s3_out", "p00", 1)  # bytewax restores the last stored state
    table = read_s3_rows(s3, sink.location.bucket, "out").sort("movieId")
    assert table["userId"].to_list() == ["u1", "u1"]
    resumed.write_batch([rows("m1", "u2", 5)])  # the replay
    resumed.close()
    table = read_s3_rows(s3, sink.location.bucket, "out")
    assert sorted(zip(table["movieId"], table["userId"], strict=True)) == [("m1", "u1"), ("m1", "u2"), ("m2", "u1")]


def test_one_object_per_folder_per_epoch_and_names_never_reused(s3, sink) -> None:
    part = sink.build_part("s3_out", "p01", None)
    part.write_batch([rows("m1", "u1", 1), rows("m1", "u2", 1)])
    part.snapshot()
    again = sink.build_part("s3_out", "p01", 0)  # resume before that write: same seq, new writer
    again.write_batch([rows("m1", "u1", 1), rows("m1", "u2", 1)])
    again.snapshot()
    table = read_s3_rows(s3, sink.location.bucket, "out")
    assert table.height == 2 and table["object"].n_unique() == 1


def test_fresh_start_replaces_an_earlier_run_of_the_same_partition(s3, sink) -> None:
    old = sink.build_part("s3_out", "p00", None)
    old.write_batch([rows("m1", "u1", 1)])
    old.snapshot()
    new = sink.build_part("s3_out", "p00", None)  # no recovery state: the job replays everything
    new.write_batch([rows("m1", "u1", 1)])
    new.close()
    assert read_s3_rows(s3, sink.location.bucket, "out").height == 1


def test_partitions_are_zero_padded_and_routing_is_stable() -> None:
    sink = PartitionedS3Sink(S3Location("b", "p"), OUTPUT_SCHEMA, partitions=12)
    assert sink.list_parts()[:3] == ["p00", "p01", "p02"] and sink.list_parts()[-1] == "p11"
    assert sink.list_parts() == sorted(sink.list_parts())
    # Same route in every process, whatever its hash seed (Python's hash() would differ).
    import subprocess
    import sys

    code = "from connectors.sinks.s3_objects import stable_partition as f; print(f('2000'), f('2001'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{stable_partition('2000')} {stable_partition('2001')}\n"}


def test_missing_bucket_is_one_clear_error(s3) -> None:
    with pytest.raises(S3SinkError, match="bucket 'no-such-bucket': the bucket does not exist: create it"):
        check_bucket(S3Location("no-such-bucket", "p", s3.endpoint_url, "us-east-1"))


def test_unreachable_endpoint_is_one_clear_error() -> None:
    from devstack.processes import free_port

    with pytest.raises(
        S3SinkError, match=r"cannot reach S3 at http://127\.0\.0\.1:\d+: start it or fix S3_ENDPOINT_URL"
    ):
        check_bucket(S3Location("b", "p", f"http://127.0.0.1:{free_port()}", "us-east-1"))
