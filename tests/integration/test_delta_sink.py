"""The Delta table sink against a real S3 endpoint: one transaction per epoch, idempotent replay, fencing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import polars as pl
import pytest
from deltalake import DeltaTable

from connectors.sinks.delta_sink import DeltaTableSink, FencedError
from connectors.sinks.delta_table import DeltaLocation, DeltaSinkError, check_existing_table, ensure_table
from connectors.sinks.fence import CommitState
from connectors.sinks.rows import ObjectRows
from dataflows.impressions.layout import DELTA_PARTITION_BY, DELTA_SCHEMA, OUTPUT_SCHEMA, with_window_hour
from tests.support.jobs import ROOT

HOUR_MS = 3_600_000


def state(namespace: str, seq: int) -> dict:
    """A snapshot with an empty fence (nothing written past the restored snapshot waits for the replay)."""
    return CommitState(namespace, seq).to_snapshot()


def window(movie: str, start: int, *users: str) -> ObjectRows:
    """All rows of one movie's window (the unit the job emits at once)."""
    return ObjectRows(
        "ignored",
        pl.DataFrame(
            {
                "movieId": [movie] * len(users),
                "userId": list(users),
                "impressions": [1] * len(users),
                "latestImpression": [start + 1] * len(users),
                "windowStart": [start] * len(users),
                "windowEnd": [start + 900_000] * len(users),
            }
        ),
    )


@pytest.fixture
def location(s3, unique) -> DeltaLocation:
    s3.create_bucket(f"delta-{unique}")
    location = DeltaLocation(f"s3://delta-{unique}/out", s3.endpoint_url, "us-east-1")
    ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
    return location


def sink(location: DeltaLocation, namespace: str = "run-a", partitions: int = 4) -> DeltaTableSink:
    return DeltaTableSink(
        location,
        OUTPUT_SCHEMA,
        app_prefix="test/out",
        namespace=namespace,
        partition_by=DELTA_PARTITION_BY,
        unit_columns=("movieId", "windowStart"),
        prepare=with_window_hour,
        partitions=partitions,
        give_up_after=5,
    )


def table_rows(location: DeltaLocation) -> list[tuple[str, str, int]]:
    """What a reader sees through the log: (movieId, userId, windowStart), sorted, repeats kept."""
    frame = pl.read_delta(location.uri, storage_options=location.storage_options())
    return sorted(frame.select("movieId", "userId", "windowStart").rows())


def keys_under(s3, bucket: str, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def write_commits(location: DeltaLocation) -> list[dict]:
    return [c for c in location.open().history() if c["operation"] == "WRITE"]


def test_each_epoch_is_one_transaction_carrying_the_partitions_version(location) -> None:
    part = sink(location).build_part("out", "p00", None)
    part.write_batch([window("m1", 0, "u1", "u2"), window("m2", HOUR_MS, "u1")])
    assert part.snapshot() == state("run-a", 1)
    part.write_batch([window("m1", 900_000, "u3")])
    assert part.snapshot() == state("run-a", 2)
    assert part.snapshot() == state("run-a", 2)  # an epoch without rows commits nothing

    table = location.open()
    assert table.transaction_version("test/out/p00/run-a") == 1
    assert len(write_commits(location)) == 2
    assert table_rows(location) == [("m1", "u1", 0), ("m1", "u2", 0), ("m1", "u3", 900_000), ("m2", "u1", HOUR_MS)]
    # Partitioned by the window start's hour and movieId, as columns readers can filter on.
    assert table.metadata().partition_columns == ["windowHour", "movieId"]
    hours = pl.read_delta(location.uri, storage_options=location.storage_options())["windowHour"].unique().sort()
    assert hours.to_list() == ["1970-01-01--00", "1970-01-01--01"]


def test_a_replayed_epoch_already_in_the_log_is_skipped(location) -> None:
    first = sink(location).build_part("out", "p00", None)
    first.write_batch([window("m1", 0, "u1")])
    stored = first.snapshot()  # bytewax stores this snapshot...
    first.write_batch([window("m2", 0, "u1", "u2")])
    first.snapshot()  # ...and the process dies after this commit, before storing its snapshot

    resumed = sink(location).build_part("out", "p00", stored)
    resumed.write_batch([window("m2", 0, "u1", "u2")])  # the replay of that epoch
    assert resumed.snapshot() == state("run-a", 2), "the replayed version is in the log: nothing to commit"
    resumed.write_batch([window("m3", 0, "u1")])
    assert resumed.snapshot() == state("run-a", 3)

    assert table_rows(location) == [("m1", "u1", 0), ("m2", "u1", 0), ("m2", "u2", 0), ("m3", "u1", 0)]
    assert [int(c["waxstreams.version"]) for c in reversed(write_commits(location))] == [0, 1, 2]


def test_a_state_of_an_older_release_resumes_with_an_empty_fence(location) -> None:
    first = sink(location).build_part("out", "p00", None)
    first.write_batch([window("m1", 0, "u1")])
    first.snapshot()
    first.write_batch([window("m2", 0, "u1")])
    first.snapshot()  # version 1: past the stored snapshot

    resumed = sink(location).build_part("out", "p00", ("run-a", 1))  # `(namespace, next_seq)`, as stored before
    assert resumed.snapshot() == {"namespace": "run-a", "seq": 2, "position": None, "fence": {("m2", 0)}}
    resumed.write_batch([window("m2", 0, "u1"), window("m3", 0, "u1")])
    assert resumed.snapshot() == state("run-a", 3)
    assert table_rows(location) == [("m1", "u1", 0), ("m2", "u1", 0), ("m3", "u1", 0)]


def test_a_replay_cut_into_epochs_differently_writes_exactly_the_missing_windows(location) -> None:
    first = sink(location).build_part("out", "p00", None)
    stored = first.snapshot()
    first.write_batch([window("m1", 0, "u1")])
    first.snapshot()
    first.write_batch([window("m2", 0, "u1")])
    first.snapshot()  # versions 0 and 1 committed after the stored snapshot, then the crash

    resumed = sink(location).build_part("out", "p00", stored)
    # The replay's epochs are wall-clock: its first holds all of it and one window more.
    resumed.write_batch([window("m1", 0, "u1"), window("m2", 0, "u1"), window("m3", 0, "u1")])
    assert resumed.snapshot() == state("run-a", 3)
    assert table_rows(location) == [("m1", "u1", 0), ("m2", "u1", 0), ("m3", "u1", 0)]


def test_a_stale_writer_is_fenced(location) -> None:
    old = sink(location).build_part("out", "p00", None)
    old.write_batch([window("m1", 0, "u1")])
    stored = old.snapshot()

    new = sink(location).build_part("out", "p00", stored)  # a restart while the old process still runs
    new.write_batch([window("m2", 0, "u1")])
    new.snapshot()
    old.write_batch([window("m2", 0, "u1")])
    with pytest.raises(FencedError, match=r"another writer committed version 1 for test/out/p00/run-a"):
        old.snapshot()
    assert table_rows(location) == [("m1", "u1", 0), ("m2", "u1", 0)]


def test_a_concurrent_commit_of_the_same_app_id_fails(location) -> None:
    """Both writers pass the check on the same table snapshot; the log lets only one commit."""
    one = sink(location).build_part("out", "p00", None)
    two = sink(location).build_part("out", "p00", None)
    two._table.update_incremental = lambda: None  # type: ignore[method-assign]  # keep its snapshot from before
    one.write_batch([window("m1", 0, "u1")])
    one.snapshot()
    two.write_batch([window("m1", 0, "u1")])
    with pytest.raises(FencedError, match="another writer committed a concurrent commit"):
        two.snapshot()
    assert table_rows(location) == [("m1", "u1", 0)]


def test_partitions_commit_concurrently_without_losing_a_commit(location) -> None:
    """The log's conditional put on this S3: 4 writers x 8 epochs, every commit kept, in order per app."""
    delta = sink(location)
    errors: list[BaseException] = []

    def run(name: str, movie: str) -> None:
        try:
            part = delta.build_part("out", name, None)
            for epoch in range(8):
                part.write_batch([window(movie, epoch * 900_000, "u1")])
                part.snapshot()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p, f"m{i}")) for i, p in enumerate(delta.list_parts())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    table = location.open()
    assert [table.transaction_version(f"test/out/{p}/run-a") for p in delta.list_parts()] == [7, 7, 7, 7]
    assert table_rows(location) == sorted((f"m{i}", "u1", e * 900_000) for i in range(4) for e in range(8))


def test_resume_against_a_table_that_lost_the_runs_commits_stops_with_the_fix(s3, unique) -> None:
    s3.create_bucket(f"lost-{unique}")
    location = DeltaLocation(f"s3://lost-{unique}/out", s3.endpoint_url, "us-east-1")
    ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
    with pytest.raises(
        DeltaSinkError, match=r"lacks commits of test/out/p00/run-a up to version 4 .* new recovery store"
    ):
        sink(location).build_part("out", "p00", ("run-a", 5))


def test_a_fresh_run_over_another_runs_table_stops_unless_appending(location) -> None:
    part = sink(location, "run-a").build_part("out", "p00", None)
    part.write_batch([window("m1", 0, "u1")])
    part.snapshot()
    check_existing_table(location, "run-a", append=False)  # its own commits: a crashed first attempt
    with pytest.raises(DeltaSinkError, match=r"already holds commits of another run .* ON_EXISTING_OUTPUT=append"):
        check_existing_table(location, "run-b", append=False)
    check_existing_table(location, "run-b", append=True)


def test_a_new_table_over_other_files_is_refused(s3, unique) -> None:
    """The table's vacuum deletes every file its log does not name: never start one over object output."""
    s3.create_bucket(f"over-{unique}")
    s3.client().put_object(Bucket=f"over-{unique}", Key="impressions/2019-01-07--07/2000/p00-1.parquet", Body=b"x")
    location = DeltaLocation(f"s3://over-{unique}/impressions", s3.endpoint_url, "us-east-1")
    with pytest.raises(
        DeltaSinkError, match=r"holds files that are not a Delta table \(e\.g\. impressions/2019-01-07--07/"
    ):
        ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
    assert not DeltaTable.is_deltatable(location.uri, storage_options=location.storage_options())


def test_a_table_partitioned_otherwise_is_refused(location) -> None:
    with pytest.raises(DeltaSinkError, match=r"partitioned by \['windowHour', 'movieId'\].*set DELTA_TABLE_URI"):
        ensure_table(location, DELTA_SCHEMA, ("movieId",))


def test_maintenance_optimize_and_vacuum_keep_the_rows(s3, location) -> None:
    part = sink(location).build_part("out", "p00", None)
    for epoch in range(6):  # six small files in one partition folder
        part.write_batch([window("m1", 0, f"u{epoch}")])
        part.snapshot()
    before = table_rows(location)
    env = {**os.environ, "S3_ENDPOINT_URL": s3.endpoint_url}

    def command(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "connectors.sinks.delta_table", "--uri", location.uri, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert '"numFilesRemoved": 6' in command("optimize")
    assert len(location.open().file_uris()) == 1
    assert table_rows(location) == before
    command("vacuum", "--retention-hours", "0")
    table = DeltaTable(location.uri, storage_options=location.storage_options())
    listing = s3.client().list_objects_v2(Bucket=location.bucket, Prefix="out/windowHour=")
    assert len(listing["Contents"]) == len(table.file_uris()) == 1, "vacuum left the compacted files behind"
    assert table_rows(location) == before
    assert table.transaction_version("test/out/p00/run-a") == 5, "maintenance keeps the app versions"
    command("checkpoint")
    log = keys_under(s3, location.bucket, "out/_delta_log/")
    assert any(k.endswith(f"{table.version():020d}.checkpoint.parquet") for k in log), sorted(log)
    assert location.open().transaction_version("test/out/p00/run-a") == 5


def test_object_sink_state_in_the_store_is_refused_with_the_fix(location) -> None:
    with pytest.raises(
        DeltaSinkError, match=r"OUTPUT_FORMAT changed on a resumed run; switch formats with a new recovery"
    ):
        sink(location).build_part("out", "p00", 7)  # type: ignore[arg-type]  # a legacy object-sink state


def test_a_files_rows_do_not_depend_on_the_order_its_windows_closed(s3, unique) -> None:
    """Out-of-order input closes windows in another order: each data file holds the same rows in the same order."""
    windows = [window("m1", w * 900_000, f"u{w}a", f"u{w}b") for w in (0, 1, 2, 3)]
    files = []
    for order in (windows, windows[::-1]):
        s3.create_bucket(f"delta-{unique}-{len(files)}")
        location = DeltaLocation(f"s3://delta-{unique}-{len(files)}/out", s3.endpoint_url, "us-east-1")
        ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
        part = sink(location).build_part("out", "p00", None)
        part.write_batch(list(order))
        part.snapshot()
        (uri,) = location.open().file_uris()
        file = pl.read_parquet(uri, storage_options=location.storage_options())
        files.append(file.select("userId", "windowStart").rows())
    assert files[0] == [(f"u{w}{x}", w * 900_000) for w in (0, 1, 2, 3) for x in "ab"]
    assert files[1] == files[0]
