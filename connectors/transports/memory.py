"""An in-memory transport (see connectors/transports/contract.py): the same jobs, run in-process by tests.

Each stream is a dict of partitions, each a list of message values; what the job
writes lands in `written[stream]` as (key, value) pairs. Reading stops at the end of
every partition (a bounded run); `pace` spaces a partition's batches out in wall-clock
time, for tests of what happens while a job runs. `ABORT` in a partition's list crashes the run once
there, before that batch is processed, like a killed process; run the flow again
with the same recovery store to resume.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink

from connectors.transports.contract import BatchStep, OutputRecord, RecordBatch, TransportUnavailable

ABORT = object()


class Aborted(RuntimeError):
    """The crash an ABORT marker asked for."""


class _Partition(StatefulSourcePartition[Any, tuple[int, Any]]):
    def __init__(self, transport: MemoryTransport, stream: str, index: int, part_id: str, resume: Any) -> None:
        self._transport, self._stream, self._index, self._part_id = transport, stream, index, part_id
        self._values = transport.streams[stream][index]
        self._offset, self._state = resume
        self._next_awake: datetime | None = None

    def next_batch(self) -> list[Any]:
        if self._offset >= len(self._values):
            raise StopIteration
        batch = self._values[self._offset : self._offset + self._transport.batch_size]
        if any(v is ABORT for v in batch):
            cut = next(i for i, v in enumerate(batch) if v is ABORT)
            if cut == 0:
                marker = (self._stream, self._index, self._offset)
                if marker not in self._transport.aborted:
                    self._transport.aborted.add(marker)
                    msg = f"abort at {marker}"
                    raise Aborted(msg)
                self._offset += 1  # the crash happened once; the resumed run goes on
                return []
            batch = batch[:cut]
        if self._transport.pace:
            self._next_awake = datetime.now(UTC) + self._transport.pace
        offsets = np.arange(self._offset, self._offset + len(batch), dtype=np.int64)
        self._offset += len(batch)
        records = RecordBatch(self._stream, self._index, batch, offsets)
        items, self._state = self._transport.step(self._part_id, records, self._state)
        return items

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> tuple[int, Any]:
        return self._offset, self._state


class _Source(FixedPartitionedSource[Any, tuple[int, Any]]):
    def __init__(self, transport: MemoryTransport, streams: list[str], initial_state: Any) -> None:
        self._transport, self._streams, self._initial_state = transport, streams, initial_state

    def list_parts(self) -> list[str]:
        return self._transport.partitions(self._streams)

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, Any] | None) -> _Partition:
        index, _, stream = for_part.partition("-")
        return _Partition(self._transport, stream, int(index), for_part, resume_state or (0, self._initial_state))


class MemoryTransport:
    partitions_fixed: ClassVar[bool] = True  # its streams are given whole

    def __init__(
        self,
        streams: dict[str, list[list[Any]]],
        batch_size: int = 100,
        pace: timedelta | None = None,
        record_limit: int = 1_000_000,
    ) -> None:
        self.streams = streams
        self.batch_size = batch_size
        self.pace = pace
        self.record_limit = record_limit
        self.written: dict[str, list[tuple[bytes, bytes]]] = {}
        self.aborted: set[tuple[str, int, int]] = set()
        self.step: BatchStep = lambda part, records, state: (records.value_list(), state)

    def check(self, read: list[str], write: list[str]) -> None:
        missing = [s for s in read if s not in self.streams]
        if missing:
            msg = f"no stream {', '.join(missing)} in memory"
            raise TransportUnavailable(msg)

    def partitions(self, streams: list[str]) -> list[str]:
        # Kafka's naming: "<partition>-<topic>".
        return [f"{i}-{s}" for s in streams for i in range(len(self.streams[s]))]

    def source(self, streams: list[str], step: BatchStep, initial_state: Any) -> _Source:
        self.step = step
        return _Source(self, streams, initial_state)

    def max_record_bytes(self, stream: str) -> int:
        return self.record_limit

    def write(self, step_id: str, records: Stream[OutputRecord], stream: str) -> None:
        pairs = op.map(f"{step_id}_pair", records, lambda r: (r.key, r.value))
        op.output(step_id, pairs, TestingSink(self.written.setdefault(stream, [])))
