"""Movie impressions per (movieId, userId) in 15-minute event-time windows, into S3.

    python -m bytewax.run dataflows.movie_impressions:flow            # settings from the environment

Kafka (JSON impressions) -> per-partition decode, lateness and batch pre-aggregation
(in the source, snapshotted with the offsets) -> windows keyed by movieId with a
per-user accumulator -> rows -> exactly-once partitioned S3 sink.
Invalid events -> dead-letter topic; late events -> late topic.
"""

from __future__ import annotations

import functools
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators.windowing import UTC_MIN

from connectors.kafka_source import KafkaUnavailable, StatefulKafkaSource, check_topics
from connectors.recovery_store import RecoveryStoreError, Resume, prepare_resume
from connectors.s3_sink import (
    ObjectRows,
    PartitionedS3Sink,
    S3Location,
    S3SinkError,
    check_bucket,
    check_existing_output,
)
from dataflows import metrics
from dataflows.dead_letters import DeadLetter, LateEvent
from dataflows.event_time import (
    NO_WATERMARK,
    EventTimeClock,
    Heartbeat,
    HeartbeatAwareWindower,
    HeartbeatSchedule,
    partition_watermark,
    to_datetime,
)
from dataflows.impressions import (
    OUTPUT_SCHEMA,
    UserTallies,
    WindowSlice,
    bucket_dir,
    late_slice_record,
    slice_batch,
    window_rows,
)
from dataflows.metrics import EVENTS, KEYS_IN_STATE
from dataflows.settings import ConfigError, MovieImpressionsSettings

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JOB = "movie_impressions"


def _assess_batch(
    source: str, messages: list, max_timestamp: int, *, window_ms: int, bound_ms: int, heartbeats: HeartbeatSchedule
):
    items: list[Any]
    items, max_timestamp = slice_batch(
        source, messages, max_timestamp, window_ms=window_ms, max_out_of_orderness_ms=bound_ms
    )
    invalid = sum(isinstance(i, DeadLetter) for i in items)
    late = sum(isinstance(i, LateEvent) for i in items)
    EVENTS.labels(JOB, "invalid").inc(invalid)
    EVENTS.labels(JOB, "late").inc(late)
    EVENTS.labels(JOB, "valid").inc(len(messages) - invalid - late)
    return items + heartbeats.due(source, partition_watermark(max_timestamp, bound_ms)), max_timestamp


def _fold(tallies: UserTallies, piece: WindowSlice) -> UserTallies:
    return tallies.merge(piece.tallies)


def _open_window() -> UserTallies:
    KEYS_IN_STATE.labels(JOB).inc()
    return UserTallies()


def build_flow(settings: MovieImpressionsSettings, resume: Resume | None = None) -> Dataflow:
    kafka = settings.kafka
    check_topics(
        kafka.brokers, kafka.client_config, [settings.input_topic, settings.dead_letter_topic, settings.late_topic]
    )
    location = S3Location(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    check_bucket(location)
    # Operator's contract: a run that starts without state writes in its own namespace and
    # stops over another run's output unless ON_EXISTING_OUTPUT=append (connectors/s3_sink.py).
    resume = resume or Resume.without_store()
    if resume.fresh:
        append = settings.start.on_existing_output == "append"
        check_existing_output(location, resume.sink_namespace, append, settings.s3_give_up_after.total_seconds())

    window_ms = int(settings.window.total_seconds() * 1000)
    source = KafkaSource(
        kafka.brokers,
        [settings.input_topic],
        tail=not settings.bounded,
        add_config={**kafka.client_config, "group.id": settings.consumer_group},
        batch_size=settings.kafka_batch_size,
        raise_on_errors=False,
    )
    assess = functools.partial(
        _assess_batch,
        window_ms=window_ms,
        bound_ms=int(settings.max_out_of_orderness.total_seconds() * 1000),
        heartbeats=HeartbeatSchedule(),
    )

    flow = Dataflow("movie_impressions")
    items: Stream[Any] = op.input(
        "kafka_in", flow, StatefulKafkaSource(source, assess, NO_WATERMARK, True, settings.start.start_position)
    )
    invalid = op.branch("split_invalid", items, lambda i: isinstance(i, DeadLetter))
    late = op.branch("split_late", invalid.falses, lambda i: isinstance(i, LateEvent))

    clock: EventTimeClock[WindowSlice] = EventTimeClock(
        ts_getter=lambda s: UTC_MIN if isinstance(s, Heartbeat) else to_datetime(s.latest),
        source_watermark_getter=lambda s: (s.source, s.source_watermark),
        sources=source.list_parts(),
        window=settings.window,
        idle_timeout=settings.idle_timeout,
        on_commit=metrics.record_watermark_lag(JOB),
    )
    windows = win.fold_window(
        "impressions",
        op.key_on("by_movie", late.falses, lambda s: s.key if isinstance(s, Heartbeat) else s.movie_id),
        clock,
        HeartbeatAwareWindower(win.TumblingWindower(length=settings.window, align_to=EPOCH)),
        _open_window,
        _fold,
        UserTallies.merge,
        ordered=False,  # count and max do not depend on order
    )

    def to_rows(movie_window: tuple[str, tuple[int, UserTallies]]) -> tuple[str, ObjectRows]:
        movie_id, (window_id, tallies) = movie_window
        KEYS_IN_STATE.labels(JOB).dec()
        start = window_id * window_ms  # windows are aligned to the epoch
        return movie_id, ObjectRows(
            bucket_dir(settings.s3_prefix, start, movie_id), window_rows(movie_id, start, window_ms, tallies)
        )

    sink = PartitionedS3Sink(
        location,
        OUTPUT_SCHEMA,
        settings.output_format,
        settings.sink_partitions,
        settings.s3_give_up_after.total_seconds(),
        namespace=resume.sink_namespace,
    )
    op.output("s3_out", op.map("rows", windows.down, to_rows), sink)

    dead = op.map("dead_letter", invalid.trues, lambda d: KafkaSinkMessage(d.position.key(), d.to_json()))
    op.output("dead_letter_out", dead, KafkaSink(kafka.brokers, settings.dead_letter_topic, kafka.client_config))
    late_events = op.map("late_event", late.trues, lambda e: KafkaSinkMessage(e.position.key(), e.to_json()))
    # Only reachable when an idle partition let the watermark pass (DESIGN §4).
    late_slices = op.map(
        "late_slice", windows.late, lambda kv: KafkaSinkMessage(kv[0].encode(), late_slice_record(kv[1][1]))
    )
    op.output(
        "late_out",
        op.merge("all_late", late_events, late_slices),
        KafkaSink(kafka.brokers, settings.late_topic, kafka.client_config),
    )
    return flow


def flow_from_env() -> Dataflow:
    """The `flow` of `python -m bytewax.run`: user errors end in one line, not a traceback."""
    import os

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        settings = MovieImpressionsSettings.from_env(os.environ)
        metrics.serve(settings.metrics_port)
        resume = prepare_resume(sys.argv[1:], os.environ, allow_no_recovery=settings.start.allow_no_recovery)
        return build_flow(settings, resume)
    except (ConfigError, KafkaUnavailable, S3SinkError, RecoveryStoreError) as exc:
        sys.exit(f"movie_impressions: {exc}")


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module (tests, tools) touches no network.
    if name == "flow":
        return flow_from_env()
    raise AttributeError(name)
