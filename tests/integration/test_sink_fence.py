"""The commit-ahead fence of the object and Delta sinks through any sequence of crashes (connectors/sinks/fence.py).

A run replays the deterministic unit sequence from the input position of the last snapshot
bytewax *stored*, commits ahead of it (early writes, snapshots bytewax never stores), and
dies. A reader of the output, after every step: never a unit twice, never one gone.
"""

from __future__ import annotations

import io
import json
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.sinks import s3_objects
from connectors.sinks.delta_sink import DeltaTableSink
from connectors.sinks.delta_table import DeltaLocation, ensure_table
from connectors.sinks.fence import CommitState
from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location, S3SinkError
from connectors.sinks.s3_objects import PartitionedS3Sink
from dataflows.impressions.layout import DELTA_PARTITION_BY, DELTA_SCHEMA, OUTPUT_SCHEMA, with_window_hour
from tests.support.readers import COLUMNS, PollingReader

HOUR = "out/2019-01-07--07"
WINDOWS = 3  # units per movie (one folder per movie)
USERS = ("u1", "u2")  # rows per unit: a unit comes whole


def unit(i: int) -> ObjectRows:
    """Unit i of the deterministic sequence: movie i // 3's window i % 3, its folder complete after its last window."""
    movie, window = f"m{i // WINDOWS:02d}", i % WINDOWS
    folder = f"{HOUR}/{movie}"
    rows = pl.DataFrame(
        {
            "movieId": [movie] * len(USERS),
            "userId": list(USERS),
            "impressions": [i + 1] * len(USERS),
            "latestImpression": [1] * len(USERS),
            "windowStart": [window * 900_000] * len(USERS),
            "windowEnd": [(window + 1) * 900_000] * len(USERS),
        }
    )
    return ObjectRows(folder, rows, complete=(folder,) if window == WINDOWS - 1 else ())


def all_rows(n: int) -> list[tuple]:
    return sorted(row for i in range(n) for row in unit(i).rows.select(COLUMNS).rows())


class Crash(Exception):
    """The process dies: a PUT it had begun never reaches S3."""


# Object sink -------------------------------------------------------------------------


def object_sink(s3, bucket: str) -> PartitionedS3Sink:
    s3.create_bucket(bucket)
    return PartitionedS3Sink(
        S3Location(bucket, "out", s3.endpoint_url, "us-east-1"), OUTPUT_SCHEMA, namespace="run-a", partitions=1
    )


def object_reader(s3, bucket: str) -> Callable[[], tuple[str, pl.DataFrame]]:
    """Lists and reads every data object, as a query over the prefix does (objects are final: read once)."""
    client, cache = s3.client(), {}

    def read() -> tuple[str, pl.DataFrame]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{HOUR}/")
        keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
        for key in keys:
            if key not in cache:
                cache[key] = pl.read_parquet(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
        frames = [cache[key].select(COLUMNS) for key in keys]
        return f"{len(keys)} objects", pl.concat(frames) if frames else pl.DataFrame(schema=OUTPUT_SCHEMA)

    return read


def die(part: Any) -> None:
    """The process ends: nothing more is written (writes already under way finish first, to keep the test exact)."""
    part._writes.shutdown(wait=True)
    part._uploads.shutdown(wait=True)


def read_rows(read: Callable[[], tuple[str, pl.DataFrame]]) -> list[tuple]:
    return sorted(read()[1].select(COLUMNS).rows())


def test_object_sink_a_unit_fenced_by_one_resume_is_still_fenced_after_the_next(s3, unique) -> None:
    sink, read = object_sink(s3, f"fence-{unique}"), object_reader(s3, f"fence-{unique}")
    crashed = sink.build_part("out", "p00", None)
    crashed.write_batch([unit(1)])  # U, committed ahead; bytewax never stores this snapshot
    crashed.snapshot()
    die(crashed)
    resumed = sink.build_part("out", "p00", None)  # replays from the start, knows U
    resumed.write_batch([unit(0)])
    stored = resumed.snapshot()  # stored before the replay reaches U
    die(resumed)
    last = sink.build_part("out", "p00", stored)
    last.write_batch([unit(1)])  # the replay reaches U
    last.close()
    assert read_rows(read) == all_rows(2), "U must be there once"


def test_object_sink_the_fence_survives_a_resume_that_stores_before_reaching_the_unit(s3, unique) -> None:
    sink, read = object_sink(s3, f"fence-{unique}"), object_reader(s3, f"fence-{unique}")
    a = sink.build_part("out", "p00", None)
    a.write_batch([unit(2)])
    a.snapshot()
    die(a)
    b = sink.build_part("out", "p00", None)
    b.write_batch([unit(0)])
    stored = b.snapshot()
    die(b)
    c = sink.build_part("out", "p00", stored)
    c.write_batch([unit(1)])
    stored = c.snapshot()  # C dies before U too
    die(c)
    d = sink.build_part("out", "p00", stored)
    d.write_batch([unit(2)])
    d.close()
    assert read_rows(read) == all_rows(3)


@dataclass(frozen=True)
class ReadsLocation(S3Location):
    """Records the keys every client the sink makes from it GETs."""

    reads: ClassVar[list[str]] = []

    def client(self) -> Any:
        client = super().client()
        client.meta.events.register(
            "before-call.s3.GetObject", lambda params, **_: self.reads.append(params["url_path"])
        )
        return client


def test_object_sink_manifests_name_their_units_so_a_resume_reads_no_object(s3, unique) -> None:
    bucket = f"fence-{unique}"
    s3.create_bucket(bucket)
    location = ReadsLocation(bucket, "out", s3.endpoint_url, "us-east-1")
    sink = PartitionedS3Sink(location, OUTPUT_SCHEMA, namespace="run-a", partitions=1)
    crashed = sink.build_part("out", "p00", None)
    crashed.write_batch([unit(0), unit(1), unit(3)])
    crashed.snapshot()  # never stored
    die(crashed)
    client = s3.client()
    (manifest,) = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/_sink/")["Contents"]]
    body = json.loads(client.get_object(Bucket=bucket, Key=manifest)["Body"].read())
    assert {key.split("/")[2]: units for key, units in body["units"].items()} == {
        "m00": [["m00", 0], ["m00", 900_000]],
        "m01": [["m01", 0]],
    }
    assert set(body["units"]) == set(body["objects"])

    ReadsLocation.reads.clear()
    resumed = sink.build_part("out", "p00", None)
    fence = CommitState.from_snapshot(resumed.snapshot(), "").fence  # after the resume (it runs in the background)
    assert any("/_sink/" in key for key in ReadsLocation.reads), "the manifest is read (and counted)"
    assert [key for key in ReadsLocation.reads if "/_sink/" not in key] == [], "a data object was read"
    assert fence == {
        (f"{HOUR}/m00", ("m00", 0)),
        (f"{HOUR}/m00", ("m00", 900_000)),
        (f"{HOUR}/m01", ("m01", 0)),
    }
    resumed.write_batch([unit(i) for i in range(5)])
    resumed.close()
    assert read_rows(object_reader(s3, bucket)) == all_rows(5)


def test_object_sink_a_claimed_key_is_no_landed_unit_for_a_later_resume(s3, unique) -> None:
    bucket = f"fence-{unique}"
    sink, client = object_sink(s3, bucket), s3.client()
    crashed = sink.build_part("out", "p00", None)
    crashed.write_batch([unit(0), unit(3)])
    crashed.snapshot()
    die(crashed)
    (lost,) = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{HOUR}/m01/")["Contents"]]
    client.delete_object(Bucket=bucket, Key=lost)  # as if its PUT was still on its way at the crash

    first = sink.build_part("out", "p00", None)  # claims the key with an empty object
    assert CommitState.from_snapshot(first.snapshot(), "").fence == {(f"{HOUR}/m00", ("m00", 0))}
    die(first)
    second = sink.build_part("out", "p00", None)  # the claim is there now: it holds no unit
    second.write_batch([unit(i) for i in range(5)])
    second.close()
    assert read_rows(object_reader(s3, bucket)) == all_rows(5)


def test_object_sink_a_stale_writer_finds_its_manifest_key_taken_and_stops(s3, unique) -> None:
    bucket = f"fence-{unique}"
    sink = object_sink(s3, bucket)
    old = sink.build_part("out", "p00", None)
    old.write_batch([unit(0)])
    old.snapshot()  # seq 0
    new = sink.build_part("out", "p00", None)  # a restart while the old process still runs
    new.write_batch([unit(1)])
    new.snapshot()  # seq 1
    old.write_batch([unit(3)])
    with pytest.raises(S3SinkError, match=r"_sink/p00/run-a/000000000001\.json was written by another writer of p00"):
        old.snapshot()  # its seq 1
    die(old)
    assert read_rows(object_reader(s3, bucket)) == all_rows(2)


def test_object_sink_a_manifest_put_retried_after_its_answer_was_lost_succeeds(s3, unique) -> None:
    part = object_sink(s3, f"fence-{unique}").build_part("out", "p00", None)
    part._manifests.put(0, b'{"seq":0}')
    part._manifests.put(0, b'{"seq":0}')  # the first attempt landed: the retry is not a conflict
    with pytest.raises(S3SinkError, match="this process is stale and stops"):
        part._manifests.put(0, b'{"seq":0,"objects":[]}')
    die(part)


# Delta sink --------------------------------------------------------------------------


def delta_sink(s3, bucket: str) -> tuple[DeltaTableSink, DeltaLocation]:
    s3.create_bucket(bucket)
    location = DeltaLocation(f"s3://{bucket}/out", s3.endpoint_url, "us-east-1")
    ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
    sink = DeltaTableSink(
        location,
        OUTPUT_SCHEMA,
        app_prefix="test/out",
        namespace="run-a",
        partition_by=DELTA_PARTITION_BY,
        unit_columns=("movieId", "windowStart"),
        prepare=with_window_hour,
        partitions=1,
        give_up_after=5,
    )
    return sink, location


def delta_reader(location: DeltaLocation) -> Callable[[], tuple[str, pl.DataFrame]]:
    def read() -> tuple[str, pl.DataFrame]:
        return "the table", pl.read_delta(location.uri, storage_options=location.storage_options()).select(COLUMNS)

    return read


def test_delta_sink_a_unit_fenced_by_one_resume_is_still_fenced_after_the_next(s3, unique) -> None:
    sink, location = delta_sink(s3, f"dfence-{unique}")
    a = sink.build_part("out", "p00", None)
    a.write_batch([unit(1)])
    a.snapshot()  # commits U; never stored
    b = sink.build_part("out", "p00", None)
    b.write_batch([unit(0)])
    stored = b.snapshot()
    c = sink.build_part("out", "p00", stored)
    c.write_batch([unit(1)])
    c.close()
    assert read_rows(delta_reader(location)) == all_rows(2), "U must be there once"


def test_delta_sink_the_fence_survives_a_resume_that_stores_before_reaching_the_unit(s3, unique) -> None:
    sink, location = delta_sink(s3, f"dfence-{unique}")
    a = sink.build_part("out", "p00", None)
    a.write_batch([unit(2)])
    a.snapshot()
    b = sink.build_part("out", "p00", None)
    b.write_batch([unit(0)])
    stored = b.snapshot()
    c = sink.build_part("out", "p00", stored)
    c.write_batch([unit(1)])
    stored = c.snapshot()
    d = sink.build_part("out", "p00", stored)
    d.write_batch([unit(2)])
    d.close()
    assert read_rows(delta_reader(location)) == all_rows(3)


# Random sequences of crashes ---------------------------------------------------------

UNITS = 15
NONE, SNAPSHOT, STORED = 0, 1, 2  # after a batch: nothing, a snapshot bytewax does not store, one it stores


@dataclass(frozen=True)
class Run:
    steps: list[tuple[int, int]]  # (units in the batch, what follows it)
    crash_in_write: bool  # dies inside a snapshot's write, some of its objects never landing


runs_strategy = st.lists(
    st.builds(
        Run,
        st.lists(st.tuples(st.integers(1, 3), st.sampled_from([NONE, SNAPSHOT, SNAPSHOT, STORED])), max_size=7),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


class DroppingPuts:
    """A dying process's data PUTs: those of some folders never reach S3."""

    def __init__(self, put: Any) -> None:
        self._put = put

    def put_object(self, **kwargs: Any) -> Any:
        if zlib.crc32(kwargs["Key"].rsplit("/", 1)[0].encode()) % 2:
            raise Crash
        return self._put.put_object(**kwargs)


def play(runs: list[Run], build: Callable[[Any], Any], die: Callable[[Any, bool], None], reader: PollingReader) -> None:
    """Each run resumes from the last stored snapshot and replays from its input position, then dies.
    A last run replays to the end and closes. The reader checks the output after every step."""
    stored: tuple[Any, int] = (None, 0)
    for number, run in enumerate(runs):
        state, position = stored
        part = build(state)
        for size, then in run.steps:
            if position >= UNITS:
                break
            batch = [unit(i) for i in range(position, min(position + size, UNITS))]
            part.write_batch(batch)
            position += len(batch)
            if then != NONE:
                snapshot = part.snapshot()
                if then == STORED:
                    stored = (snapshot, position)
            reader.check(*reader.read())
        die(part, run.crash_in_write)
        reader.check(*reader.read())
        assert reader.problems == [], f"after run {number}: {reader.problems}"
    state, position = stored
    part = build(state)
    part.write_batch([unit(i) for i in range(position, UNITS)])
    part.close()
    reader.check(*reader.read())
    assert reader.problems == [], reader.problems
    assert read_rows(reader.read) == all_rows(UNITS), "every unit once"


# A/B/C: commits units 0-1 ahead and dies; stores a snapshot before re-reaching 1 and dies; replays 1.
ABC = [Run([(2, SNAPSHOT)], False), Run([(1, STORED)], False), Run([(1, STORED)], False)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(runs=ABC)
@given(runs=runs_strategy)
def test_object_sink_random_crash_sequences_never_double_or_lose_a_unit(s3, runs: list[Run]) -> None:
    bucket = f"rnd-{uuid.uuid4().hex[:12]}"
    sink = object_sink(s3, bucket)

    def end(part: Any, crash_in_write: bool) -> None:
        if crash_in_write:
            part._puts = DroppingPuts(part._puts)
            try:
                part.snapshot()
            except Crash:
                pass
        die(part)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3_objects, "EARLY_WRITE_FOLDERS", 2)  # more writes ahead of the snapshots
        play(runs, lambda state: sink.build_part("out", "p00", state), end, PollingReader(object_reader(s3, bucket)))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(runs=ABC)
@given(runs=runs_strategy)
def test_delta_sink_random_crash_sequences_never_double_or_lose_a_unit(s3, runs: list[Run]) -> None:
    bucket = f"drnd-{uuid.uuid4().hex[:12]}"
    sink, location = delta_sink(s3, bucket)
    runs = [replace(run, crash_in_write=False) for run in runs]  # a Delta commit lands whole or not at all
    play(
        runs,
        lambda state: sink.build_part("out", "p00", state),
        lambda part, _: None,
        PollingReader(delta_reader(location)),
    )
