"""bytewax's `bytewax_kafka_consumer_lag` gauge for the partitions the native reader reads.

bytewax sets the gauge from its own consumer's librdkafka statistics (every statistics.interval.ms:
the partition's end on the broker minus the offset read next). The native reader replaces that
consumer and takes no statistics, so each of its reads sets the same gauge, with the same labels,
from the high watermark its librdkafka caches from every fetch response (no broker round trip).
bytewax's end is the last stable offset: the same, except that records of a transaction still
open count here and not there.
"""

from __future__ import annotations

import logging

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from confluent_kafka import KafkaException

from connectors.transports.kafka_native import NativePartitionReader

log = logging.getLogger(__name__)


def lag(high: int, position: int) -> int | None:
    """Records from `position` (the offset read next) to the partition's end `high` (the offset the
    next record gets); None while either is unknown (librdkafka's logical offsets are negative)."""
    if high < 0 or position < 0:
        return None
    return high - position


class LagGauge:
    """The gauge of one partition (bytewax's labels: the input step, the topic, the partition)."""

    def __init__(self, step_id: str, topic: str, partition: int) -> None:
        self._gauge = BYTEWAX_CONSUMER_LAG_GAUGE.labels(step_id=step_id, topic=topic, partition=partition)
        self._name = f"{topic}[{partition}]"
        self._failed = False

    def update(self, reader: NativePartitionReader, position: int) -> None:
        try:
            high = reader.watermarks()[1]
        except KafkaException as exc:  # a metric never stops the job
            if not self._failed:
                self._failed = True
                log.warning("the Kafka lag gauge of %s is not updated: %s", self._name, exc)
            return
        value = lag(high, position)
        if value is not None:
            self._gauge.set(value)
