"""One Kinesis record as a GetRecords page holds it, and a page's records as the step gets them.

`record_batch`: one shard's records as a RecordBatch (connectors/transports/batch.py),
the columns every transport hands the job's batch step. A record's accessors mirror
confluent_kafka.Message:

| KinesisRecord | meaning                          | confluent_kafka.Message |
|---------------|----------------------------------|-------------------------|
| `.value()`    | the data, bytes                  | `.value()`              |
| `.key()`      | the partition key, UTF-8 bytes   | `.key()`                |
| `.topic()`    | the stream name                  | `.topic()`              |
| `.partition()`| the shard id, e.g. "shardId-000000000002" (a str, not an int) | `.partition()` |
| `.offset()`   | the sequence number (a str of up to 128 digits; compare as int) | `.offset()` |
| `.timestamp()`| (TIMESTAMP_LOG_APPEND_TIME, approximate arrival in epoch ms) | `.timestamp()` |
| `.error()`    | always None                      | `.error()`              |

plus `.stream()`, `.shard_id()`, `.sequence_number()`, `.partition_key()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.transports.batch import RecordBatch


class KinesisRecord:
    """One Kinesis record, with confluent_kafka.Message's accessor names (see the module doc)."""

    __slots__ = ("_arrival_ms", "_data", "_key", "_seq", "_shard", "_stream")

    def __init__(self, stream: str, shard: str, sequence: str, key: str, data: bytes, arrival_ms: int) -> None:
        self._stream = stream
        self._shard = shard
        self._seq = sequence
        self._key = key
        self._data = data
        self._arrival_ms = arrival_ms

    def value(self) -> bytes:
        return self._data

    def key(self) -> bytes:
        return self._key.encode()

    def partition_key(self) -> str:
        return self._key

    def topic(self) -> str:
        return self._stream

    stream = topic

    def partition(self) -> str:
        return self._shard

    shard_id = partition

    def offset(self) -> str:
        return self._seq

    sequence_number = offset

    def timestamp(self) -> tuple[int, int]:
        return (2, self._arrival_ms)  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME: set by the service

    def error(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"KinesisRecord({self._stream}/{self._shard}@{self._seq}, key={self._key!r}, {len(self._data)} bytes)"


def record_batch(stream: str, shard: str, records: Sequence[KinesisRecord]) -> RecordBatch:
    """One shard's records, in sequence-number order, as columns: sequence numbers stay strs
    (up to 128 digits), partition keys become UTF-8 bytes like Kafka's keys."""
    return RecordBatch(
        stream,
        shard,
        [r._data for r in records],
        [r._seq for r in records],
        keys=[r._key.encode() for r in records],
    )
