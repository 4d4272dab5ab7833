"""bytewax's built-in KafkaSource with a per-partition stateful step inside the source.

Like a Flink Kafka source with a per-partition watermark strategy: each consumed batch
is handed, in offset order, to a function that also gets and returns that partition's
state, and that state is snapshotted together with the partition's offset. So after a
resume, the state and the offset always describe the same point of the partition.

bytewax's KafkaSource lists and assigns partitions; each partition starts at a concrete
offset (kafka_offsets.py) and is read by kafka_partition.py.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource

from connectors.engine import KafkaPartitionInternals, add_source_config, consumer_config, list_parts_quietly
from connectors.transports.kafka_lag import LagGauge
from connectors.transports.kafka_native import NativePartitionReader
from connectors.transports.kafka_offsets import StartOffsets, end_offset, stop_offset
from connectors.transports.kafka_partition import BatchStep, PartitionWatch, StatefulKafkaPartition
from connectors.transports.kafka_start_position import EARLIEST, StartPosition
from connectors.transports.progress import BoundedProgress

X = TypeVar("X")
S = TypeVar("S")


class StatefulKafkaSource(FixedPartitionedSource[X, tuple[int | None, S]], Generic[X, S]):
    """Reads `kafka` and runs `step` on every batch of every partition, keeping its state."""

    def __init__(
        self,
        kafka: KafkaSource,
        step: BatchStep,
        initial_state: S,
        commit_offsets: bool = False,
        start: StartPosition = EARLIEST,
        stop_at_ms: int | None = None,
        progress: BoundedProgress | None = None,
        partition_check_s: float = 60.0,
        native: bool = False,
        listed: list[str] | None = None,
    ) -> None:
        """`commit_offsets`: also commit each snapshot's offsets to the `group.id` of kafka's config.

        `start`: where partitions without recovery state begin (`group`: that `group.id`'s offsets).
        `stop_at_ms` (STOP_AT, bounded runs): each partition stops before its first record with a
        Kafka timestamp at or past it. `progress`: a bounded run's progress line.
        `partition_check_s`: how often to look for partitions added while running (0: never).
        `native`: read with the native reader (kafka_native.py) instead of bytewax's consumer.
        `listed`: the partitions, already listed at start (KafkaTransport.check): not asked again.
        """
        self._native = native
        self._stop_at_ms = stop_at_ms
        self._progress = progress
        self._partition_check_s = partition_check_s
        self._parts: list[str] = []
        self._listed = listed
        self._kafka = kafka
        # Safety net: librdkafka's default (latest) would skip every retained record if a
        # read position falls out of the log mid-run; build_part handles it at start.
        add_source_config(kafka, {"auto.offset.reset": "earliest"})
        if native:
            # bytewax's consumer, kept for queries and never polled, would queue a statistics
            # report every second for as long as the job runs (about 20 MB an hour per partition).
            add_source_config(kafka, {"statistics.interval.ms": "0"})
        self._step = step
        self._initial_state = initial_state
        self._commit_offsets = commit_offsets
        self._starts = StartOffsets(start)

    def list_parts(self) -> list[str]:
        self._parts = list(self._listed) if self._listed is not None else list_parts_quietly(self._kafka)
        return self._parts

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int | None, S] | None
    ) -> StatefulKafkaPartition[X, S]:
        offset, state = resume_state if resume_state is not None else (None, self._initial_state)
        kafka_part = self._kafka.build_part(step_id, for_part, offset)
        internals = KafkaPartitionInternals(kafka_part)
        try:
            start, high = self._starts.resolve(internals, for_part, offset)
        except BaseException:
            kafka_part.close()
            raise
        if start != internals.next_offset:
            # Before the first consume, so nothing was read from the old position.
            internals.consumer.assign([internals.topic_partition(start)])
            internals.next_offset = start
        stop = stop_offset(internals, for_part, self._stop_at_ms) if self._stop_at_ms is not None else None
        if stop is not None and start >= stop:
            internals.mark_end()
        if self._progress is not None:
            # Display only: the end the start's watermark query already gave, asked again only if it failed.
            end = stop if stop is not None else high if high is not None else end_offset(internals)
            self._progress.register(for_part, start, end)
        index, _, topic = for_part.partition("-")
        native = lag = None
        if self._native:
            # bytewax's consumer stays for the queries (watermarks, new partitions), unassigned so it fetches nothing.
            internals.consumer.unassign()
            native = NativePartitionReader(consumer_config(self._kafka), topic, int(index), start)
            lag = LagGauge(step_id, topic, int(index))
        watch = None
        if index == "0" and self._partition_check_s:
            known = sum(1 for part in self._parts if part.partition("-")[2] == topic)
            watch = PartitionWatch(topic, known, self._partition_check_s)
        return StatefulKafkaPartition(
            kafka_part, for_part, self._step, state, self._commit_offsets, stop, self._progress, watch, native, lag
        )
