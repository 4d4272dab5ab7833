"""One partition's records, in log order, as columns: what every transport hands the job's batch step.

- `stream`: the Kafka topic or Kinesis stream;
- `partition`: the Kafka (or memory) partition, an int, or the Kinesis shard id, a str;
- `values`: the records' values, a list of `bytes | None` or a polars Binary Series
  (a native reader's Arrow column, taken with no copy);
- `offsets`: Kafka's (and memory's) as a numpy int64 array, Kinesis sequence numbers
  as a list of str (up to 128 digits: compare them as ints);
- `keys`: a list of `bytes | None` or a Binary Series; Kinesis partition keys as UTF-8.

Kafka offsets are each record's own: compacted and transactional topics leave gaps, so
they are never the first offset plus the index. From confluent-kafka's messages
(`of_messages`) only the values are taken at once; offsets and keys are read from the
messages the first time a step asks (dead letters, late events, the booking job), so the
common batch costs one pass over the messages, as before columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import polars as pl


class KafkaMessage(Protocol):
    """What `of_messages` reads: confluent_kafka.Message's accessors."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


class RecordBatch:
    """One partition's records in log order, as columns (see the module doc). Immutable."""

    __slots__ = ("_keys", "_listed", "_messages", "_offsets", "_partition", "_stream", "_values")

    def __init__(
        self,
        stream: str,
        partition: int | str,
        values: list[bytes | None] | pl.Series,
        offsets: np.ndarray | list[str],
        keys: list[bytes | None] | pl.Series | None = None,
    ) -> None:
        dtype = getattr(values, "dtype", None)
        if dtype is not None and str(dtype) != "Binary":
            msg = f"a RecordBatch's values are bytes: a polars Series of dtype Binary, not {dtype}"
            raise TypeError(msg)
        if len(offsets) != len(values) or (keys is not None and len(keys) != len(values)):
            msg = f"a RecordBatch's columns differ in length: {len(values)} values, {len(offsets)} offsets"
            raise ValueError(msg)
        self._stream = stream
        self._partition = partition if isinstance(partition, str) else int(partition)
        self._values = values
        self._offsets: np.ndarray | list[str] | None = offsets
        self._keys = keys
        self._messages: Sequence[KafkaMessage] = ()
        self._listed: list[bytes | None] | None = values if isinstance(values, list) else None

    @classmethod
    def of_messages(cls, messages: Sequence[KafkaMessage]) -> RecordBatch:
        """confluent-kafka's messages of one partition, in offset order (at least one): the values
        now, offsets and keys when first asked."""
        batch = cls.__new__(cls)
        first = messages[0]
        batch._stream = first.topic()  # type: ignore[assignment]  # a consumed message has both
        batch._partition = first.partition()  # type: ignore[assignment]
        batch._values = batch._listed = [m.value() for m in messages]
        batch._offsets = batch._keys = None
        batch._messages = messages
        return batch

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def partition(self) -> int | str:
        return self._partition

    @property
    def values(self) -> list[bytes | None] | pl.Series:
        return self._values

    @property
    def offsets(self) -> np.ndarray | list[str]:
        if self._offsets is None:  # of_messages: read once, on first use
            messages = self._messages
            self._offsets = np.fromiter((m.offset() for m in messages), np.int64, len(messages))
        return self._offsets

    @property
    def keys(self) -> list[bytes | None] | pl.Series:
        if self._keys is None:
            self._keys = [m.key() for m in self._messages] if self._messages else [None] * len(self._values)
        return self._keys

    def __len__(self) -> int:
        return len(self._values)

    def value_list(self) -> list[bytes | None]:
        """The values as a Python list (a Series is converted once, on first use: the slow paths')."""
        if self._listed is None:
            self._listed = self._values.to_list()  # type: ignore[union-attr]  # a Series, by __init__
        return self._listed

    def value(self, i: int) -> bytes | None:
        if self._listed is not None:
            return self._listed[i]
        return self._values[i]  # type: ignore[no-any-return]  # one element of a Series, without listing it

    def offset(self, i: int) -> int | str:
        if self._offsets is None and self._messages:  # one position needs no column
            return self._messages[i].offset()  # type: ignore[return-value]  # a consumed message has one
        offset: Any = self.offsets[i]
        return offset if isinstance(offset, str) else int(offset)

    def position(self, i: int) -> tuple[str, int | str, int | str]:
        """(stream, partition, offset) of record `i`: a dead letter's or late event's SourcePosition."""
        return self._stream, self._partition, self.offset(i)

    def __repr__(self) -> str:
        return f"RecordBatch({self._stream}/{self._partition}, {len(self)} records)"
