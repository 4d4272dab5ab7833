"""A bytewax sink writing `(key, value)` records to one Kafka topic, at least once.

    op.output("out", records, KafkaTopicSink(brokers, "alerts", client_config))

bytewax's own KafkaSink waits for every batch to be delivered (a broker round trip on
the worker's thread per batch, so a few dead letters a batch slowed the whole job) and
drops a record whose delivery fails (it asks for no delivery reports). This one sends
in the background and waits for delivery at the end of each epoch, in `snapshot`, so
the epoch commits only once its records are in Kafka. A failed write stops the job with
one line naming the topic, the cause and the fix; the restart replays the epoch and
sends its records again: at least once, never silently dropped. During a broker outage
the job reads on until the epoch ends, then waits there (librdkafka retries for up to
`message.timeout.ms`).

Records are routed to `PARTS` sink partitions by key and the producer is idempotent, so
a key's records stay in order, retries included; the partitions of one process share
one producer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger(__name__)

PARTS = 4  # sink partitions per output: at most this many workers write one topic
_QUEUE_FULL_WAIT_S = 0.1


class KafkaDeliveryError(RuntimeError):
    """A record could not be delivered; the message names the topic, the cause and the fix."""


# What to do about a failed delivery, by librdkafka's error name; else the general advice.
_FIXES = {
    "MSG_SIZE_TOO_LARGE": "raise the topic's max.message.bytes (and message.max.bytes in KAFKA_PROPERTIES)",
    "_MSG_TIMED_OUT": "the broker could not be reached for message.timeout.ms: check KAFKA_BROKERS and the broker",
    "TOPIC_AUTHORIZATION_FAILED": "grant this job's principal WRITE on the topic",
    "CLUSTER_AUTHORIZATION_FAILED": "grant this job's principal IDEMPOTENT_WRITE on the cluster",
    "UNKNOWN_TOPIC_OR_PART": "create the topic or fix the topic setting",
}


def delivery_failure(topic: str, error: KafkaError | KafkaException) -> str:
    """The one line a failed write stops the job with: the topic, the cause and the fix."""
    cause: KafkaError = error.args[0] if isinstance(error, KafkaException) else error
    fix = _FIXES.get(cause.name(), "fix the topic, its ACLs or the broker")
    return (
        f"Kafka topic {topic}: a record could not be written ({cause.name()}: {cause.str()}): {fix}, then restart "
        "(the restart writes the epoch's records again)"
    )


class _SharedProducer:
    """One producer for the partitions of one process, and the delivery failures."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self.topic = topic
        failures: list[str] = []  # not a bound method in the producer: no cycle keeps it alive

        def delivered(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                failures.append(delivery_failure(topic, error))

        self._failures = failures
        self.failed = False  # raised once: the job is stopping, later closes neither wait nor raise again
        # Idempotent: a retried request can neither repeat nor reorder a key's records.
        settings = {"enable.idempotence": True, **config, "delivery.report.only.error": True}
        self.producer = Producer({**settings, "on_delivery": delivered})

    def produce(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key)
                break
            except BufferError:  # librdkafka's local queue is full: let it drain
                self.producer.poll(_QUEUE_FULL_WAIT_S)
            except KafkaException as exc:  # refused before sending, e.g. over the client's message.max.bytes
                self._failures.append(delivery_failure(self.topic, exc))
                self._raise()
        self.producer.poll(0)  # serves delivery reports

    def flush(self) -> None:
        """Returns once every record produced so far is in Kafka; raises if any could not be."""
        if self.failed:
            return
        self.producer.flush()
        if self._failures:
            self._raise()

    def _raise(self) -> None:
        self.failed = True
        log.error("%s", self._failures[0])  # a raising snapshot may abort the process without a word
        raise KafkaDeliveryError(self._failures[0])


class _Part(StatefulSinkPartition[tuple[bytes | None, bytes], None]):
    def __init__(self, shared: _SharedProducer, release: Callable[[], None]) -> None:
        self._shared = shared
        self._release = release

    def write_batch(self, values: list[tuple[bytes | None, bytes]]) -> None:
        for key, value in values:
            self._shared.produce(key, value)

    def snapshot(self) -> None:
        self._shared.flush()

    def close(self) -> None:
        try:
            self._shared.flush()
        finally:
            self._release()


class KafkaTopicSink(FixedPartitionedSink[tuple[bytes | None, bytes], None]):
    """Items: `(routing key, (key, value))`, the routing key a str of the record's key."""

    def __init__(self, brokers: list[str], topic: str, client_config: dict[str, Any]) -> None:
        self._config = {"bootstrap.servers": ",".join(brokers), **client_config}
        self._topic = topic
        self._shared: _SharedProducer | None = None
        self._open_parts = 0
        self._lock = threading.Lock()  # the workers of a process build and close their partitions in parallel

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(PARTS)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        with self._lock:
            if self._shared is None:
                self._shared = _SharedProducer(self._config, self._topic)
            self._open_parts += 1
            return _Part(self._shared, self._release)

    def _release(self) -> None:
        """The last partition closed: drop the producer (its connections and threads)."""
        with self._lock:
            self._open_parts -= 1
            if self._open_parts == 0:
                self._shared = None
