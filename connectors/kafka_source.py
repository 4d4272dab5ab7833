"""bytewax's built-in KafkaSource with a per-partition stateful step inside the source.

Like a Flink Kafka source with a per-partition watermark strategy: each consumed batch
is handed, in offset order, to a function that also gets and returns that partition's
state, and that state is snapshotted together with the partition's offset. So after a
resume, the state and the offset always describe the same point of the partition.

bytewax's KafkaSource builds the consumer, lists and assigns partitions, reports lag
and keeps the offset; only the batch loop is ours: it hands librdkafka's messages to
the step as they are, instead of copying each into a `KafkaSourceMessage` first. That
copy cost more than all of the job's own per-event work (`make bench`, README).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)

_SYNC_COMMIT_RETRY_S = 10.0

X = TypeVar("X")
S = TypeVar("S")

# (partition id, confluent_kafka.Message list in offset order, partition state) -> (items, new state)
BatchStep = Callable[[str, list[Message], S], tuple[list[X], S]]


class _Partition(StatefulSourcePartition[X, tuple[int | None, S]], Generic[X, S]):
    def __init__(self, kafka_part: Any, part_id: str, step: BatchStep, state: S, commit_offsets: bool) -> None:
        self._kafka_part = kafka_part
        self._part_id = part_id
        self._step = step
        self._state = state
        self._commit_offsets = commit_offsets
        self._coordinator_ready = False  # until one synchronous commit went through

    def next_batch(self) -> list[X]:
        # The built-in partition's own loop, without the per-message copy. It keeps its
        # consumer, batch size, EOF flag and next offset in attributes that bytewax 0.21.1
        # (pinned) does not make public; its snapshot() and lag metrics read `_offset`.
        part = self._kafka_part
        if part._eof:
            raise StopIteration
        messages = []
        for msg in part._consumer.consume(part._batch_size, 0.001):
            error = msg.error()
            if error is None:
                messages.append(msg)
            elif error.code() == ConfluentKafkaError._PARTITION_EOF:
                part._eof = True  # bounded mode: stop after this batch
                break
            else:
                # A consumer-level error (e.g. broker unreachable), not an event:
                # librdkafka keeps retrying, so it is reported, not routed anywhere.
                log.warning("Kafka consumer error on %s: %s", self._part_id, error)
        if not messages:
            return []
        part._offset = messages[-1].offset() + 1
        items, self._state = self._step(self._part_id, messages, self._state)
        return items

    def next_awake(self) -> datetime | None:
        return self._kafka_part.next_awake()

    def _commit(self, offset: int | None, asynchronous: bool) -> None:
        if not self._commit_offsets or offset is None or offset < 0:
            return
        # Only for monitoring (kafka-consumer-groups, Burrow, KEDA see the lag): resume
        # always starts from the offsets in bytewax's own snapshot, never from these.
        part = self._kafka_part
        offsets = [TopicPartition(part._topic, part._part_idx, offset)]
        # Synchronous commits (the first and the last) retry what the broker says is
        # passing, e.g. its coordinator still loading on a fresh cluster. Async commits
        # start only after that: librdkafka resends a refused one later, and a resent old
        # offset landing after the final commit left lag tools a stale offset (CI).
        asynchronous = asynchronous and self._coordinator_ready
        deadline = time.monotonic() + (0 if asynchronous else _SYNC_COMMIT_RETRY_S)
        while True:
            try:
                part._consumer.commit(offsets=offsets, asynchronous=asynchronous)
                self._coordinator_ready = True
                return
            except KafkaException as exc:
                if _passing(exc) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                log.warning("could not commit offsets of %s for monitoring: %s", self._part_id, exc)
                return

    def snapshot(self) -> tuple[int | None, S]:
        offset = self._kafka_part.snapshot()
        self._commit(offset, asynchronous=True)
        return offset, self._state

    def close(self) -> None:
        self._commit(self._kafka_part.snapshot(), asynchronous=False)  # an async one may not be sent yet
        self._kafka_part.close()


_PASSING_COMMIT_ERRORS = {
    ConfluentKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    ConfluentKafkaError.COORDINATOR_NOT_AVAILABLE,
    ConfluentKafkaError.NOT_COORDINATOR,
    ConfluentKafkaError.REQUEST_TIMED_OUT,
    ConfluentKafkaError._WAIT_COORD,
    ConfluentKafkaError._TRANSPORT,
    ConfluentKafkaError._TIMED_OUT,
}


def _passing(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, ConfluentKafkaError) and (error.retriable() or error.code() in _PASSING_COMMIT_ERRORS)


class StatefulKafkaSource(FixedPartitionedSource[X, tuple[int | None, S]], Generic[X, S]):
    """Reads `kafka` and runs `step` on every batch of every partition, keeping its state."""

    def __init__(self, kafka: KafkaSource, step: BatchStep, initial_state: S, commit_offsets: bool = False) -> None:
        """`commit_offsets`: also commit each snapshot's offsets to the `group.id` of kafka's config."""
        self._kafka = kafka
        self._step = step
        self._initial_state = initial_state
        self._commit_offsets = commit_offsets

    def list_parts(self) -> list[str]:
        return self._kafka.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int | None, S] | None) -> _Partition[X, S]:
        offset, state = resume_state if resume_state is not None else (None, self._initial_state)
        kafka_part = self._kafka.build_part(step_id, for_part, offset)
        return _Partition(kafka_part, for_part, self._step, state, self._commit_offsets)


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached or a topic is missing; the message names the fix."""


def check_topics(brokers: list[str], client_config: dict[str, str], topics: list[str], timeout: float = 10.0) -> None:
    """Fail fast at start with one clear line instead of a consumer that waits forever."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": ",".join(brokers), **client_config, "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException:
        msg = f"cannot reach Kafka at {','.join(brokers)}: start it (make up) or fix KAFKA_BROKERS"
        raise KafkaUnavailable(msg) from None
    missing = [t for t in topics if t not in existing]
    if missing:
        msg = (
            f"Kafka topic(s) {', '.join(missing)} do not exist on {','.join(brokers)}: "
            "create them or fix the topic settings"
        )
        raise KafkaUnavailable(msg)
