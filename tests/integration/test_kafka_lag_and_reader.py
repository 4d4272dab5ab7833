"""bytewax's `bytewax_kafka_consumer_lag` gauge with either Kafka reader, and KAFKA_READER=auto in a
job, against the real broker. The gauge is judged against the broker's end offset (asked with a
query of its own) minus the offset after the last record the step was given.

The native reader is optional (built by `make install` when cargo is on PATH): its tests are
skipped without cargo, and fail with cargo and no extension, as in test_native_reader.py.
"""

from __future__ import annotations

import shutil
import time
import uuid
from typing import Any

import polars as pl
import pytest
from bytewax.connectors.kafka import KafkaSource
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Consumer, Producer, TopicPartition
from polars.testing import assert_frame_equal
from prometheus_client import REGISTRY

from connectors.engine import KafkaPartitionInternals
from connectors.recovery_store.resume import Resume
from connectors.transports import kafka_native
from connectors.transports.batch import RecordBatch
from connectors.transports.kafka_native import NativePartitionReader
from connectors.transports.kafka_partition import StatefulKafkaPartition
from connectors.transports.kafka_source import StatefulKafkaSource
from dataflows import movie_impressions, skeleton
from dataflows.settings import MovieImpressionsSettings
from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import make_topics
from tests.support.oracles import expected_rows

STEP = "lag_in"
_MISSING = kafka_native.unavailable()


@pytest.fixture
def native_built() -> None:
    if _MISSING is not None and shutil.which("cargo") is None:
        pytest.skip(f"no Rust toolchain, so no native reader: {_MISSING}")
    assert _MISSING is None, _MISSING


def _topic(kafka, records: int) -> str:
    name = f"lag-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, name, partitions=1)
    _produce(kafka.bootstrap, name, 0, records)
    return name


def _produce(bootstrap: str, topic: str, first: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(first, first + count):
        producer.produce(topic, f"r{i}".encode(), partition=0)
    assert producer.flush(30) == 0


def _end_offset(bootstrap: str, topic: str) -> int:
    """The independent expectation's end: the broker's high watermark, asked with a query of its own."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        return int(probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        probe.close()


def _gauge(topic: str) -> float | None:
    labels = {"step_id": STEP, "topic": topic, "partition": "0"}  # bytewax's labels
    return REGISTRY.get_sample_value("bytewax_kafka_consumer_lag", labels)


class Seen:
    """The step: remembers the offset after the last record it was given."""

    def __init__(self) -> None:
        self.position = 0

    def __call__(self, part: str, batch: RecordBatch, state: None) -> tuple[list[Any], None]:
        offsets = [batch.offset(i) for i in range(len(batch))]
        assert offsets == list(range(self.position, self.position + len(batch)))  # none skipped, none twice
        self.position += len(batch)
        return offsets, state


def _partition(kafka, topic: str, seen: Seen, native: bool) -> StatefulKafkaPartition:
    config = {"group.id": f"lag-{uuid.uuid4().hex[:8]}"}
    kafka_source = KafkaSource([kafka.bootstrap], [topic], tail=True, add_config=config, batch_size=10)
    source = StatefulKafkaSource(kafka_source, seen, None, native=native, partition_check_s=0)
    return source.build_part(STEP, f"0-{topic}", None)


def _read_some(partition: StatefulKafkaPartition, seen: Seen, until: int) -> None:
    deadline = time.monotonic() + 30
    while seen.position < until:
        assert time.monotonic() < deadline, f"read up to {seen.position} of {until} in 30 s"
        partition.next_batch()


def test_confluent_kafkas_reader_sets_the_lag_gauge(kafka) -> None:
    """bytewax's own: from its consumer's statistics, every second, while the partition is polled."""
    topic = _topic(kafka, 1000)
    seen = Seen()
    partition = _partition(kafka, topic, seen, native=False)
    try:
        _read_some(partition, seen, until=1)
        consumer = KafkaPartitionInternals(partition._kafka_part).consumer
        consumer.pause([TopicPartition(topic, 0)])  # polled on, nothing more read: the position stays
        expected = _end_offset(kafka.bootstrap, topic) - seen.position
        assert 0 < expected < 1000
        deadline = time.monotonic() + 30
        while _gauge(topic) != expected:
            assert time.monotonic() < deadline, f"lag gauge {_gauge(topic)}, expected {expected}"
            assert partition.next_batch() == []
            time.sleep(0.05)  # the poll's pace; the statistics come every second
    finally:
        partition.close()


def test_the_native_reader_sets_the_same_gauge_after_every_read(kafka, native_built) -> None:
    topic = _topic(kafka, 1000)
    seen = Seen()
    partition = _partition(kafka, topic, seen, native=True)
    try:
        _read_some(partition, seen, until=1)
        assert 0 < seen.position < 1000
        assert _gauge(topic) == _end_offset(kafka.bootstrap, topic) - seen.position

        _read_some(partition, seen, until=1000)
        assert _gauge(topic) == _end_offset(kafka.bootstrap, topic) - seen.position == 0

        _produce(kafka.bootstrap, topic, 1000, 500)  # the end moves on while the job reads
        _read_some(partition, seen, until=1001)
        assert seen.position < 1500
        assert _gauge(topic) == _end_offset(kafka.bootstrap, topic) - seen.position
    finally:
        partition.close()


def test_a_job_with_auto_reads_through_the_native_reader(kafka, native_built, monkeypatch) -> None:
    """The movie-impressions job in this process, its settings and transport from the environment
    as a run builds them: with KAFKA_READER=auto, every record goes through the native reader."""
    run = uuid.uuid4().hex[:8]
    topics = {"IMPRESSIONS_TOPIC": f"in-{run}", "DEAD_LETTER_TOPIC": f"dead-{run}", "LATE_TOPIC": f"late-{run}"}
    make_topics(kafka, *topics.values(), partitions=2)
    events = list(generate(TrafficShape(count=3000, movies=6, users=20, step_ms=1000, seed=3)))
    produce(iter(events), kafka.bootstrap, topics["IMPRESSIONS_TOPIC"])
    read_natively: list[int] = []
    real_read = NativePartitionReader.read

    def read(self: NativePartitionReader, max_messages: int, timeout_s: float) -> Any:
        got = real_read(self, max_messages, timeout_s)
        read_natively.append(len(got))
        return got

    monkeypatch.setattr(NativePartitionReader, "read", read)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "BOUNDED": "true", "KAFKA_READER": "auto", **topics}
    settings = MovieImpressionsSettings.from_env(env)
    assert settings.kafka is not None and (settings.kafka.reader, settings.kafka.reader_note) == ("native", "")
    transport = skeleton.transport_for(settings, env, movie_impressions.JOB, Resume.without_store())
    written: list[Any] = []

    run_main(movie_impressions.build_flow(settings, transport, TestingSink(written)))

    assert sum(read_natively) == len(events)
    rows = pl.concat([object_rows.rows for _, object_rows in written])
    assert_frame_equal(
        rows.sort("movieId", "userId", "windowStart").drop("object", strict=False), expected_rows(events)
    )
