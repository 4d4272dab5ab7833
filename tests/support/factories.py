"""Builders of test inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from connectors.transports.batch import RecordBatch


@dataclass(frozen=True)
class FakeMessage:
    """What confluent-kafka's consumer gives the Kafka source: confluent_kafka.Message's accessors."""

    _value: bytes | None
    _offset: int
    _partition: int
    _topic: str
    _key: bytes | None = None

    def key(self) -> bytes | None:
        return self._key

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return self._partition

    def topic(self) -> str:
        return self._topic


def kafka_message(value: bytes | None, offset: int = 0, partition: int = 0, topic: str = "t") -> FakeMessage:
    return FakeMessage(value, offset, partition, topic)


def batch_of(messages: Sequence[FakeMessage]) -> RecordBatch:
    """The batch the Kafka source hands the step for these messages (of one partition)."""
    return RecordBatch.of_messages(messages)


def record_batch(
    values: list[bytes | None],
    offsets: Sequence[int] | None = None,
    *,
    series: bool = False,
    partition: int = 0,
    topic: str = "t",
) -> RecordBatch:
    """A batch built from columns, as the memory transport and a native reader build it; offsets
    0, 1, ... unless given; `series`: the values as a polars Binary Series."""
    column = pl.Series(values, dtype=pl.Binary) if series else values
    numbers = np.arange(len(values), dtype=np.int64) if offsets is None else np.array(offsets, dtype=np.int64)
    return RecordBatch(topic, partition, column, numbers)


def tally_dict(tallies) -> dict[tuple[str, str], tuple[int, int]]:
    """A slice's tallies frame as {(movieId, userId): (impressions, latestImpression)}; one row each."""
    rows = tallies.select("movieId", "userId", "impressions", "latestImpression").rows()
    out = {(movie, user): (count, latest) for movie, user, count, latest in rows}
    assert len(out) == len(rows), "one row per (movie, user)"
    return out
