"""One Kafka partition's reader: consumed batches handed to the step with its state, offsets
committed for lag tools, and a look-out for partitions added while the job runs.

bytewax's KafkaSource partition builds the consumer, reports lag and keeps the offset;
only the batch loop is ours: it hands librdkafka's messages to the step as columns
(`RecordBatch.of_messages`: one pass for the values, offsets only when a step asks),
instead of copying each into a `KafkaSourceMessage` first. That copy cost more than all
of the job's own per-event work (`make bench`, README).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException

from connectors.engine import KafkaPartitionInternals
from connectors.transports.batch import RecordBatch
from connectors.transports.kafka_lag import LagGauge
from connectors.transports.kafka_native import NativePartitionReader
from connectors.transports.kafka_retry import transient
from connectors.transports.progress import BoundedProgress

log = logging.getLogger(__name__)

# After a poll that found nothing, the partition sleeps this long: an idle job would
# otherwise wake every millisecond per partition, CPU an autoscaler reads as load.
IDLE_BACKOFF = timedelta(milliseconds=20)

_SYNC_COMMIT_RETRY_S = 10.0

X = TypeVar("X")
S = TypeVar("S")

# (partition id, its records in offset order, partition state) -> (items, new state)
BatchStep = Callable[[str, RecordBatch, S], tuple[list[X], S]]


class StatefulKafkaPartition(StatefulSourcePartition[X, tuple[int | None, S]], Generic[X, S]):
    def __init__(
        self,
        kafka_part: Any,
        part_id: str,
        step: BatchStep,
        state: S,
        commit_offsets: bool,
        stop_offset: int | None = None,
        progress: BoundedProgress | None = None,
        watch: PartitionWatch | None = None,
        native: NativePartitionReader | None = None,
        lag: LagGauge | None = None,
    ) -> None:
        self._kafka_part = kafka_part
        self._native = native  # KAFKA_READER=native: reads and commits instead of bytewax's consumer
        self._lag = lag  # with `native`: bytewax's lag gauge, which its consumer's statistics no longer set
        self._watch = watch  # partition 0 of each topic looks out for partitions added while running
        self._stop_offset = stop_offset  # STOP_AT: the first offset not to read
        self._progress = progress
        self._internals = KafkaPartitionInternals(kafka_part)
        self._part_id = part_id
        self._step = step
        self._state = state
        self._commit_offsets = commit_offsets
        self._coordinator_ready = False  # until one synchronous commit went through
        self._awake: datetime | None = None

    def next_batch(self) -> list[X]:
        # The built-in partition's own loop, without the per-message copy (its private
        # parts through connectors/engine.py).
        part = self._internals
        if part.at_end:
            raise StopIteration
        if self._watch is not None:
            self._watch.check(part.consumer)
        batch = self._read_native(part) if self._native is not None else self._read_messages(part)
        # At its end (bounded) the next call only stops the partition: at once, not after a sleep.
        self._awake = None if batch is not None or part.at_end else datetime.now(UTC) + IDLE_BACKOFF
        if batch is None:
            return []
        part.next_offset = int(batch.offset(len(batch) - 1)) + 1
        if self._progress is not None:
            self._progress.advance(self._part_id, part.next_offset)
        items, self._state = self._step(self._part_id, batch, self._state)
        return items

    def _read_messages(self, part: KafkaPartitionInternals) -> RecordBatch | None:
        messages = []
        for msg in part.consumer.consume(part.batch_size, 0.001):
            error = msg.error()
            if error is None:
                messages.append(msg)
            elif error.code() == ConfluentKafkaError._PARTITION_EOF:
                part.mark_end()  # bounded mode: stop after this batch
                break
            else:
                # A consumer-level error (e.g. broker unreachable), not an event:
                # librdkafka keeps retrying, so it is reported, not routed anywhere.
                log.warning("Kafka consumer error on %s: %s", self._part_id, error)
        if self._stop_offset is not None and messages and messages[-1].offset() >= self._stop_offset:  # type: ignore[operator]
            messages = [m for m in messages if m.offset() < self._stop_offset]  # type: ignore[operator]
            part.mark_end()
        return RecordBatch.of_messages(messages) if messages else None

    def _read_native(self, part: KafkaPartitionInternals) -> RecordBatch | None:
        read = self._native.read(part.batch_size, 0.001)  # type: ignore[union-attr]  # only when native
        if read.reached_end:
            part.mark_end()
        values, offsets, keys = read.values, read.offsets, read.keys
        if self._stop_offset is not None and len(offsets) and offsets[-1] >= self._stop_offset:
            kept = int(np.searchsorted(offsets, self._stop_offset))
            values, offsets, keys = values.head(kept), offsets[:kept], keys.head(kept)
            part.mark_end()
        if self._lag is not None:
            self._lag.update(self._native, int(offsets[-1]) + 1 if len(offsets) else part.next_offset)  # type: ignore[arg-type]
        if not len(offsets):
            return None
        return RecordBatch(part.topic, part.partition, values, offsets, keys)

    def next_awake(self) -> datetime | None:
        return self._awake

    def _commit(self, offset: int | None, asynchronous: bool) -> None:
        if not self._commit_offsets or offset is None or offset < 0:
            return
        # Only for monitoring (kafka-consumer-groups, Burrow, KEDA see the lag): resume
        # always starts from the offsets in bytewax's own snapshot, never from these.
        part = self._internals
        offsets = [part.topic_partition(offset)]
        # Synchronous commits (the first and the last) retry what the broker says is
        # passing, e.g. its coordinator still loading on a fresh cluster. Async commits
        # start only after that: librdkafka resends a refused one later, and a resent old
        # offset landing after the final commit left lag tools a stale offset (CI).
        asynchronous = asynchronous and self._coordinator_ready
        deadline = time.monotonic() + (0 if asynchronous else _SYNC_COMMIT_RETRY_S)
        while True:
            try:
                if self._native is not None:
                    self._native.commit(offset, asynchronous)
                else:
                    part.consumer.commit(offsets=offsets, asynchronous=asynchronous)
                self._coordinator_ready = True
                return
            except KafkaException as exc:
                if transient(exc) and time.monotonic() < deadline:
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
        if self._native is not None:
            self._native.close()
        self._kafka_part.close()


class PartitionWatch:
    """Partitions added to a topic while the job runs: bytewax reads a fixed list, so say so once."""

    def __init__(self, topic: str, known: int, every_s: float) -> None:
        self._topic, self._known, self._every_s = topic, known, every_s
        self._next = time.monotonic() + every_s
        self._told = False

    def check(self, consumer: Any) -> None:
        if self._told or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._every_s
        try:
            count = len(consumer.list_topics(self._topic, timeout=1).topics[self._topic].partitions)
        except (KafkaException, KeyError):
            return  # looked again at the next check
        if count > self._known:
            self._told = True
            log.warning(
                "Kafka topic %s now has %d partitions, this run reads %d: restart the job to read the new ones "
                "(they start at START_POSITION; the others resume from their snapshots)",
                self._topic,
                count,
                self._known,
            )
