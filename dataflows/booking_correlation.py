"""Booking correlation: two streams keyed by booking id, one alert per booking.

    python -m bytewax.run dataflows.booking_correlation:flow

The job's middle (the rest is dataflows/skeleton.py): booking-created + booking-events,
decoded with their watermark in the source -> keyed state per bookingId (rules in
dataflows/booking_rules.py, timeouts in event time) -> alerts / unmatched streams.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from connectors.recovery_store.resume import epoch_interval
from connectors.transports.contract import OutputRecord, Transport
from dataflows import metrics, skeleton
from dataflows.booking_rules import (
    EMPTY,
    Alert,
    BookingRecord,
    BookingState,
    Dropped,
    Outcome,
    Unmatched,
    advance,
    correlate,
    next_deadline,
    no_counterpart,
    read_booking_batch,
)
from dataflows.event_time import Heartbeat, WatermarkView, WorkerWatermarks, wake_time
from dataflows.metrics import BOOKING_OUTCOMES, KEYS_IN_STATE
from dataflows.settings import BookingSettings

log = logging.getLogger(__name__)

JOB = "booking_correlation"


class CorrelationLogic(StatefulBatchLogic[BookingRecord | Heartbeat, Outcome, BookingState]):
    """bytewax glue around the pure rules: feeds records and the watermark, schedules wake-ups."""

    def __init__(self, state: BookingState, view: WatermarkView, timeout_ms: int, recheck: timedelta) -> None:
        self.state = state
        self.view = view
        self.timeout_ms = timeout_ms
        self.recheck = recheck

    def _result(self, outcomes: list[Outcome]) -> tuple[list[Outcome], bool]:
        discard = self.state.is_empty()
        if discard:
            KEYS_IN_STATE.labels(JOB).dec()
        return outcomes, discard

    def _advance(self, outcomes: list[Outcome]) -> tuple[list[Outcome], bool]:
        more, self.state = advance(self.state, self.view.watermark(time.monotonic()), self.timeout_ms)
        return self._result(outcomes + more)

    def on_batch(self, values: list[BookingRecord | Heartbeat]) -> tuple[list[Outcome], bool]:
        outcomes: list[Outcome] = []
        for record in values:
            self.view.observe(record.source, record.source_watermark)
            if isinstance(record, Heartbeat):
                continue
            more, self.state = correlate(self.state, record, self.timeout_ms)
            outcomes += more
        return self._advance(outcomes)

    def on_notify(self) -> tuple[list[Outcome], bool]:
        return self._advance([])

    def on_eof(self) -> tuple[list[Outcome], bool]:
        # Bounded input ended: like Flink's final watermark, every timeout fires.
        pending = self.state.pending
        self.state = EMPTY
        if pending is None:
            return self._result([])
        return self._result([Unmatched(pending, no_counterpart(self.timeout_ms))])

    def notify_at(self) -> datetime | None:
        deadline = next_deadline(self.state, self.timeout_ms)
        if deadline is None:
            return None
        now = time.monotonic()
        return wake_time(self.view.watermark(now) > deadline, self.recheck, self.view.unchanged_for(now))

    def snapshot(self) -> BookingState:
        self.view.commit(time.monotonic())  # epoch boundary: see event_time.py
        return self.state  # immutable


def _count(outcome: Outcome) -> Outcome:
    BOOKING_OUTCOMES.labels(type(outcome).__name__.lower()).inc()
    return outcome


def build_flow(
    settings: BookingSettings,
    transport: Transport,
    recheck: timedelta = timedelta(milliseconds=500),
    epoch: timedelta | None = None,
) -> Dataflow:
    """`epoch`: bytewax's epoch interval (-s), so that waiting keys wake once per epoch; None:
    every `recheck`."""
    streams = [settings.created_topic, settings.events_topic]
    flow = Dataflow(JOB)
    records, dead_letters = skeleton.read_input(
        flow,
        JOB,
        transport,
        streams,
        functools.partial(
            read_booking_batch,
            schemas={settings.created_topic: settings.created_schema, settings.events_topic: settings.event_schema},
            max_out_of_orderness_ms=int(settings.max_out_of_orderness.total_seconds() * 1000),
        ),
        max_out_of_orderness=settings.max_out_of_orderness,
    )

    watermarks = WorkerWatermarks(
        transport.partitions(streams), settings.idle_timeout, metrics.record_watermark_lag(JOB), epoch
    )
    timeout_ms = int(settings.timeout.total_seconds() * 1000)

    def build_logic(resume: BookingState | None) -> CorrelationLogic:
        KEYS_IN_STATE.labels(JOB).inc()  # called for new keys and for every key restored at a resume
        return CorrelationLogic(resume or EMPTY, watermarks.view(), timeout_ms, recheck)

    keyed = op.key_on("by_booking", records, lambda r: r.key if isinstance(r, Heartbeat) else r.booking_id)
    outcomes: Stream[Any] = op.map(
        "count", op.stateful_batch("correlate", keyed, build_logic), lambda kv: _count(kv[1])
    )
    alerts = op.filter("alerts", outcomes, lambda o: isinstance(o, Alert))
    unmatched = op.filter("unmatched", outcomes, lambda o: isinstance(o, Unmatched))
    op.inspect("dropped", op.filter("drops", outcomes, lambda o: isinstance(o, Dropped)), _log_drop)

    def keyed_record(outcome: Alert | Unmatched) -> OutputRecord:
        booking_id = outcome.created.booking_id if isinstance(outcome, Alert) else outcome.record.booking_id
        return OutputRecord(outcome.unit, booking_id.encode(), outcome.to_json())

    skeleton.write_outputs(
        JOB,
        transport,
        {
            "alerts_out": (op.map("alert_record", alerts, keyed_record), settings.alerts_topic),
            "unmatched_out": (op.map("unmatched_record", unmatched, keyed_record), settings.unmatched_topic),
        },
        dead_letters,
        settings.dead_letter_topic,
    )
    return flow


def _log_drop(step_id: str, dropped: Dropped) -> None:
    log.debug("dropped %s record of booking %s: %s", dropped.record.side, dropped.record.booking_id, dropped.reason)


def _from_env(env: Mapping[str, str], argv: Sequence[str]) -> Dataflow:
    settings = BookingSettings.from_env(env)
    resume = skeleton.start(settings, argv, env)
    transport = skeleton.transport_for(settings, env, JOB, resume)
    transport.check(
        read=[settings.created_topic, settings.events_topic],
        write=[settings.alerts_topic, settings.unmatched_topic, settings.dead_letter_topic],
    )
    return build_flow(settings, transport, epoch=epoch_interval(argv, env))


def flow_from_env() -> Dataflow:
    return skeleton.flow_from_env(JOB, _from_env)


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module touches no network.
    if name == "flow":
        return flow_from_env()
    raise AttributeError(name)
