"""Movie impressions per (movieId, userId) in 15-minute event-time windows, into S3.

    python -m bytewax.run dataflows.movie_impressions:flow            # settings from the environment

The job's middle (the rest is dataflows/skeleton.py): each input batch decoded,
judged for lateness and pre-aggregated (in the source, snapshotted with the position)
-> windows keyed by a shard of movies (`movie_shard`) with a columnar per-(movie, user)
accumulator -> one frame per (shard, window) -> the rows sink, which writes each movie's
rows to its folder (exactly-once partitioned S3 objects). Late events -> the late stream.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
import bytewax.operators.windowing as win
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import UTC_MIN
from bytewax.outputs import Sink

from connectors.recovery_store.resume import Resume
from connectors.sinks.s3_objects import (
    ObjectRows,
    PartitionedS3Sink,
    S3Location,
    S3SinkError,
    check_bucket,
    check_existing_output,
)
from connectors.transports.contract import OutputRecord, Transport
from dataflows import metrics, skeleton
from dataflows.dead_letters import LateEvent
from dataflows.event_time import EventTimeClock, Heartbeat, HeartbeatAwareWindower, to_datetime
from dataflows.impression_rules import (
    OUTPUT_SCHEMA,
    HourFolders,
    WindowSlice,
    WindowTallies,
    folder_runs,
    late_slice_records,
    movie_shards,
    slice_batch,
    window_rows,
)
from dataflows.metrics import KEYS_IN_STATE
from dataflows.settings import MovieImpressionsSettings

if TYPE_CHECKING:
    from connectors.sinks.delta_table import DeltaTableSink

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JOB = "movie_impressions"


class OpenMovies:
    """Movies holding window state in this process, for the keys gauge: windows are keyed
    by shard, so the movies are counted from the accumulators (`WindowTallies.add`)."""

    def __init__(self) -> None:
        self._windows: Counter[str] = Counter()  # movie -> its open windows
        self._lock = threading.Lock()  # workers are threads of one process
        self._gauge = KEYS_IN_STATE.labels(JOB)

    def opened(self, movies: Iterable[str]) -> None:
        with self._lock:
            for movie in movies:
                self._windows[movie] += 1
                if self._windows[movie] == 1:
                    self._gauge.inc()

    def closed(self, movies: Iterable[str]) -> None:
        with self._lock:
            for movie in movies:
                self._windows[movie] -= 1
                if self._windows[movie] == 0:
                    del self._windows[movie]
                    self._gauge.dec()


OPEN_MOVIES = OpenMovies()


def _fold(tallies: WindowTallies, piece: WindowSlice) -> WindowTallies:
    OPEN_MOVIES.opened(tallies.add(piece.tallies, piece.movies))
    return tallies


def _arrival_watermark(item: WindowSlice | Heartbeat) -> int:
    return item.source_watermark if isinstance(item, Heartbeat) else item.watermark_before


def build_flow(
    settings: MovieImpressionsSettings, transport: Transport, rows_sink: Sink[tuple[str, ObjectRows]]
) -> Dataflow:
    window_ms = int(settings.window.total_seconds() * 1000)
    # Windows close per key as the watermark passes them, when every partition is known at start.
    per_key = transport.partitions_fixed
    flow = Dataflow(JOB)
    items, dead_letters = skeleton.read_input(
        flow,
        JOB,
        transport,
        [settings.input_topic],
        functools.partial(
            slice_batch,
            window_ms=window_ms,
            max_out_of_orderness_ms=int(settings.max_out_of_orderness.total_seconds() * 1000),
        ),
        max_out_of_orderness=settings.max_out_of_orderness,
        heartbeat_keys=movie_shards() if per_key else (),  # so each shard hears every partition
    )
    late = op.branch("split_late", items, lambda i: isinstance(i, LateEvent))

    clock: EventTimeClock[WindowSlice] = EventTimeClock(
        ts_getter=lambda s: UTC_MIN if isinstance(s, Heartbeat) else to_datetime(s.latest),
        source_watermark_getter=lambda s: (s.source, s.source_watermark),
        sources=transport.partitions([settings.input_topic]),
        window=settings.window,
        idle_timeout=settings.idle_timeout,
        on_commit=metrics.record_watermark_lag(JOB),
        arrival_watermark_getter=_arrival_watermark if per_key else None,
    )
    windows = win.fold_window(
        "impressions",
        op.key_on("by_movie_shard", late.falses, lambda s: s.key if isinstance(s, Heartbeat) else s.shard),
        clock,
        HeartbeatAwareWindower(win.TumblingWindower(length=settings.window, align_to=EPOCH)),
        WindowTallies,
        _fold,
        WindowTallies.merge,
        ordered=False,  # count and max do not depend on order
    )

    # A shard's windows close on the worker that holds its key: one tracker each, no sharing.
    hour_folders = {shard: HourFolders() for shard in movie_shards()}

    def to_rows(shard_window: tuple[str, tuple[int, WindowTallies]]) -> tuple[str, ObjectRows]:
        shard, (window_id, tallies) = shard_window
        if tallies.counted:
            OPEN_MOVIES.closed(tallies.movies)
        start = window_id * window_ms  # bytewax numbers epoch-aligned tumbling windows from 0
        rows = window_rows(start, window_ms, tallies)
        runs = folder_runs(settings.s3_prefix, start, rows)
        complete = hour_folders[shard].closed(start, window_ms, (folder for folder, _ in runs))
        return shard, ObjectRows.split(rows, runs, complete)

    op.output("s3_out", op.map("rows", windows.down, to_rows), rows_sink)

    late_events = op.map("late_event", late.trues, _late_event_record)
    # Only reachable when an idle partition let the watermark pass (dataflows/event_time.py).
    late_slices = op.flat_map("late_slice", windows.late, lambda kv: _late_slice_records(kv[1][1]))
    skeleton.write_outputs(
        JOB,
        transport,
        {"late_out": (op.merge("all_late", late_events, late_slices), settings.late_topic)},
        dead_letters,
        settings.dead_letter_topic,
    )
    return flow


def _late_event_record(event: LateEvent) -> OutputRecord:
    key = event.position.key()
    return OutputRecord(f"late:{key.decode()}", key, event.to_json())


def _late_slice_records(piece: WindowSlice) -> list[OutputRecord]:
    # Named by the slice's partition, window and place: a slice is cut by its input batch,
    # so unlike every other unit this one depends on where batches were cut (see the README).
    return [
        OutputRecord(f"late-slice:{piece.source}:{piece.window_start}:{piece.latest}:{i}", key, value)
        for i, (key, value) in enumerate(late_slice_records(piece))
    ]


def _from_env(env: Mapping[str, str], argv: Sequence[str]) -> Dataflow:
    settings = MovieImpressionsSettings.from_env(env)
    resume = skeleton.start(settings, argv, env)
    transport = skeleton.transport_for(settings, env, JOB, resume)
    transport.check(read=[settings.input_topic], write=[settings.dead_letter_topic, settings.late_topic])
    if settings.output_format == "delta":
        return build_flow(settings, transport, _delta_sink(settings, resume))
    location = S3Location(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    check_bucket(location)
    # A run that starts without state writes in its own namespace, and stops over another
    # run's output unless ON_EXISTING_OUTPUT=append (connectors/sinks/s3_objects.py).
    if resume.fresh:
        append = settings.start.on_existing_output == "append"
        check_existing_output(location, resume.sink_namespace, append, settings.s3_give_up_after.total_seconds())
    sink = PartitionedS3Sink(
        location,
        OUTPUT_SCHEMA,
        settings.output_format,
        settings.sink_partitions,
        settings.s3_give_up_after.total_seconds(),
        namespace=resume.sink_namespace,
        direct_put=settings.s3_direct_put,
    )
    return build_flow(settings, transport, sink)


# OUTPUT_FORMAT=delta -----------------------------------------------------------------
# A Delta table partitioned by the window start's hour and movieId as columns
# (`windowHour=2019-01-07--07/movieId=2000/`), committed through the Delta log.
DELTA_PARTITION_BY = ("windowHour", "movieId")
DELTA_SCHEMA = pl.Schema([*OUTPUT_SCHEMA.items(), ("windowHour", pl.String)])


def with_window_hour(rows: pl.DataFrame) -> pl.DataFrame:
    """The partition column: the window start's UTC hour, as the object layout's hour folder."""
    return rows.with_columns(windowHour=pl.from_epoch("windowStart", time_unit="ms").dt.strftime("%Y-%m-%d--%H"))


def _delta_sink(settings: MovieImpressionsSettings, resume: Resume) -> DeltaTableSink:
    # Imported here: deltalake takes a while to import, and only this format needs it.
    from connectors.sinks.delta_table import DeltaLocation, DeltaTableSink, check_existing_table, ensure_table

    location = DeltaLocation(settings.delta_table_uri, settings.s3_endpoint_url, settings.s3_region)
    try:
        check_bucket(S3Location(location.bucket, "", settings.s3_endpoint_url, settings.s3_region))
    except S3SinkError as exc:
        if location.bucket == settings.s3_bucket:
            raise
        raise S3SinkError(str(exc).replace("fix S3_BUCKET", "fix DELTA_TABLE_URI")) from None
    ensure_table(location, DELTA_SCHEMA, DELTA_PARTITION_BY)
    if resume.fresh:
        check_existing_table(location, resume.sink_namespace, settings.start.on_existing_output == "append")
    return DeltaTableSink(
        location,
        OUTPUT_SCHEMA,
        app_prefix=f"{JOB}/{settings.s3_prefix}",
        namespace=resume.sink_namespace,
        partition_by=DELTA_PARTITION_BY,
        # A movie's window closes once, with all its users: the unit a replay skips or writes whole.
        unit_columns=("movieId", "windowStart"),
        prepare=with_window_hour,
        partitions=settings.sink_partitions,
        give_up_after=settings.s3_give_up_after.total_seconds(),
    )


def flow_from_env() -> Dataflow:
    return skeleton.flow_from_env(JOB, _from_env)


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module (tests, tools) touches no network.
    if name == "flow":
        return flow_from_env()
    raise AttributeError(name)
