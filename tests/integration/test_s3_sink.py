"""The exactly-once protocol of the S3 sink against a real S3 endpoint."""

import json
import threading
from dataclasses import replace
from typing import Any, ClassVar

import polars as pl
import pytest

from connectors.sinks import object_bodies, s3_objects
from connectors.sinks.fence import CommitState
from connectors.sinks.rows import ObjectRows, stable_partition
from connectors.sinks.s3_client import S3Location, S3SinkError, check_bucket
from connectors.sinks.s3_manifests import ManifestLog
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import OUTPUT_SCHEMA
from tests.support.data import read_s3_rows


def state(namespace: str, seq: int) -> dict:
    """A snapshot with an empty fence (nothing written past the restored snapshot waits for the replay)."""
    return CommitState(namespace, seq).to_snapshot()


def rows(movie: str, user: str, count: int, window: int = 0) -> ObjectRows:
    """One row of (movie, window): a unit of the sink, emitted whole."""
    return ObjectRows(
        f"out/2019-01-07--07/{movie}",
        pl.DataFrame(
            {
                "movieId": [movie],
                "userId": [user],
                "impressions": [count],
                "latestImpression": [1],
                "windowStart": [window * 900_000],
                "windowEnd": [(window + 1) * 900_000],
            }
        ),
    )


def triples(s3, bucket: str, fmt: str = "parquet") -> list[tuple[str, str, int]]:
    table = read_s3_rows(s3, bucket, "out", fmt)
    return sorted(table.select("movieId", "userId", "windowStart").rows()) if table.height else []


@pytest.fixture
def sink(s3, unique) -> PartitionedS3Sink:
    bucket = f"sink-{unique}"
    s3.create_bucket(bucket)
    return PartitionedS3Sink(S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA)


def test_a_resume_keeps_what_was_written_after_the_restored_snapshot_and_skips_its_replay(s3, sink) -> None:
    bucket = sink.location.bucket
    first = sink.build_part("s3_out", "p00", None)
    first.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])
    assert first.snapshot() == state("", 1)  # committed by bytewax with this epoch
    first.write_batch([rows("m1", "u2", 5, window=1), rows("m1", "u3", 5, window=1)])
    assert first.snapshot() == state("", 2)  # written, but say the crash came before bytewax stored this

    resumed = sink.build_part("s3_out", "p00", 1)  # bytewax restores the last stored state (of an older release)
    written = [("m1", "u1", 0), ("m1", "u2", 900_000), ("m1", "u3", 900_000), ("m2", "u1", 0)]
    assert triples(s3, bucket) == written, "a reader may have seen those rows: they stay"
    # The replay cuts epochs its own way: the written window again, and one that was not written.
    resumed.write_batch([rows("m1", "u2", 5, window=1), rows("m1", "u3", 5, window=1), rows("m3", "u1", 1, window=1)])
    assert resumed.snapshot() == state("", 3), "numbering goes on past the seq the crashed attempt wrote"
    assert resumed._visible == {}, "a unit dropped once is forgotten: later writes check nothing"
    resumed.close()
    assert triples(s3, bucket) == sorted([*written, ("m3", "u1", 900_000)])


class HeldListing(S3Location):
    """An S3 whose listings answer only once `release` is set (a slow start-up listing)."""

    release: ClassVar[threading.Event] = threading.Event()
    answered: ClassVar[list[str]] = []

    def client(self) -> Any:
        client = super().client()
        # None: a before-call handler's answer would stand in for S3's.
        client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: HeldListing.release.wait(60) and None)
        client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: HeldListing.answered.append("list"))
        return client


def test_the_resume_lists_while_the_job_goes_on_and_the_first_write_waits_for_it(s3, sink) -> None:
    first = sink.build_part("s3_out", "p00", None)
    first.write_batch([rows("m1", "u1", 1)])
    first.snapshot()  # written, but say the crash came before bytewax stored this
    HeldListing.release.clear()
    HeldListing.answered.clear()
    location = sink.location
    held = PartitionedS3Sink(HeldListing(location.bucket, "out", location.endpoint_url, "us-east-1"), OUTPUT_SCHEMA)
    resumed = held.build_part("s3_out", "p00", None)  # bytewax builds the next partition meanwhile
    assert HeldListing.answered == [], "the resume's listing is still waiting"
    # The replay again: it must not write m1's window twice, so the write waits for the resume.
    replay = threading.Thread(target=resumed.write_batch, args=([rows("m1", "u1", 1), rows("m2", "u1", 1)],))
    replay.start()
    replay.join(timeout=1.0)
    assert replay.is_alive(), "the write went on before the resume knew what was written"
    HeldListing.release.set()
    replay.join()
    resumed.close()
    assert triples(s3, sink.location.bucket) == [("m1", "u1", 0), ("m2", "u1", 0)]


def test_a_snapshot_starts_the_writes_of_every_partition_of_its_worker_at_once(s3, sink, monkeypatch) -> None:
    release, both_started, started = threading.Event(), threading.Event(), []
    put = ManifestLog.put

    def held(log: ManifestLog, seq: int, body: bytes) -> None:  # a write's first PUT waits until `release`
        started.append(log.prefix)
        if len(started) == 2:
            both_started.set()
        release.wait(60)
        put(log, seq, body)

    monkeypatch.setattr(ManifestLog, "put", held)
    location = sink.location
    snapshots = []

    def worker() -> None:  # one bytewax worker: it builds its partitions, then snapshots p00, then p01
        p00, p01 = sink.build_part("s3_out", "p00", None), sink.build_part("s3_out", "p01", None)
        p00.write_batch([rows("m1", "u1", 1)])
        p01.write_batch([rows("m2", "u1", 1)])
        snapshots.extend([p00.snapshot(), p01.snapshot()])
        p00.close()
        p01.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert both_started.wait(30), "p01's write waited for p00's to finish"
    finally:
        release.set()
        thread.join()
    assert sorted(prefix.split("/")[-2] for prefix in started) == ["p00", "p01"]  # out/_sink/<partition>/
    assert snapshots == [state("", 1), state("", 1)]
    assert triples(s3, location.bucket) == [("m1", "u1", 0), ("m2", "u1", 0)]


def test_a_failed_resume_stops_the_first_write_and_every_snapshot_with_its_one_line(s3, sink) -> None:
    s3.client().delete_bucket(Bucket=sink.location.bucket)
    part = sink.build_part("s3_out", "p00", None)  # returns: its listing fails in the background
    for use in (lambda: part.write_batch([rows("m1", "u1", 1)]), part.snapshot, part.snapshot):
        with pytest.raises(S3SinkError, match="the bucket does not exist: create it or fix S3_BUCKET"):
            use()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_write_whose_object_never_landed_is_written_again_and_its_late_put_fails(s3, unique, fmt: str) -> None:
    bucket, client = f"sink-{unique}", s3.client()
    s3.create_bucket(bucket)
    sink = PartitionedS3Sink(S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA, fmt)
    crashed = sink.build_part("s3_out", "p00", None)
    crashed.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])
    crashed.snapshot()
    (lost,) = [k for k in client.list_objects_v2(Bucket=bucket, Prefix="out/2019")["Contents"] if "/m2/" in k["Key"]]
    body = client.get_object(Bucket=bucket, Key=lost["Key"])["Body"].read()
    client.delete_object(Bucket=bucket, Key=lost["Key"])  # as if its PUT was still on its way at the crash

    resumed = sink.build_part("s3_out", "p00", 0)
    assert triples(s3, bucket, fmt) == [("m1", "u1", 0)]  # and an empty object where m2's never landed
    resumed.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])  # the replay
    resumed.close()
    assert triples(s3, bucket, fmt) == [("m1", "u1", 0), ("m2", "u1", 0)]
    # The crashed attempt's PUT arrives now: it finds the key claimed, and its process stops.
    with pytest.raises(S3SinkError, match="claimed by a resume of p00: this process is stale"):
        crashed._put_new(lost["Key"], body)
    assert triples(s3, bucket, fmt) == [("m1", "u1", 0), ("m2", "u1", 0)]


def test_a_put_retried_after_its_answer_was_lost_succeeds(s3, sink) -> None:
    part = sink.build_part("s3_out", "p00", None)
    assert part._put_new("out/x.parquet", b"rows")
    assert part._put_new("out/x.parquet", b"rows"), "the first attempt landed: the retry is not a conflict"


def test_one_object_per_folder_per_epoch_and_names_never_reused(s3, sink) -> None:
    part = sink.build_part("s3_out", "p01", None)
    part.write_batch([rows("m1", "u1", 1), rows("m1", "u2", 1)])
    part.snapshot()
    again = sink.build_part("s3_out", "p01", 0)  # resume before that write: a new writer
    again.write_batch([rows("m1", "u1", 1, window=1), rows("m1", "u2", 1, window=1)])
    again.snapshot()
    table = read_s3_rows(s3, sink.location.bucket, "out")
    assert table.height == 4 and table["object"].n_unique() == 2


def objects_by_folder(s3, bucket: str) -> dict[str, int]:
    table = read_s3_rows(s3, bucket, "out")
    counts = table.group_by("movieId").agg(pl.col("object").n_unique()).rows() if table.height else []
    return dict(counts)


def test_complete_folders_are_written_before_the_epoch_ends_one_object_each(s3, sink, monkeypatch) -> None:
    monkeypatch.setattr(s3_objects, "EARLY_WRITE_ROWS", 2)
    bucket, part = sink.location.bucket, sink.build_part("s3_out", "p00", None)
    part.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])
    part.write_batch([replace(rows("m1", "u2", 1), complete=("out/2019-01-07--07/m1",))])
    for write in list(part._in_flight):
        write.result()  # the early write, started by write_batch, not by a snapshot
    assert objects_by_folder(s3, bucket) == {"m1": 1}, "m1 is complete and has 2 rows; m2 may still grow"
    part.write_batch([rows("m2", "u2", 1)])
    assert part.snapshot() == state("", 2)
    assert objects_by_folder(s3, bucket) == {"m1": 1, "m2": 1}
    assert triples(s3, bucket) == [("m1", "u1", 0), ("m1", "u2", 0), ("m2", "u1", 0), ("m2", "u2", 0)]


def test_replayed_rows_dropped_on_resume_do_not_count_toward_an_early_write(s3, sink, monkeypatch) -> None:
    monkeypatch.setattr(s3_objects, "EARLY_WRITE_ROWS", 3)
    first = sink.build_part("s3_out", "p00", None)
    first.write_batch([rows("m1", "u1", 1), rows("m1", "u2", 1)])
    assert first.snapshot() == state("", 1)  # written, but say the crash came before bytewax stored this
    resumed = sink.build_part("s3_out", "p00", 0)
    complete = "out/2019-01-07--07/"
    # The replay: m1's unit is already in S3 (dropped), then two small complete folders.
    unit = pl.concat([rows("m1", "u1", 1).rows, rows("m1", "u2", 1).rows])  # a unit comes whole
    resumed.write_batch([replace(rows("m1", "u1", 1), rows=unit, complete=(f"{complete}m1",))])
    resumed.write_batch([replace(rows("m2", "u1", 1), complete=(f"{complete}m2",))])
    resumed.write_batch([replace(rows("m3", "u1", 1), complete=(f"{complete}m3",))])
    assert resumed._in_flight == [], "2 rows of complete folders are under EARLY_WRITE_ROWS (and 2 folders)"
    assert resumed.snapshot() == state("", 2), "m2 and m3 in one write, after the seq the crashed attempt wrote"
    assert objects_by_folder(s3, sink.location.bucket) == {"m1": 1, "m2": 1, "m3": 1}


def test_enough_complete_folders_are_written_early_however_few_their_rows(s3, sink, monkeypatch) -> None:
    monkeypatch.setattr(s3_objects, "EARLY_WRITE_FOLDERS", 3)
    bucket, part = sink.location.bucket, sink.build_part("s3_out", "p00", None)
    hour = "out/2019-01-07--07/"
    part.write_batch([replace(rows(m, "u1", 1), complete=(f"{hour}{m}",)) for m in ("m1", "m2")])
    part.write_batch([rows("m4", "u1", 1)])  # not complete: does not count
    assert part._in_flight == []
    part.write_batch([replace(rows("m3", "u1", 1), complete=(f"{hour}m3",))])
    for write in list(part._in_flight):
        write.result()  # started by write_batch: three complete folders, one row each
    assert objects_by_folder(s3, bucket) == {"m1": 1, "m2": 1, "m3": 1}
    part.close()
    assert objects_by_folder(s3, bucket) == {"m1": 1, "m2": 1, "m3": 1, "m4": 1}


def test_past_the_buffer_limit_everything_buffered_is_written(s3, sink, monkeypatch) -> None:
    monkeypatch.setattr(s3_objects, "BUFFER_LIMIT_ROWS", 3)
    bucket, part = sink.location.bucket, sink.build_part("s3_out", "p00", None)
    part.write_batch([rows("m1", "u1", 1), rows("m2", "u1", 1)])
    assert part._in_flight == []
    part.write_batch([rows("m3", "u1", 1)])
    for write in list(part._in_flight):
        write.result()
    assert objects_by_folder(s3, bucket) == {"m1": 1, "m2": 1, "m3": 1}
    part.write_batch([rows("m1", "u2", 1)])
    part.close()
    assert objects_by_folder(s3, bucket) == {"m1": 2, "m2": 1, "m3": 1}


def test_a_fresh_start_in_the_legacy_namespace_does_not_double_an_earlier_run(s3, sink) -> None:
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

    code = "from connectors.sinks.rows import stable_partition as f; print(f('2000'), f('2001'))"
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


def test_direct_puts_store_what_boto3_stores(s3, unique) -> None:
    stored = {}
    for direct in (True, False):
        bucket = f"sink-{unique}-{str(direct).lower()}"
        s3.create_bucket(bucket)
        sink = PartitionedS3Sink(
            S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA, direct_put=direct
        )
        part = sink.build_part("s3_out", "p00", None)
        part.write_batch([rows("%2E%2E", "u1", 1), rows("a b+é😀", "u2", 3)])
        part.close()
        table = read_s3_rows(s3, bucket, "out")
        stored[direct] = sorted(table.select("object", "movieId", "userId", "impressions").rows())
    # Same folders (their percent signs included) and rows; only the writer id in the name differs.
    assert [(o.rsplit("/", 1)[0], *rest) for o, *rest in stored[True]] == [
        (o.rsplit("/", 1)[0], *rest) for o, *rest in stored[False]
    ]
    assert [movie for _, movie, _, _ in stored[True]] == ["%2E%2E", "a b+é😀"]


def test_direct_puts_send_the_manifests_too_and_boto3_no_put(s3, unique) -> None:
    bucket = f"sink-{unique}"
    s3.create_bucket(bucket)
    location = S3Location(bucket, "out", s3.endpoint_url, "us-east-1")
    client, boto3_puts = location.client(), []
    client.meta.events.register("before-call.s3.PutObject", lambda params, **_: boto3_puts.append(params["url_path"]))
    part = PartitionedS3Sink(location, OUTPUT_SCHEMA, namespace="run-a", client=client).build_part(
        "s3_out", "p00", None
    )
    part.write_batch([rows("m1", "u1", 1), rows("m2", "u2", 3)])
    part.close()
    assert boto3_puts == []
    (key,) = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="out/_sink/")["Contents"]]
    assert key == "out/_sink/p00/run-a/000000000000.json"
    manifest = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    objects = sorted(set(read_s3_rows(s3, bucket, "out").get_column("object")))
    assert sorted(manifest["objects"]) == objects and len(objects) == 2
    assert sorted(map(tuple, manifest["units"][objects[0]])) == [("m1", 0)]


def test_a_refused_direct_put_is_one_clear_error(s3, sink) -> None:
    part = sink.build_part("s3_out", "p00", None)
    s3.client().delete_bucket(Bucket=sink.location.bucket)
    with pytest.raises(S3SinkError, match="the bucket does not exist: create it or fix S3_BUCKET"):
        part._call("write object", lambda: part._put_new("out/x.parquet", b"rows"))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_objects_bytes_do_not_depend_on_the_order_its_windows_closed(s3, unique, fmt: str) -> None:
    """Out-of-order input closes a folder's windows in another order: the object is the same."""
    client = s3.client()
    windows = [rows("m1", f"u{w}", w + 1, window=w) for w in (0, 1, 2, 3)]
    bodies = []
    for order in (windows, windows[::-1]):
        bucket = f"order-{unique}-{len(bodies)}"
        s3.create_bucket(bucket)
        sink = PartitionedS3Sink(S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA, fmt)
        part = sink.build_part("s3_out", "p00", None)
        part.write_batch(list(order))
        part.close()
        (key,) = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/2019")["Contents"]]
        bodies.append(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        got = object_bodies.decode(bodies[-1], fmt, OUTPUT_SCHEMA).select("userId", "windowStart").rows()
        assert got == [(f"u{w}", w * 900_000) for w in (0, 1, 2, 3)], "rows in window order"
    assert bodies[0] == bodies[1]


def test_rows_of_another_column_order_and_width_are_written_in_the_sinks_schema(s3, sink) -> None:
    item = rows("m1", "u1", 7)
    other = item.rows.select(reversed(item.rows.columns)).with_columns(pl.col("impressions").cast(pl.Int32))
    part = sink.build_part("s3_out", "p00", None)
    part.write_batch([ObjectRows(item.directory, other)])
    part.close()
    table = read_s3_rows(s3, sink.location.bucket, "out")
    assert table.drop("object").schema == OUTPUT_SCHEMA
    assert table.drop("object").rows() == item.rows.rows()


def test_the_jobs_s3_checks_and_every_sink_partition_share_one_client(s3, unique, monkeypatch) -> None:
    # A client costs ~13 ms of CPU to make: the job made one per check and one per partition,
    # the partitions' on bytewax's worker thread while it read.
    from connectors.recovery_store.resume import Resume
    from dataflows.impressions import outputs
    from dataflows.settings import MovieImpressionsSettings

    bucket = f"shared-{unique}"
    s3.create_bucket(bucket)
    settings = MovieImpressionsSettings.from_env(
        {"S3_BUCKET": bucket, "S3_PREFIX": "out", "S3_ENDPOINT_URL": s3.endpoint_url}
    )
    made = []
    new_client = S3Location.client
    monkeypatch.setattr(S3Location, "client", lambda self, **kw: made.append(new_client(self, **kw)) or made[-1])
    sink = outputs.rows_sink(settings, Resume.without_store())
    parts = [sink.build_part("s3_out", name, None) for name in sink.list_parts()]
    for part in parts:
        part.write_batch([rows("m1", "u1", 1)])
        part.snapshot()
        part.close()
    assert len(made) == 1 and len(parts) == settings.sink_partitions == 4
    assert triples(s3, bucket) == [("m1", "u1", 0)] * 4  # each partition wrote its own row through it
