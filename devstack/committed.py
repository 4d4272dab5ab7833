"""Read a topic as the jobs' readers must read their transactional outputs: `read_committed`,
to the end-of-partition events (a partition's last offset may be a commit marker, which no
consumer receives, so offsets do not say where the records end)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.transports.kafka_control import NOT_READY


def read_committed(
    brokers: str, topic: str, on_record: Callable[[int, bytes | None, bytes | None], None], timeout: float = 60
) -> list[int]:
    """Call `on_record(partition, key, value)` for every committed record of `topic`, in each
    partition's order, up to its current end; raises TimeoutError if a partition's end is not
    reached within `timeout` seconds. Returns the topic's partitions."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"read-committed-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                error, partition = msg.error(), msg.partition()
                if error is None:
                    on_record(partition, msg.key(), msg.value())  # type: ignore[arg-type]
                    at_end.discard(partition)  # type: ignore[arg-type]  # an end seen before later records came
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)  # type: ignore[arg-type]
                elif error.code() not in NOT_READY:  # a fresh topic's partitions may still be placed
                    raise KafkaException(error)
        if len(at_end) < len(partitions):
            msg = f"could not read {topic} to its end within {timeout} s"
            raise TimeoutError(msg)
        return list(partitions)
    finally:
        consumer.close()
