"""Booking correlation: two Kafka topics, keyed by booking id, one alert per booking.

    python -m bytewax.run dataflows.booking_correlation:flow

booking-created + booking-events -> per-partition decode and watermark (in the source)
-> keyed state per bookingId (rules in dataflows/bookings.py, timeouts in event time)
-> alerts / unmatched topics. Invalid records -> dead-letter topic.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulBatchLogic

from connectors.kafka_source import KafkaUnavailable, StatefulKafkaSource, check_topics
from connectors.recovery_store import RecoveryStoreError, prepare_resume
from dataflows import metrics
from dataflows.bookings import (
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
    read_booking_batch,
)
from dataflows.dead_letters import DeadLetter
from dataflows.event_time import (
    NO_WATERMARK,
    Heartbeat,
    HeartbeatSchedule,
    WatermarkView,
    WorkerWatermarks,
    partition_watermark,
    wake_time,
)
from dataflows.metrics import BOOKING_OUTCOMES, EVENTS, KEYS_IN_STATE
from dataflows.settings import BookingSettings, ConfigError

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
        return self._result([Unmatched(pending, f"no counterpart within {self.timeout_ms} ms (end of input)")])

    def notify_at(self) -> datetime | None:
        deadline = next_deadline(self.state, self.timeout_ms)
        if deadline is None:
            return None
        return wake_time(self.view.watermark(time.monotonic()) > deadline, self.recheck)

    def snapshot(self) -> BookingState:
        self.view.commit(time.monotonic())  # epoch boundary: see event_time.py
        return self.state  # immutable


def _read_batch(source: str, messages: list, max_timestamp: int, *, heartbeats: HeartbeatSchedule, **rules: Any):
    items: list[Any]
    items, max_timestamp = read_booking_batch(source, messages, max_timestamp, **rules)
    EVENTS.labels(JOB, "invalid").inc(sum(isinstance(i, DeadLetter) for i in items))
    EVENTS.labels(JOB, "valid").inc(sum(not isinstance(i, DeadLetter) for i in items))
    bound_ms = rules["max_out_of_orderness_ms"]
    return items + heartbeats.due(source, partition_watermark(max_timestamp, bound_ms)), max_timestamp


def _count(outcome: Outcome) -> Outcome:
    BOOKING_OUTCOMES.labels(type(outcome).__name__.lower()).inc()
    return outcome


def build_flow(settings: BookingSettings, recheck: timedelta = timedelta(milliseconds=500)) -> Dataflow:
    kafka = settings.kafka
    topics = [settings.created_topic, settings.events_topic]
    check_topics(
        kafka.brokers,
        kafka.client_config,
        [*topics, settings.alerts_topic, settings.unmatched_topic, settings.dead_letter_topic],
    )
    source = KafkaSource(
        kafka.brokers,
        topics,
        tail=not settings.bounded,
        # The group: START_POSITION=group reads its offsets, and lag tools see the snapshots' commits.
        add_config={**kafka.client_config, "group.id": settings.consumer_group},
        batch_size=settings.kafka_batch_size,
        raise_on_errors=False,
    )
    read = functools.partial(
        _read_batch,
        heartbeats=HeartbeatSchedule(),
        schemas={settings.created_topic: settings.created_schema, settings.events_topic: settings.event_schema},
        max_out_of_orderness_ms=int(settings.max_out_of_orderness.total_seconds() * 1000),
    )

    watermarks = WorkerWatermarks(source.list_parts(), settings.idle_timeout, metrics.record_watermark_lag(JOB))
    timeout_ms = int(settings.timeout.total_seconds() * 1000)

    def build_logic(resume: BookingState | None) -> CorrelationLogic:
        KEYS_IN_STATE.labels(JOB).inc()
        return CorrelationLogic(resume or EMPTY, watermarks.view(), timeout_ms, recheck)

    flow = Dataflow("booking_correlation")
    items: Stream[Any] = op.input(
        "kafka_in", flow, StatefulKafkaSource(source, read, NO_WATERMARK, True, settings.start.start_position)
    )
    invalid = op.branch("split_invalid", items, lambda i: isinstance(i, DeadLetter))
    keyed = op.key_on("by_booking", invalid.falses, lambda r: r.key if isinstance(r, Heartbeat) else r.booking_id)
    outcomes: Stream[Any] = op.map(
        "count", op.stateful_batch("correlate", keyed, build_logic), lambda kv: _count(kv[1])
    )
    alerts = op.filter("alerts", outcomes, lambda o: isinstance(o, Alert))
    unmatched = op.filter("unmatched", outcomes, lambda o: isinstance(o, Unmatched))
    op.inspect("dropped", op.filter("drops", outcomes, lambda o: isinstance(o, Dropped)), _log_drop)

    def to_message(outcome: Alert | Unmatched) -> KafkaSinkMessage:
        booking_id = outcome.created.booking_id if isinstance(outcome, Alert) else outcome.record.booking_id
        return KafkaSinkMessage(booking_id.encode(), outcome.to_json())

    op.output(
        "alerts_out",
        op.map("alert_msg", alerts, to_message),
        KafkaSink(kafka.brokers, settings.alerts_topic, kafka.client_config),
    )
    op.output(
        "unmatched_out",
        op.map("unmatched_msg", unmatched, to_message),
        KafkaSink(kafka.brokers, settings.unmatched_topic, kafka.client_config),
    )
    dead = op.map("dead_letter", invalid.trues, lambda d: KafkaSinkMessage(d.position.key(), d.to_json()))
    op.output("dead_letter_out", dead, KafkaSink(kafka.brokers, settings.dead_letter_topic, kafka.client_config))
    return flow


def _log_drop(step_id: str, dropped: Dropped) -> None:
    log.debug("dropped %s record of booking %s: %s", dropped.record.side, dropped.record.booking_id, dropped.reason)


def flow_from_env() -> Dataflow:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = BookingSettings.from_env(os.environ)
        metrics.serve(settings.metrics_port)
        prepare_resume(sys.argv[1:], os.environ, allow_no_recovery=settings.start.allow_no_recovery)
        return build_flow(settings)
    except (ConfigError, KafkaUnavailable, RecoveryStoreError) as exc:
        sys.exit(f"booking_correlation: {exc}")


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module touches no network.
    if name == "flow":
        return flow_from_env()
    raise AttributeError(name)
