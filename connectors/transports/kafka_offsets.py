"""Where a Kafka partition starts and stops reading, asked of the broker when the partition is built.

Always a concrete start offset:
- resumed (the store has its offset): that offset, or, when retention has already
  deleted it, the earliest record still there; the gap is logged and counted in
  `waxstreams_records_lost_to_retention_total`. librdkafka on its own would apply
  `auto.offset.reset` (latest by default) and skip everything still retained;
  `auto.offset.reset=earliest` stays set as a safety net for a gap opening mid-run.
- fresh (no state): the `StartPosition` (START_POSITION): earliest, latest, the first
  record at or after a timestamp, or the consumer group's committed offset.

A bounded run stops at STOP_AT's first offset, or at the partition's end.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import TopicPartition
from prometheus_client import Counter

from connectors.engine import KafkaPartitionInternals
from connectors.transports.kafka_retry import query
from connectors.transports.kafka_start_position import StartPosition
from connectors.transports.kafka_startup_check import KafkaUnavailable

log = logging.getLogger(__name__)

RECORDS_LOST_TO_RETENTION = Counter(
    "waxstreams_records_lost_to_retention_total",
    "Records a resumed partition skipped because retention deleted them before they were read",
    ["topic", "partition"],
)


class StartOffsets:
    """The start offset of each partition of one source, from its snapshot or the `StartPosition`."""

    def __init__(self, start: StartPosition) -> None:
        self._start = start
        self._told_resumed = threading.Lock()  # held once the "setting ignored" line is out

    def resolve(self, internals: KafkaPartitionInternals, for_part: str, offset: int | None) -> tuple[int, int | None]:
        """(start offset, the partition's end as the broker gave it, None if it did not answer)."""
        consumer, tp = internals.consumer, internals.topic_partition()
        resumed = offset is not None
        try:
            low, high = query(lambda: consumer.get_watermark_offsets(tp, timeout=10), "watermarks")
        except KafkaUnavailable as exc:
            if resumed:  # auto.offset.reset=earliest still keeps retained records if it is gone
                log.warning("Kafka %s: log start unknown (%s); resuming at offset %s unchecked", for_part, exc, offset)
                return internals.next_offset, None
            msg = f"Kafka {for_part}: cannot read the partition's offsets: {exc}"
            raise KafkaUnavailable(msg) from None
        if resumed:
            if self._told_resumed.acquire(blocking=False):
                log.info(
                    "START_POSITION=%s applies only to partitions without recovery state; resumed partitions "
                    "(e.g. %s) continue from their snapshot offsets",
                    self._start,
                    for_part,
                )
            assert offset is not None
            # A logical offset (bytewax snapshots OFFSET_BEGINNING for a partition that never
            # read a record): nothing was read, so nothing can have been lost.
            position = low if offset < 0 else offset
            if position > high:
                # Not a gap we can measure: the topic was recreated or truncated.
                log.warning(
                    "Kafka %s: resume offset %d is past the partition's end %d (topic recreated?); "
                    "reading from the earliest record, %d",
                    for_part,
                    position,
                    high,
                    low,
                )
                return low, high
            return _not_below_log_start(for_part, tp, position, low, "resume offset"), high
        position = self._fresh(consumer, tp, for_part, low, high)
        log.info(
            "Kafka %s: no recovery state, starting at offset %d (START_POSITION=%s)", for_part, position, self._start
        )
        return position, high

    def _fresh(self, consumer: Any, tp: TopicPartition, for_part: str, low: int, high: int) -> int:
        kind = self._start.kind
        if kind == "earliest":
            return low
        if kind == "latest":
            return high
        try:
            if kind == "timestamp":
                at = TopicPartition(tp.topic, tp.partition, self._start.timestamp_ms or 0)
                [found] = query(lambda: consumer.offsets_for_times([at], timeout=10), "offsets for times")
                return found.offset if found.offset >= 0 else high  # -1: no record that late yet
            [committed] = query(lambda: consumer.committed([tp], timeout=10), "committed offsets")
        except KafkaUnavailable as exc:
            msg = f"Kafka {for_part}: cannot resolve START_POSITION={self._start}: {exc}"
            raise KafkaUnavailable(msg) from None
        if committed.offset < 0:
            log.info("Kafka %s: the consumer group has no committed offset; starting at the earliest record", for_part)
            return low
        return _not_below_log_start(for_part, tp, committed.offset, low, "group's committed offset")


def _not_below_log_start(for_part: str, tp: TopicPartition, offset: int, low: int, what: str) -> int:
    if offset >= low:
        return offset
    lost = low - offset
    log.warning(
        "Kafka %s: %d records lost to retention: the %s %d is below the log start %d (deleted before "
        "they were read); resuming at %d",
        for_part,
        lost,
        what,
        offset,
        low,
        low,
    )
    RECORDS_LOST_TO_RETENTION.labels(tp.topic, str(tp.partition)).inc(lost)
    return low


def stop_offset(internals: KafkaPartitionInternals, for_part: str, stop_at_ms: int) -> int:
    """The first offset at or past STOP_AT (the partition's end if nothing is that late yet)."""
    at = internals.topic_partition(stop_at_ms)
    try:
        [found] = query(lambda: internals.consumer.offsets_for_times([at], timeout=10), "offsets for times")
        return found.offset if found.offset >= 0 else end_offset(internals)
    except KafkaUnavailable as exc:
        msg = f"Kafka {for_part}: cannot resolve STOP_AT: {exc}"
        raise KafkaUnavailable(msg) from None


def end_offset(internals: KafkaPartitionInternals) -> int:
    """The partition's end now (its high watermark): where a bounded run stops at the latest."""
    return query(
        lambda: internals.consumer.get_watermark_offsets(internals.topic_partition(), timeout=10), "watermarks"
    )[1]
