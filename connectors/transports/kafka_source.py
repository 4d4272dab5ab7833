"""bytewax's built-in KafkaSource with a per-partition stateful step inside the source.

Like a Flink Kafka source with a per-partition watermark strategy: each consumed batch
is handed, in offset order, to a function that also gets and returns that partition's
state, and that state is snapshotted together with the partition's offset. So after a
resume, the state and the offset always describe the same point of the partition.

bytewax's KafkaSource builds the consumer, lists and assigns partitions, reports lag
and keeps the offset; only the batch loop is ours: it hands librdkafka's messages to
the step as they are, instead of copying each into a `KafkaSourceMessage` first. That
copy cost more than all of the job's own per-event work (`make bench`, README).

Where a partition starts (`build_part`), always at a concrete offset:
- resumed (the store has its offset): that offset, or, when retention has already
  deleted it, the earliest record still there; the gap is logged and counted in
  `waxstreams_records_lost_to_retention_total`. librdkafka on its own would apply
  `auto.offset.reset` (latest by default) and skip everything still retained;
  `auto.offset.reset=earliest` stays set as a safety net for a gap opening mid-run.
- fresh (no state): the `StartPosition` (START_POSITION): earliest, latest, the first
  record at or after a timestamp, or the consumer group's committed offset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException, Message, TopicPartition
from prometheus_client import Counter

from connectors.engine import KafkaPartitionInternals, add_source_config, list_parts_quietly
from connectors.transports.kafka_client import ClientProblems, KafkaClientConfig
from connectors.transports.progress import BoundedProgress

log = logging.getLogger(__name__)

_SYNC_COMMIT_RETRY_S = 10.0
_BROKER_QUERY_S = 30.0  # watermarks, times, committed offsets at partition start

RECORDS_LOST_TO_RETENTION = Counter(
    "waxstreams_records_lost_to_retention_total",
    "Records a resumed partition skipped because retention deleted them before they were read",
    ["topic", "partition"],
)

START_POSITIONS = ("earliest", "latest", "group", "timestamp:<ISO-8601 or epoch ms>")


@dataclass(frozen=True)
class StartPosition:
    """Where a partition without recovery state starts (START_POSITION)."""

    kind: str  # earliest | latest | group | timestamp
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        if self.kind != "timestamp" or self.timestamp_ms is None:
            return self.kind
        when = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return f"timestamp:{when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"

    @classmethod
    def parse(cls, text: str) -> StartPosition:
        """`earliest`, `latest`, `group`, `timestamp:2026-11-25T06:00:00Z` or `timestamp:1795586400000`."""
        kind, colon, when = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind in ("earliest", "latest", "group") and not colon:
            return cls(kind)
        if kind != "timestamp":
            msg = f"unknown start position {text!r}: use one of {', '.join(START_POSITIONS)}"
            raise ValueError(msg)
        when = when.strip()
        if when.isdigit():
            return cls("timestamp", int(when))
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            msg = f"{when!r} is neither an ISO-8601 time nor epoch milliseconds: e.g. timestamp:2026-11-25T06:00:00Z"
            raise ValueError(msg) from None
        if moment.tzinfo is None:
            msg = f"{when!r} has no time zone: add Z or an offset, e.g. {when}Z"
            raise ValueError(msg)
        millis = int(moment.timestamp() * 1000)
        if millis < 0:
            msg = f"{when!r} is before 1970: Kafka timestamps start at the epoch"
            raise ValueError(msg)
        return cls("timestamp", millis)


EARLIEST = StartPosition("earliest")


X = TypeVar("X")
S = TypeVar("S")

# (partition id, confluent_kafka.Message list in offset order, partition state) -> (items, new state)
BatchStep = Callable[[str, list[Message], S], tuple[list[X], S]]


class _Partition(StatefulSourcePartition[X, tuple[int | None, S]], Generic[X, S]):
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
    ) -> None:
        self._kafka_part = kafka_part
        self._watch = watch  # partition 0 of each topic looks out for partitions added while running
        self._stop_offset = stop_offset  # STOP_AT: the first offset not to read
        self._progress = progress
        self._internals = KafkaPartitionInternals(kafka_part)
        self._part_id = part_id
        self._step = step
        self._state = state
        self._commit_offsets = commit_offsets
        self._coordinator_ready = False  # until one synchronous commit went through

    def next_batch(self) -> list[X]:
        # The built-in partition's own loop, without the per-message copy (its private
        # parts through connectors/engine.py).
        part = self._internals
        if part.at_end:
            raise StopIteration
        if self._watch is not None:
            self._watch.check(part.consumer)
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
        if not messages:
            return []
        part.next_offset = messages[-1].offset() + 1  # type: ignore[operator]  # a consumed message has one
        if self._progress is not None:
            self._progress.advance(self._part_id, part.next_offset)
        items, self._state = self._step(self._part_id, messages, self._state)
        return items

    def next_awake(self) -> datetime | None:
        return self._kafka_part.next_awake()

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
                part.consumer.commit(offsets=offsets, asynchronous=asynchronous)
                self._coordinator_ready = True
                return
            except KafkaException as exc:
                if _transient(exc) and time.monotonic() < deadline:
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


_TRANSIENT_COMMIT_ERRORS = {
    ConfluentKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    ConfluentKafkaError.COORDINATOR_NOT_AVAILABLE,
    ConfluentKafkaError.NOT_COORDINATOR,
    ConfluentKafkaError.REQUEST_TIMED_OUT,
    ConfluentKafkaError._WAIT_COORD,
    ConfluentKafkaError._TRANSPORT,
    ConfluentKafkaError._TIMED_OUT,
}


def _transient(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, ConfluentKafkaError) and (error.retriable() or error.code() in _TRANSIENT_COMMIT_ERRORS)


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
    ) -> None:
        """`commit_offsets`: also commit each snapshot's offsets to the `group.id` of kafka's config.

        `start`: where partitions without recovery state begin (`group`: that `group.id`'s offsets).
        `stop_at_ms` (STOP_AT, bounded runs): each partition stops before its first record with a
        Kafka timestamp at or past it. `progress`: a bounded run's progress line.
        `partition_check_s`: how often to look for partitions added while running (0: never).
        """
        self._stop_at_ms = stop_at_ms
        self._progress = progress
        self._partition_check_s = partition_check_s
        self._parts: list[str] = []
        self._kafka = kafka
        # Safety net: librdkafka's default (latest) would skip every retained record if a
        # read position falls out of the log mid-run; build_part handles it at start.
        add_source_config(kafka, {"auto.offset.reset": "earliest"})
        self._step = step
        self._initial_state = initial_state
        self._commit_offsets = commit_offsets
        self._start = start
        self._told_resumed = threading.Lock()  # held once the "setting ignored" line is out

    def list_parts(self) -> list[str]:
        self._parts = list_parts_quietly(self._kafka)
        return self._parts

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int | None, S] | None) -> _Partition[X, S]:
        offset, state = resume_state if resume_state is not None else (None, self._initial_state)
        kafka_part = self._kafka.build_part(step_id, for_part, offset)
        try:
            start = self._start_offset(kafka_part, for_part, offset)
        except BaseException:
            kafka_part.close()
            raise
        internals = KafkaPartitionInternals(kafka_part)
        if start != internals.next_offset:
            # Before the first consume, so nothing was read from the old position.
            internals.consumer.assign([internals.topic_partition(start)])
            internals.next_offset = start
        stop = self._stop_offset(internals, for_part) if self._stop_at_ms is not None else None
        if stop is not None and start >= stop:
            internals.mark_end()
        if self._progress is not None:
            self._progress.register(for_part, start, stop if stop is not None else _end_offset(internals))
        index, _, topic = for_part.partition("-")
        watch = None
        if index == "0" and self._partition_check_s:
            known = sum(1 for part in self._parts if part.partition("-")[2] == topic)
            watch = PartitionWatch(topic, known, self._partition_check_s)
        return _Partition(kafka_part, for_part, self._step, state, self._commit_offsets, stop, self._progress, watch)

    def _stop_offset(self, internals: KafkaPartitionInternals, for_part: str) -> int:
        """The first offset at or past STOP_AT (the partition's end if nothing is that late yet)."""
        query = internals.topic_partition(self._stop_at_ms)
        try:
            [found] = _query(lambda: internals.consumer.offsets_for_times([query], timeout=10))
            return found.offset if found.offset >= 0 else _end_offset(internals)
        except KafkaException as exc:
            msg = f"Kafka {for_part}: cannot resolve STOP_AT ({exc}): check the broker and ACLs"
            raise KafkaUnavailable(msg) from None

    def _start_offset(self, kafka_part: Any, for_part: str, offset: int | None) -> int:
        internals = KafkaPartitionInternals(kafka_part)
        consumer, tp = internals.consumer, internals.topic_partition()
        resumed = offset is not None
        try:
            low, high = _query(lambda: consumer.get_watermark_offsets(tp, timeout=10))
        except KafkaException as exc:
            if resumed:  # auto.offset.reset=earliest still keeps retained records if it is gone
                log.warning("Kafka %s: log start unknown (%s); resuming at offset %s unchecked", for_part, exc, offset)
                return internals.next_offset
            msg = f"Kafka {for_part}: cannot read the partition's offsets ({exc}): check KAFKA_BROKERS and the ACLs"
            raise KafkaUnavailable(msg) from None
        if resumed:
            if self._told_resumed.acquire(blocking=False):
                log.info(
                    "START_POSITION=%s applies only to partitions without recovery state; resumed partitions "
                    "(e.g. %s) continue from their snapshot offsets",
                    self._start,
                    for_part,
                )
            assert offset is not None
            # A logical offset (bytewax snapshots OFFSET_BEGINNING for a partition that never
            # read a record): nothing was read, so nothing can have been lost.
            position = low if offset < 0 else offset
            if position > high:
                # Not a gap we can measure: the topic was recreated or truncated.
                log.warning(
                    "Kafka %s: resume offset %d is past the partition's end %d (topic recreated?); "
                    "reading from the earliest record, %d",
                    for_part,
                    position,
                    high,
                    low,
                )
                return low
            return self._not_below_log_start(for_part, tp, position, low, "resume offset")
        position = self._resolve(consumer, tp, for_part, low, high)
        log.info(
            "Kafka %s: no recovery state, starting at offset %d (START_POSITION=%s)", for_part, position, self._start
        )
        return position

    def _resolve(self, consumer: Any, tp: TopicPartition, for_part: str, low: int, high: int) -> int:
        kind = self._start.kind
        if kind == "earliest":
            return low
        if kind == "latest":
            return high
        try:
            if kind == "timestamp":
                query = TopicPartition(tp.topic, tp.partition, self._start.timestamp_ms or 0)
                [found] = _query(lambda: consumer.offsets_for_times([query], timeout=10))
                return found.offset if found.offset >= 0 else high  # -1: no record that late yet
            [committed] = _query(lambda: consumer.committed([tp], timeout=10))
        except KafkaException as exc:
            msg = f"Kafka {for_part}: cannot resolve START_POSITION={self._start} ({exc}): check the broker and ACLs"
            raise KafkaUnavailable(msg) from None
        if committed.offset < 0:
            log.info("Kafka %s: the consumer group has no committed offset; starting at the earliest record", for_part)
            return low
        return self._not_below_log_start(for_part, tp, committed.offset, low, "group's committed offset")

    def _not_below_log_start(self, for_part: str, tp: TopicPartition, offset: int, low: int, what: str) -> int:
        if offset >= low:
            return offset
        lost = low - offset
        log.warning(
            "Kafka %s: %d records lost to retention: the %s %d is below the log start %d (deleted before "
            "they were read); resuming at %d",
            for_part,
            lost,
            what,
            offset,
            low,
            low,
        )
        RECORDS_LOST_TO_RETENTION.labels(tp.topic, str(tp.partition)).inc(lost)
        return low


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


def _end_offset(internals: KafkaPartitionInternals) -> int:
    """The partition's end now (its high watermark): where a bounded run stops at the latest."""
    return _query(lambda: internals.consumer.get_watermark_offsets(internals.topic_partition(), timeout=10))[1]


def _query(call: Callable[[], Any]) -> Any:
    """A broker query at start, retried through passing errors (leader moves, a slow coordinator)."""
    deadline = time.monotonic() + _BROKER_QUERY_S
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not _transient(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached or a topic is missing; the message names the fix."""


def check_topics(
    brokers: list[str],
    client_config: dict[str, Any],
    topics: list[str],
    timeout: float = 10.0,
    client: KafkaClientConfig | None = None,
) -> None:
    """Fail fast at start with one clear line instead of a consumer that waits forever.

    librdkafka reports why it cannot connect (a refused login, a certificate it cannot
    verify, a listener speaking another protocol) only to `error_cb`: those errors are
    collected while the topics are listed and the first that names a cause ends the
    check at once, as one line naming the setting (`client`'s sources) and the fix."""
    from confluent_kafka.admin import AdminClient

    client = client or KafkaClientConfig()
    problems = ClientProblems()
    admin = AdminClient({"bootstrap.servers": ",".join(brokers), **client_config, **problems.config()})
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = admin.list_topics(timeout=min(1.0, timeout)).topics
            break
        except KafkaException:
            admin.poll(0)  # serves error_cb and the logger
            explained = problems.explain(brokers, client)
            if explained is not None:
                raise KafkaUnavailable(explained) from None
            if time.monotonic() >= deadline:
                msg = f"cannot reach Kafka at {','.join(brokers)}: start it (make up) or fix KAFKA_BROKERS"
                raise KafkaUnavailable(msg) from None
    missing = [t for t in topics if t not in existing]
    if missing:
        msg = (
            f"Kafka topic(s) {', '.join(missing)} do not exist on {','.join(brokers)}: "
            "create them or fix the topic settings"
        )
        raise KafkaUnavailable(msg)
    log.info("Kafka at %s: connected (%s)", ",".join(brokers), client.masked())
