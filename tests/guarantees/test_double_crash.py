"""Two crashes in a row at the one order of events that needs the sinks' fence, made
deterministic: the whole impressions job in this process (bytewax's run_main, the in-memory
transport's ABORT markers as crashes) into the real S3 server, as objects or a Delta table.

Run A reads everything and commits output past its last stored snapshot (its epoch is
10 s long: it stores none), then crashes. Run B resumes, finds A's units in the output, stores
several epochs while it reads the first half, and crashes before the input that closes A's
windows. Run C resumes from B's snapshot and replays those windows. Only if B's snapshots
kept A's units in their fence does C skip them; a sink that snapshots only its sequence
writes them twice (docs/architecture.md, "Exactly-once").
"""

from __future__ import annotations

import io
import types
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from polars.testing import assert_frame_equal

from connectors.recovery_store.resume import drop_abandoned_snapshots
from connectors.sinks.s3_client import S3Location
from connectors.sinks.s3_objects import PartitionedS3Sink
from connectors.transports.memory import ABORT, Aborted, MemoryTransport
from dataflows import movie_impressions
from dataflows.impressions import outputs
from dataflows.impressions.layout import OUTPUT_SCHEMA
from dataflows.settings import MovieImpressionsSettings
from tests.support.oracles import expected_rows
from tests.support.readers import COLUMNS, KEY
from tests.support.runs import traffic

NAMESPACE = "run-1"


def settings_for(s3, bucket: str, output_format: str) -> MovieImpressionsSettings:
    env = {
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": bucket,
        "S3_PREFIX": "impressions",
        "OUTPUT_FORMAT": output_format,
        "SINK_PARTITIONS": "2",
    }
    return replace(MovieImpressionsSettings.from_env(env), max_out_of_orderness=timedelta(seconds=2))


def rows_sink(settings: MovieImpressionsSettings):
    """A new sink per run, as a restarted process builds it, in the run's namespace."""
    if settings.output_format == "delta":
        return outputs.delta_sink(settings, types.SimpleNamespace(sink_namespace=NAMESPACE, fresh=False))
    location = S3Location(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, "us-east-1")
    return PartitionedS3Sink(location, OUTPUT_SCHEMA, "parquet", partitions=2, namespace=NAMESPACE)


def output_rows(s3, settings: MovieImpressionsSettings) -> pl.DataFrame:
    if settings.output_format == "delta":
        from connectors.sinks.delta_table import DeltaLocation

        location = DeltaLocation(settings.delta_table_uri, s3.endpoint_url, "us-east-1")
        return pl.read_delta(location.uri, storage_options=location.storage_options()).select(COLUMNS)
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix="impressions/")
    keys = [o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(".parquet")]
    frames = [
        pl.read_parquet(io.BytesIO(client.get_object(Bucket=settings.s3_bucket, Key=k)["Body"].read())) for k in keys
    ]
    return pl.concat(frames).select(COLUMNS) if frames else pl.DataFrame(schema=expected_rows([]).schema)


def crash_run(settings, transport: MemoryTransport, recovery: Path, epoch: timedelta) -> None:
    """One run, expected to end at an ABORT marker, as a killed process ends."""
    drop_abandoned_snapshots(recovery)  # what the jobs' start-up does (dataflows/skeleton.py)
    flow = movie_impressions.build_flow(settings, transport, rows_sink(settings))
    with pytest.raises(Exception) as crash:
        run_main(flow, epoch_interval=epoch, recovery_config=RecoveryConfig(str(recovery)))
    assert isinstance(crash.value.__cause__, Aborted), crash.value


@pytest.mark.parametrize("output_format", ["parquet", "delta"])
@pytest.mark.parametrize("runs", ["A/B/C", "A/B/C/D"])
def test_a_unit_committed_before_crashes_in_a_row_is_written_once(
    s3, tmp_path: Path, unique: str, output_format: str, runs: str
) -> None:
    settings = settings_for(s3, f"twice-{unique}", output_format)
    s3.create_bucket(settings.s3_bucket)
    events = [e for e in traffic(6_000, seed=41) if e.kind == "valid"]  # two hours of event time
    half = len(events) // 2
    # One partition: the first half, B's (and C's) crash, the second half (it closes the first's
    # windows), A's crash.
    values: list = [e.value for e in events[:half]]
    before_second_half = len(values)
    values += [ABORT] * 2 + [e.value for e in events[half:]] + [ABORT]
    transport = MemoryTransport({settings.input_topic: [values]}, batch_size=100)
    stream = settings.input_topic
    b_crash, c_crash = (stream, 0, before_second_half), (stream, 0, before_second_half + 1)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    transport.aborted |= {b_crash, c_crash}  # A runs past B's and C's crash points
    crash_run(settings, transport, recovery, epoch=timedelta(seconds=10))
    committed_by_a = output_rows(s3, settings)
    assert committed_by_a.height > 0, "run A committed nothing: the test missed its case"

    # B: epochs of 100 ms while batches come every 50 ms, so it stores several before it crashes.
    transport.aborted -= {b_crash}
    transport.pace = timedelta(milliseconds=50)
    crash_run(settings, transport, recovery, epoch=timedelta(milliseconds=100))
    transport.pace = None
    if runs == "A/B/C/D":  # C too stores epochs and crashes before the second half
        transport.aborted -= {c_crash}
        transport.pace = timedelta(milliseconds=50)
        crash_run(settings, transport, recovery, epoch=timedelta(milliseconds=100))
        transport.pace = None

    drop_abandoned_snapshots(recovery)
    flow = movie_impressions.build_flow(settings, transport, rows_sink(settings))
    run_main(flow, epoch_interval=timedelta(milliseconds=100), recovery_config=RecoveryConfig(str(recovery)))

    final = output_rows(s3, settings)
    doubled = final.filter(pl.len().over(KEY) > 1)
    assert doubled.is_empty(), f"{doubled.height} rows twice, e.g. {doubled.row(0)}"
    assert_frame_equal(final.sort("movieId", "userId", "windowStart"), expected_rows(events))
    assert committed_by_a.join(final, on=COLUMNS, how="anti").is_empty(), "a row run A committed is gone"
