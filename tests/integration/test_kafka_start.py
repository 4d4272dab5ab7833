"""Where a Kafka partition starts, against the real broker: retention, START_POSITION, resume."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import pytest
from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from connectors.transports.batch import RecordBatch
from connectors.transports.kafka import partition_names
from connectors.transports.kafka_control import KafkaSinkError, ask_max_message_bytes, topic_max_message_bytes
from connectors.transports.kafka_source import StatefulKafkaSource
from connectors.transports.kafka_start_position import EARLIEST, StartPosition
from connectors.transports.kafka_startup_check import KafkaUnavailable, check_and_describe
from tests.support.data import make_topics

BASE_MS = 1_546_844_400_000  # record i has timestamp BASE_MS + i * 1000
COUNT = 100
SOURCE_LOG = "connectors.transports.kafka_offsets"


def offsets_and_values(part_id: str, batch: RecordBatch, state: None) -> tuple[list[tuple[int, bytes]], None]:
    return [(batch.offset(i), batch.value(i)) for i in range(len(batch))], state


def produce_numbered(bootstrap: str, topic: str, partition: int, first: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(first, first + count):
        producer.produce(topic, f"r{i}".encode(), partition=partition, timestamp=BASE_MS + i * 1000)
    assert producer.flush(30) == 0


@pytest.fixture
def topic(kafka) -> str:
    name = f"start-{uuid.uuid4().hex[:8]}"
    make_topics(kafka, name, partitions=2)
    produce_numbered(kafka.bootstrap, name, 0, 0, COUNT)
    return name


def source(kafka, topic: str, start: StartPosition = EARLIEST, group: str | None = None) -> StatefulKafkaSource:
    config = {"group.id": group} if group else None
    kafka_source = KafkaSource([kafka.bootstrap], [topic], tail=False, add_config=config, batch_size=7)
    return StatefulKafkaSource(kafka_source, offsets_and_values, None, commit_offsets=False, start=start)


def read(src: StatefulKafkaSource, part: str, resume_state=None) -> tuple[list[tuple[int, bytes]], int | None]:
    """Everything up to the end of the partition, and the offset snapshotted after it."""
    partition = src.build_part("kafka_in", part, resume_state)
    out: list = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                out += partition.next_batch()
            except StopIteration:
                return out, partition.snapshot()[0]
        msg = f"did not reach the end of {part}"
        raise AssertionError(msg)
    finally:
        partition.close()


def numbered(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(i, f"r{i}".encode()) for i in range(first, last)]


def lost_to_retention(topic: str, partition: int) -> float:
    labels = {"topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("waxstreams_records_lost_to_retention_total", labels) or 0.0


def test_a_resume_below_the_log_start_reads_everything_still_there_and_counts_the_gap(kafka, topic, caplog) -> None:
    snapshot_offset, log_start = 10, 40
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, log_start)]).values():
        future.result(timeout=30)  # what retention does: records below 40 are gone

    caplog.set_level(logging.INFO, logger=SOURCE_LOG)
    records, after = read(source(kafka, topic), f"0-{topic}", (snapshot_offset, None))

    assert records == numbered(log_start, COUNT)  # from the new log start to the end, none skipped
    assert after == COUNT
    assert lost_to_retention(topic, 0) == log_start - snapshot_offset
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == SOURCE_LOG]
    assert len(warnings) == 1, warnings
    assert f"0-{topic}: 30 records lost to retention" in warnings[0] and "resuming at 40" in warnings[0]


def test_a_resumed_partition_follows_its_snapshot_whatever_the_start_position(kafka, topic, caplog) -> None:
    caplog.set_level(logging.INFO, logger=SOURCE_LOG)
    records, _ = read(source(kafka, topic, StartPosition.parse("latest")), f"0-{topic}", (25, None))
    assert records == numbered(25, COUNT)
    assert lost_to_retention(topic, 0) == 0
    notes = [
        r.getMessage() for r in caplog.records if "applies only to partitions without recovery state" in r.getMessage()
    ]
    assert len(notes) == 1 and notes[0].startswith("START_POSITION=latest")


@pytest.mark.parametrize(
    "written", ["2019-01-07T07:00:57.500Z", "2019-01-07T08:00:57.500+01:00", str(BASE_MS + 57_500)]
)
def test_timestamp_starts_at_the_first_record_at_or_after_it(kafka, topic, written: str) -> None:
    # Record i is stamped BASE_MS + i s: the first at or after BASE_MS + 57.5 s is record 58.
    start = StartPosition.parse(f"timestamp:{written}")
    records, _ = read(source(kafka, topic, start), f"0-{topic}")
    assert records == numbered(58, COUNT)


def test_a_timestamp_after_the_last_record_starts_at_the_end_and_misses_nothing_later(kafka, topic) -> None:
    later = datetime.fromtimestamp((BASE_MS + COUNT * 1000 + 5_000) / 1000, UTC).isoformat()
    src = source(kafka, topic, StartPosition.parse(f"timestamp:{later}"))
    records, after = read(src, f"0-{topic}")
    assert records == [] and after == COUNT  # a concrete offset: a resume will not jump to a new end
    produce_numbered(kafka.bootstrap, topic, 0, COUNT, 5)
    again, _ = read(src, f"0-{topic}", (after, None))
    assert again == numbered(COUNT, COUNT + 5)


def test_latest_starts_at_the_end(kafka, topic) -> None:
    records, after = read(source(kafka, topic, StartPosition.parse("latest")), f"0-{topic}")
    assert records == [] and after == COUNT


def test_group_starts_at_the_groups_committed_offsets(kafka, topic) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce_numbered(kafka.bootstrap, topic, 1, 0, 20)
    committer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 30
        while True:  # a fresh broker's group coordinator may still be loading
            try:
                committer.commit(offsets=[TopicPartition(topic, 0, 63)], asynchronous=False)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        committer.close()

    src = source(kafka, topic, StartPosition.parse("group"), group=group)
    committed, _ = read(src, f"0-{topic}")
    assert committed == numbered(63, COUNT)
    never_committed, _ = read(src, f"1-{topic}")  # no offset in the group: from the earliest record
    assert never_committed == numbered(0, 20)


def test_a_resume_past_the_end_of_a_recreated_topic_reads_it_from_the_start(kafka, topic, caplog) -> None:
    caplog.set_level(logging.INFO, logger=SOURCE_LOG)
    records, _ = read(source(kafka, topic), f"0-{topic}", (5_000, None))  # the old topic had reached 5,000
    assert records == numbered(0, COUNT)
    assert any("resume offset 5000 is past the partition's end 100" in r.getMessage() for r in caplog.records)


def test_the_start_check_lists_each_topics_partitions_as_bytewax_does(kafka, topic) -> None:
    # The job reads the check's listing instead of asking again (KafkaTransport.partitions).
    listed = check_and_describe([kafka.bootstrap], {}, [topic]).partitions
    bytewax_lists = KafkaSource([kafka.bootstrap], [topic]).list_parts()
    assert partition_names([topic], listed) == bytewax_lists == [f"0-{topic}", f"1-{topic}"]


def test_the_start_check_asks_the_output_limits_as_each_topic_has_them(kafka, topic) -> None:
    small = f"{topic}-small"
    admin = AdminClient({"bootstrap.servers": kafka.setup_bootstrap})
    admin.create_topics([NewTopic(small, 1, 1, config={"max.message.bytes": "20000"})])[small].result(30)
    checked = check_and_describe([kafka.bootstrap], {}, [topic, small], limits_of=[topic, small])
    assert checked.partitions == {topic: [0, 1], small: [0]}
    assert checked.max_message_bytes == {small: 20_000, topic: topic_max_message_bytes(kafka.bootstrap, {}, topic)}
    assert checked.max_message_bytes[topic] != 20_000  # the broker's default


def test_a_missing_output_topic_is_still_the_missing_topic_line(kafka, topic) -> None:
    gone = f"{topic}-gone"
    with pytest.raises(KafkaUnavailable, match=f"Kafka topic\\(s\\) {gone} do not exist"):
        check_and_describe([kafka.bootstrap], {}, [topic, gone], limits_of=[gone])


def test_an_output_limit_the_broker_refuses_is_one_line_naming_the_fix(kafka, topic) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    answer = ask_max_message_bytes(admin, [f"{topic}-gone"])  # refused: no such topic
    with pytest.raises(KafkaSinkError, match=f"Kafka output topic {topic}-gone: .*grant the job DESCRIBE_CONFIGS"):
        answer(30)
