"""Movie impressions per (movieId, userId) in 15-minute event-time windows, into S3.

    python -m bytewax.run dataflows.movie_impressions:flow            # settings from the environment

The job's middle, wired from its rules in dataflows/impressions/ (the rest is
dataflows/skeleton.py): each input batch decoded, judged for lateness and pre-aggregated
(in the source, snapshotted with the position) -> windows keyed by a shard of movies
(`movie_shard`) with a columnar per-(movie, user) accumulator -> one frame per (shard,
window) -> the rows sink, which writes each movie's rows to its folder (exactly-once
partitioned S3 objects, or a Delta table). Late events -> the late stream.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import UTC_MIN
from bytewax.outputs import Sink

from connectors.sinks.rows import ObjectRows
from connectors.transports.contract import Transport
from dataflows import metrics, skeleton
from dataflows.dead_letters import LateEvent
from dataflows.event_time import EventTimeClock, Heartbeat, HeartbeatAwareWindower, to_datetime
from dataflows.impressions import JOB, outputs
from dataflows.impressions.layout import movie_shards
from dataflows.impressions.slicing import slice_batch
from dataflows.impressions.windows import WindowSlice, WindowTallies, arrival_watermark, fold
from dataflows.settings import MovieImpressionsSettings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        arrival_watermark_getter=arrival_watermark if per_key else None,
    )
    windows = win.fold_window(
        "impressions",
        op.key_on("by_movie_shard", late.falses, lambda s: s.key if isinstance(s, Heartbeat) else s.shard),
        clock,
        HeartbeatAwareWindower(win.TumblingWindower(length=settings.window, align_to=EPOCH)),
        WindowTallies,
        fold,
        WindowTallies.merge,
        ordered=False,  # count and max do not depend on order
    )
    # Batches: the windows closing together become rows in one pass.
    to_rows = outputs.closed_window_rows(settings.s3_prefix, window_ms)
    op.output("s3_out", op.flat_map_batch("rows", windows.down, to_rows), rows_sink)

    late_events = op.map("late_event", late.trues, outputs.late_event_record)
    # Only reachable when an idle partition let the watermark pass (dataflows/event_time.py).
    late_slices = op.flat_map("late_slice", windows.late, lambda kv: outputs.late_slice_outputs(kv[1][1]))
    skeleton.write_outputs(
        JOB,
        transport,
        {"late_out": (op.merge("all_late", late_events, late_slices), settings.late_topic)},
        dead_letters,
        settings.dead_letter_topic,
    )
    return flow


def _from_env(env: Mapping[str, str], argv: Sequence[str]) -> Dataflow:
    settings = MovieImpressionsSettings.from_env(env)
    resume = skeleton.start(settings, argv, env)
    transport = skeleton.transport_for(settings, env, JOB, resume)
    # The sink's S3 checks and the transport's broker checks wait on different servers: at once.
    # Either one's error is still one line (the transport's first, as before).
    with ThreadPoolExecutor(1, thread_name_prefix="s3-checks") as pool:
        rows_sink = pool.submit(outputs.rows_sink, settings, resume)
        transport.check(read=[settings.input_topic], write=[settings.dead_letter_topic, settings.late_topic])
        return build_flow(settings, transport, rows_sink.result())


def flow_from_env() -> Dataflow:
    return skeleton.flow_from_env(JOB, _from_env)


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module (tests, tools) touches no network.
    if name == "flow":
        return flow_from_env()
    raise AttributeError(name)
