"""The offsets committed for lag tools when a partition closes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import KafkaError, KafkaException

from connectors.transports.kafka_partition import StatefulKafkaPartition as _Partition
from tests.support.factories import FakeMessage, kafka_message


class FlakyConsumer:
    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.committed: list[int] = []
        self.modes: list[bool] = []

    def commit(self, offsets, asynchronous: bool) -> None:
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        self.committed.append(offsets[0].offset)
        self.modes.append(asynchronous)


class ClosingKafkaPart:
    _topic, _part_idx = "impressions", 0

    def __init__(self, consumer: FlakyConsumer) -> None:
        self._consumer = consumer

    def snapshot(self) -> int:
        return 9_277

    def close(self) -> None:
        pass


def partition(consumer: FlakyConsumer) -> _Partition:
    return _Partition(ClosingKafkaPart(consumer), "0-impressions", lambda p, m, s: ([], s), None, True)


def close_with(consumer: FlakyConsumer) -> list[int]:
    partition(consumer).close()
    return consumer.committed


def test_final_commit_waits_for_a_loading_coordinator() -> None:
    # A fresh cluster's first group commit: the coordinator is still loading its offsets topic.
    loading = KafkaError.COORDINATOR_LOAD_IN_PROGRESS
    assert close_with(FlakyConsumer(loading, loading, KafkaError.NOT_COORDINATOR)) == [9_277]


def test_final_commit_gives_up_at_once_on_a_lasting_error() -> None:
    assert close_with(FlakyConsumer(KafkaError.GROUP_AUTHORIZATION_FAILED)) == []


def test_snapshots_commit_asynchronously_only_once_a_synchronous_commit_went_through() -> None:
    # An async commit refused by a loading coordinator is resent later by librdkafka and
    # can overwrite a newer offset: the first commit waits for the coordinator instead.
    consumer = FlakyConsumer(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    part = partition(consumer)
    part.snapshot()
    part.snapshot()
    part.close()
    assert consumer.modes == [False, True, False]
    assert consumer.committed == [9_277, 9_277, 9_277]


class PolledConsumer:
    """Hands out the batches it was given, then nothing."""

    def __init__(self, *batches: list[FakeMessage]) -> None:
        self.batches = list(batches)

    def consume(self, count: int, timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []


class PolledKafkaPart:
    _topic, _part_idx, _batch_size, _eof, _offset = "impressions", 0, 100, False, 0

    def __init__(self, consumer: PolledConsumer) -> None:
        self._consumer = consumer


def test_an_idle_partition_sleeps_between_empty_polls_and_wakes_at_once_while_busy() -> None:
    # bytewax calls next_batch again 1 ms after an empty one unless told otherwise: an idle job
    # would spin, and a CPU-driven autoscaler would read the spinning as load.
    part = _Partition(
        PolledKafkaPart(PolledConsumer([kafka_message(b"a", 0), kafka_message(b"b", 1)])),
        "0-impressions",
        lambda p, batch, s: (batch.value_list(), s),
        None,
        False,
    )
    assert len(part.next_batch()) == 2
    assert part.next_awake() is None
    before = datetime.now(UTC)
    assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None and awake - before >= timedelta(milliseconds=10)


class EndOfPartition:
    """librdkafka's end-of-partition event (bounded runs): an error message, not a record."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._PARTITION_EOF)


def test_a_partition_that_reached_its_end_is_stopped_at_once_not_after_the_idle_sleep() -> None:
    # The end often comes alone, in an answer after the last records: the next call only
    # raises StopIteration, and a sleep before it delayed every bounded run's end.
    part = _Partition(
        PolledKafkaPart(PolledConsumer([kafka_message(b"a", 0)], [EndOfPartition()])),
        "0-impressions",
        lambda p, batch, s: (batch.value_list(), s),
        None,
        False,
    )
    assert part.next_batch() == [b"a"]
    assert part.next_batch() == []  # the end, with no record
    assert part.next_awake() is None
    with pytest.raises(StopIteration):
        part.next_batch()
