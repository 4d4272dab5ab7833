"""The broker queries a Kafka partition's start makes: the bounded run's progress end reuses the start's watermarks."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from connectors.transports.kafka_source import StatefulKafkaSource
from connectors.transports.kafka_start_position import EARLIEST
from connectors.transports.progress import BoundedProgress

OFFSET_BEGINNING = -2  # what bytewax's partition holds before its first read


class WatermarkConsumer:
    """Answers watermark queries (after `failures` refusals) and counts them."""

    def __init__(self, low: int, high: int, failures: int = 0) -> None:
        self.low, self.high, self.failures = low, high, failures
        self.watermark_queries = 0
        self.assigned: list[int] = []

    def get_watermark_offsets(self, tp, timeout: float) -> tuple[int, int]:
        self.watermark_queries += 1
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
        return self.low, self.high

    def assign(self, partitions) -> None:
        self.assigned += [tp.offset for tp in partitions]


class KafkaPart:
    """The private attributes of bytewax's `_KafkaSourcePartition` that connectors/engine.py reads."""

    _topic, _part_idx, _batch_size, _eof = "impressions", 0, 100, False

    def __init__(self, consumer: WatermarkConsumer, offset: int | None) -> None:
        self._consumer = consumer
        self._offset = OFFSET_BEGINNING if offset is None else offset

    def close(self) -> None:
        pass


class Kafka:
    _add_config: dict[str, str] = {}

    def __init__(self, consumer: WatermarkConsumer) -> None:
        self.consumer = consumer

    def build_part(self, step_id: str, for_part: str, offset: int | None) -> KafkaPart:
        return KafkaPart(self.consumer, offset)


def bounded_start(consumer: WatermarkConsumer, resume_offset: int | None) -> BoundedProgress:
    progress = BoundedProgress(clock=lambda: 0.0)
    source = StatefulKafkaSource(
        Kafka(consumer), lambda p, m, s: ([], s), None, start=EARLIEST, progress=progress, partition_check_s=0
    )
    resume_state = None if resume_offset is None else (resume_offset, None)
    source.build_part("kafka_in", "0-impressions", resume_state)
    return progress


def test_a_bounded_partition_asks_the_broker_for_its_watermarks_once() -> None:
    consumer = WatermarkConsumer(low=20, high=120)
    progress = bounded_start(consumer, None)
    assert consumer.assigned == [20]
    assert progress.line(1.0).startswith("progress: 0 of 100 events")  # from the log start to the end
    assert consumer.watermark_queries == 1


def test_the_end_is_asked_again_when_the_starts_query_failed() -> None:
    # A resumed partition starts at its snapshot unchecked when the watermarks are refused;
    # the progress line still needs the end, so that query is the one made again.
    consumer = WatermarkConsumer(low=20, high=120, failures=1)
    progress = bounded_start(consumer, 70)
    assert consumer.assigned == []
    assert progress.line(1.0).startswith("progress: 0 of 50 events")
    assert consumer.watermark_queries == 2
