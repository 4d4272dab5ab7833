"""Builders of test inputs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeMessage:
    """What the source hands the batch steps: confluent_kafka.Message's accessors."""

    _value: bytes | None
    _offset: int
    _partition: int
    _topic: str

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


def tally_dict(tallies) -> dict[tuple[str, str], tuple[int, int]]:
    """A slice's tallies frame as {(movieId, userId): (impressions, latestImpression)}; one row each."""
    rows = tallies.select("movieId", "userId", "impressions", "latestImpression").rows()
    out = {(movie, user): (count, latest) for movie, user, count, latest in rows}
    assert len(out) == len(rows), "one row per (movie, user)"
    return out
