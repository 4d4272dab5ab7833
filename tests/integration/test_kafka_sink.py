"""The Kafka topic sink against the real broker: delivered by the epoch's end, in key order, or the job stops."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.transports.kafka_sink import PARTS, KafkaDeliveryError, KafkaTopicSink
from tests.conftest import make_topics, read_partitions

pytestmark = pytest.mark.integration


def test_records_are_in_kafka_when_the_snapshot_returns_each_key_in_order(kafka) -> None:
    topic = f"sink-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, topic, partitions=3)
    sink = KafkaTopicSink([kafka.bootstrap], topic, {})
    assert len(sink.list_parts()) == PARTS
    parts = [sink.build_part("out", name, None) for name in sink.list_parts()]
    records = [(f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(5_000)]
    for start in range(0, len(records), 1_000):  # batches spread over the partitions
        parts[start // 1_000 % PARTS].write_batch(records[start : start + 1_000])
    parts[0].snapshot()  # no waiting for anything else: the snapshot is the delivery barrier

    written = [record for partition in read_partitions(kafka.bootstrap, topic).values() for record in partition]
    assert sorted(written) == sorted(records)
    for key in {k for k, _ in records}:
        assert [v for k, v in written if k == key] == [v for k, v in records if k == key]
    for part in parts:
        part.close()


def test_a_record_the_broker_refuses_stops_the_job_with_one_line_naming_the_topic(kafka) -> None:
    topic = f"sink-small-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.setup_bootstrap})
    [future] = admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "2000"})]).values()
    future.result(timeout=30)
    sink = KafkaTopicSink([kafka.bootstrap], topic, {})
    part = sink.build_part("out", "p0", None)
    part.write_batch([(b"k", b"x" * 10_000), (b"k", b"fits")])

    with pytest.raises(KafkaDeliveryError) as raised:
        part.snapshot()
    message = str(raised.value)
    assert "\n" not in message
    assert f"Kafka topic {topic}" in message and "MSG_SIZE_TOO_LARGE" in message
    assert "raise the topic's max.message.bytes" in message
    part.close()  # the job is already stopping: closing neither waits nor raises again


def test_a_record_over_the_clients_limit_stops_the_job_with_one_line(kafka) -> None:
    topic = f"sink-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, topic, partitions=1)
    sink = KafkaTopicSink([kafka.bootstrap], topic, {"message.max.bytes": "1000"})
    part = sink.build_part("out", "p0", None)

    with pytest.raises(KafkaDeliveryError, match=f"^Kafka topic {topic}: .*MSG_SIZE_TOO_LARGE.*message.max.bytes"):
        part.write_batch([(b"k", b"x" * 5_000)])
    part.close()
