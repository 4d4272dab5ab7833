"""What the job writes: a closed window's rows for the rows sink, the late records, and
the rows sink itself (S3 objects or a Delta table), checked at start."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from bytewax.outputs import Sink

from connectors.recovery_store.resume import Resume
from connectors.sinks.rows import ObjectRows
from connectors.sinks.s3_client import S3Location, S3SinkError, check_bucket
from connectors.sinks.s3_manifests import check_existing_output
from connectors.sinks.s3_objects import PartitionedS3Sink
from connectors.transports.contract import OutputRecord
from dataflows.dead_letters import LateEvent
from dataflows.impressions import JOB
from dataflows.impressions.layout import (
    DELTA_PARTITION_BY,
    DELTA_SCHEMA,
    OUTPUT_SCHEMA,
    HourFolders,
    movie_shards,
    object_folders,
    with_window_hour,
)
from dataflows.impressions.windows import OPEN_MOVIES, ClosedRows, WindowSlice, WindowTallies
from dataflows.settings import MovieImpressionsSettings

if TYPE_CHECKING:
    from connectors.sinks.delta_sink import DeltaTableSink


ClosedWindow = tuple[str, tuple[int, WindowTallies]]  # (shard, (window number, tallies)), from fold_window


def closed_window_rows(prefix: str, window_ms: int) -> Callable[[list[ClosedWindow]], list[tuple[str, ObjectRows]]]:
    """The windows a step activation closes -> the rows sink's items, one per window, in
    order: its rows split by object folder, with the folders no later window adds to
    (`HourFolders`). All the windows' rows and folders are made in one pass (`ClosedRows`)."""
    # A shard's windows close on the worker that holds its key: one tracker each, no sharing.
    hour_folders = {shard: HourFolders() for shard in movie_shards()}

    def to_rows(closing: list[ClosedWindow]) -> list[tuple[str, ObjectRows]]:
        windows = [(window_id * window_ms, tallies) for _, (window_id, tallies) in closing]
        for _, tallies in windows:
            if tallies.counted:
                OPEN_MOVIES.closed(tallies.movies)
        closed = ClosedRows.of(windows, window_ms)
        run_starts = pl.Series([start for start, _ in windows], dtype=pl.Int64).gather(closed.run_windows)
        folders = object_folders(prefix, run_starts, closed.movies.gather(closed.run_movies))
        runs = list(zip(folders, closed.run_rows.tolist(), strict=True))
        items = []
        row = run = 0
        window_runs = np.bincount(closed.run_windows, minlength=len(windows)).tolist()
        for (shard, _), (start, _), count, runs_in in zip(
            closing, windows, closed.counts.tolist(), window_runs, strict=True
        ):
            complete = hour_folders[shard].closed(start, window_ms, folders[run : run + runs_in])
            items.append((shard, ObjectRows.split(closed.rows.slice(row, count), runs[run : run + runs_in], complete)))
            row, run = row + count, run + runs_in
        return items

    return to_rows


def late_event_record(event: LateEvent) -> OutputRecord:
    """A late event's late-topic record, keyed and named by its input position."""
    key = event.position.key()
    return OutputRecord(f"late:{key.decode()}", key, event.to_json())


# Users per late-slice record, so that it fits a Kafka message as a dead letter does
# (MAX_DEAD_LETTER_BYTES): a user's entry is at most about 1,250 bytes (an id of
# MAX_ID_BYTES, each byte escaped to at most six characters, and two integers).
LATE_USERS_PER_RECORD = 500


def late_slice_records(piece: WindowSlice) -> list[tuple[bytes, bytes]]:
    """Late-topic records for impressions the window operator found late (already
    aggregated): per movie, keyed by it, one record per LATE_USERS_PER_RECORD users."""
    reason = (
        f"window starting {piece.window_start} closed before these impressions arrived "
        "(an idle input partition let the watermark pass)"
    )
    records = []
    for (movie_id,), rows in piece.tallies.partition_by("movieId", as_dict=True, maintain_order=True).items():
        for chunk in rows.iter_slices(LATE_USERS_PER_RECORD):
            record = {
                "reason": reason,
                "movieId": movie_id,
                "windowStart": piece.window_start,
                "source": piece.source,
                "impressions": {user: [count, latest] for _, user, count, latest in chunk.iter_rows()},
            }
            records.append((movie_id.encode(), json.dumps(record).encode()))
    return records


def late_slice_outputs(piece: WindowSlice) -> list[OutputRecord]:
    # Named by the slice's partition, window and place: a slice is cut by its input batch,
    # so unlike every other unit this one depends on where batches were cut (see the README).
    return [
        OutputRecord(f"late-slice:{piece.source}:{piece.window_start}:{piece.latest}:{i}", key, value)
        for i, (key, value) in enumerate(late_slice_records(piece))
    ]


def rows_sink(settings: MovieImpressionsSettings, resume: Resume) -> Sink[tuple[str, ObjectRows]]:
    """The sink of OUTPUT_FORMAT, its bucket checked: a Delta table, or objects under S3_PREFIX."""
    if settings.output_format == "delta":
        return delta_sink(settings, resume)
    return object_sink(settings, resume)


def object_sink(settings: MovieImpressionsSettings, resume: Resume) -> PartitionedS3Sink:
    location = S3Location(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    sink = PartitionedS3Sink(
        location,
        OUTPUT_SCHEMA,
        settings.output_format,
        settings.sink_partitions,
        settings.s3_give_up_after.total_seconds(),
        namespace=resume.sink_namespace,
        direct_put=settings.s3_direct_put,
    )
    # One client for the checks and every partition, made here, beside the broker checks.
    sink.client = client = sink.shared_client()
    check_bucket(location, client)
    # A run that starts without state writes in its own namespace, and stops over another
    # run's output unless ON_EXISTING_OUTPUT=append (connectors/sinks/s3_manifests.py).
    if resume.fresh:
        append = settings.start.on_existing_output == "append"
        give_up_after = settings.s3_give_up_after.total_seconds()
        check_existing_output(location, resume.sink_namespace, append, give_up_after, client)
    return sink


def delta_sink(settings: MovieImpressionsSettings, resume: Resume) -> DeltaTableSink:
    """OUTPUT_FORMAT=delta: the table at DELTA_TABLE_URI (made if missing), partitioned by
    DELTA_PARTITION_BY (`windowHour=2019-01-07--07/movieId=2000/`)."""
    # Imported here: deltalake takes a while to import, and only this format needs it.
    from connectors.sinks.delta_sink import DeltaTableSink
    from connectors.sinks.delta_table import DeltaLocation, check_existing_table, ensure_table

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
