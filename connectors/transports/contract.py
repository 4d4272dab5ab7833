"""The contract between a job and the log it reads and writes: Kafka, Kinesis, or memory.

A transport reads named streams (Kafka topics, Kinesis streams) as partitioned logs.
Each partition's records go, in order and a batch at a time, through the job's
stateful batch step, whose state is snapshotted together with the partition's
position, so after a resume both describe the same point of the log. The step gets
a batch as columns, a `RecordBatch` (batch.py): values, offsets (the positions in the
partition), keys, and its stream and partition.

A transport also writes `OutputRecord`s to named streams, exactly once as readers of
that stream see it: each record names its unit, a deterministic id from the input, and
the transport's sink fences the units it committed past the snapshot a resume restores
(connectors/sinks/fence.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

from bytewax.dataflow import Stream
from bytewax.inputs import Source

from connectors.errors import WaxstreamsError
from connectors.transports.batch import RecordBatch

__all__ = ["BatchStep", "OutputRecord", "RecordBatch", "Transport", "TransportUnavailable"]

# (partition id, its records in log order, partition state) -> (items, new state)
BatchStep = Callable[[str, RecordBatch, Any], tuple[list[Any], Any]]


class OutputRecord(NamedTuple):
    """A record for an output stream. `unit`: what a replay must not emit twice, a
    function of the input alone (dead letters and late events: their input position;
    booking outcomes: the positions of the records that settled them)."""

    unit: str
    key: bytes
    value: bytes


class Transport(Protocol):
    # True when `partitions` lists every partition a run reads (none appear while it runs,
    # as Kinesis resharding makes them): only then may a key close its windows on arrival
    # (dataflows/event_time.py, "Per key").
    partitions_fixed: ClassVar[bool]

    def check(self, read: list[str], write: list[str]) -> None:
        """Raise TransportUnavailable (one line naming the setting and the fix) if a stream is missing."""

    def partitions(self, streams: list[str]) -> list[str]:
        """Every partition id `source` will read: the sources of the event-time watermark."""

    def source(self, streams: list[str], step: BatchStep, initial_state: Any) -> Source:
        """Reads `streams`, running `step` on every batch of every partition."""

    def max_record_bytes(self, stream: str) -> int:
        """The largest record (key + value) `stream` takes: larger ones become `output_refused` dead letters."""

    def write(self, step_id: str, records: Stream[OutputRecord], stream: str) -> None:
        """Writes `records` to `stream`, each unit once across crashes and replays."""


class TransportUnavailable(WaxstreamsError, RuntimeError):
    """The log cannot be reached or a stream is missing; the message names the fix."""
