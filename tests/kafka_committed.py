"""Reading an output topic the way its readers must: `read_committed`, to the end.

The jobs' Kafka outputs are transactional (connectors/transports/kafka_sink.py): each
partition ends in a commit marker, which no consumer receives, so reading until a record
at `end - 1` never ends; end-of-partition events (at the last stable offset) do.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def read_committed(bootstrap: str, topic: str, timeout: float = 60) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                error = msg.error()
                if error is None:
                    out.append((msg.key(), msg.value()))
                    at_end.discard(msg.partition())  # EOF comes again after later records
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())  # type: ignore[arg-type]
        assert len(at_end) == len(partitions), f"could not read {topic} to its end"
        return out
    finally:
        consumer.close()
