"""An in-memory Kinesis behind the source's KinesisProxy, on a clock the test drives: deterministic.

It models what the reader relies on: shards with hash-key ranges (a key's records go to
one open shard), SplitShard and MergeShards (parents closed, children named at their
SHARD_END and in ListShards), retention (`trim` drops a shard's oldest records, `drop`
a whole shard), iterators that expire after 5 minutes, and failures a test injects per
call (and optionally per shard). Every call is logged with its clock time.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from connectors.transports.kinesis.proxy import (
    EXPIRED_ITERATOR,
    INVALID_ARGUMENT,
    NOT_FOUND,
    ProxyError,
    RecordsPage,
)
from connectors.transports.kinesis.record import KinesisRecord
from connectors.transports.kinesis.tracker import ShardInfo

HASH_SPACE = 2**128
ITERATOR_TTL = 300.0
BEHIND_MS = 5_000  # what the fake says a reader not at the tip is behind
CODES = {  # reason -> a service code Kinesis answers with
    "throttled": "ProvisionedThroughputExceededException",
    "transient": "InternalFailure",
    "unreachable": "Could not connect to the endpoint URL",
    "expired_iterator": "ExpiredIteratorException",
    "not_found": "ResourceNotFoundException",
    "invalid_argument": "InvalidArgumentException",
    "refused": "AccessDeniedException",
}
NAMES = {  # proxy method -> the Kinesis call it stands for
    "list_shards": "ListShards",
    "shard_iterator": "GetShardIterator",
    "get_records": "GetRecords",
    "check_stream": "DescribeStreamSummary",
}


def error(reason: str, call: str) -> ProxyError:
    """What the boto3 proxy raises for `reason` on proxy method `call`."""
    return ProxyError(NAMES[call], reason, CODES[reason])


class FakeClock:
    """Monotonic seconds that move only when the test says so, and a wall clock that moves with them."""

    EPOCH = 1_767_225_600.0  # wall time at monotonic 0: 2026-01-01

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.EPOCH + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Shard:
    shard_id: str
    low: int  # hash-key range, inclusive
    high: int
    parents: tuple[str, ...] = ()
    records: list[tuple[str, str, bytes, int]] = field(default_factory=list)  # (sequence, key, data, arrival ms)
    first: int = 0  # records before this index are past retention
    closed: bool = False
    children: tuple[str, ...] = ()
    gone: bool = False  # past retention altogether


@dataclass(frozen=True)
class Call:
    at: float
    name: str
    shard: str | None = None
    kind: str | None = None
    arg: Any = None


class FakeKinesis:
    """A KinesisProxy over in-memory streams."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.streams: dict[str, dict[str, Shard]] = {}
        self.calls: list[Call] = []
        self.raised: list[str] = []
        self._faults: dict[tuple[str, str | None], deque[str | None]] = defaultdict(deque)
        self._iterators: dict[str, tuple[str, str, int, float]] = {}  # token -> (stream, shard, index, issued at)
        self._tokens = itertools.count()
        self._seq = itertools.count(1)
        self._shard_ids: dict[str, itertools.count] = {}

    # -- the test's side: streams, writes, resharding, retention, faults

    def create_stream(self, stream: str, shards: int = 1) -> list[str]:
        self.streams[stream] = {}
        self._shard_ids[stream] = itertools.count()
        width = HASH_SPACE // shards
        return [
            self._new_shard(stream, i * width, HASH_SPACE - 1 if i == shards - 1 else (i + 1) * width - 1)
            for i in range(shards)
        ]

    def _new_shard(self, stream: str, low: int, high: int, parents: tuple[str, ...] = ()) -> str:
        shard_id = f"shardId-{next(self._shard_ids[stream]):012d}"
        self.streams[stream][shard_id] = Shard(shard_id, low, high, parents)
        return shard_id

    def put(self, stream: str, records: list[tuple[str, bytes]]) -> list[tuple[str, str, str]]:
        """Write (key, data) in order; returns (key, shard, sequence) per record."""
        out = []
        for key, data in records:
            hashed = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")  # Kinesis' own routing
            shard = next(
                s for s in self.streams[stream].values() if not s.closed and not s.gone and s.low <= hashed <= s.high
            )
            sequence = str(49_000_000_000_000_000_000 + next(self._seq))
            shard.records.append((sequence, key, data, int(self.clock.wall() * 1000)))
            out.append((key, shard.shard_id, sequence))
        return out

    def split(self, stream: str, shard_id: str) -> tuple[str, str]:
        parent = self.streams[stream][shard_id]
        middle = (parent.low + parent.high) // 2
        children = (
            self._new_shard(stream, parent.low, middle, (shard_id,)),
            self._new_shard(stream, middle + 1, parent.high, (shard_id,)),
        )
        parent.closed, parent.children = True, children
        return children

    def merge(self, stream: str, shard_id: str, adjacent_id: str) -> str:
        one, two = self.streams[stream][shard_id], self.streams[stream][adjacent_id]
        if one.high + 1 != two.low and two.high + 1 != one.low:
            msg = f"{shard_id} and {adjacent_id} are not adjacent"
            raise ValueError(msg)
        child = self._new_shard(stream, min(one.low, two.low), max(one.high, two.high), (shard_id, adjacent_id))
        for parent in (one, two):
            parent.closed, parent.children = True, (child,)
        return child

    def trim(self, stream: str, shard_id: str, count: int) -> None:
        """Retention takes the shard's `count` oldest records."""
        shard = self.streams[stream][shard_id]
        shard.first = max(shard.first, count)

    def drop(self, stream: str, shard_id: str) -> None:
        """The whole shard is past retention: no longer listed, no iterator."""
        self.streams[stream][shard_id].gone = True

    def fail(self, call: str, *reasons: str | None, shard: str | None = None) -> None:
        """The next calls of `call` (a proxy method; on `shard` only, if given) fail with these reasons; None passes."""
        self._faults[(call, shard)].extend(reasons)

    def expire_iterators(self) -> None:
        """Every iterator handed out so far expires (as after 5 minutes)."""
        for token, (stream, shard, index, _) in self._iterators.items():
            self._iterators[token] = (stream, shard, index, self.clock() - ITERATOR_TTL - 1)

    # -- what a test asks afterwards

    def shard(self, stream: str, shard_id: str) -> Shard:
        return self.streams[stream][shard_id]

    def times(self, name: str, shard: str | None = None) -> list[float]:
        return [c.at for c in self.calls if c.name == name and (shard is None or c.shard == shard)]

    # -- the proxy's side

    def _enter(self, name: str, shard: str | None = None, kind: str | None = None, arg: Any = None) -> None:
        self.calls.append(Call(self.clock(), name, shard, kind, arg))
        for key in ((name, shard), (name, None)):
            if self._faults.get(key):
                reason = self._faults[key].popleft()
                if reason is not None:
                    self.raised.append(reason)
                    raise error(reason, name)
                return

    def _stream(self, name: str, stream: str) -> dict[str, Shard]:
        if stream not in self.streams:
            raise error(NOT_FOUND, name)
        return self.streams[stream]

    def list_shards(self, stream: str) -> list[ShardInfo]:
        self._enter("list_shards")
        shards = self._stream("list_shards", stream).values()
        return [ShardInfo(s.shard_id, s.parents, s.closed) for s in shards if not s.gone]

    def check_stream(self, stream: str) -> None:
        self._enter("check_stream")
        self._stream("check_stream", stream)

    def shard_iterator(self, stream: str, shard_id: str, kind: str, arg: str | int | None) -> str:
        self._enter("shard_iterator", shard_id, kind, arg)
        shard = self._stream("shard_iterator", stream).get(shard_id)
        if shard is None or shard.gone:
            raise error(NOT_FOUND, "shard_iterator")
        if kind == "TRIM_HORIZON":
            index = shard.first
        elif kind == "LATEST":
            index = len(shard.records)
        elif kind == "AT_TIMESTAMP":
            later = [i for i in range(shard.first, len(shard.records)) if shard.records[i][3] >= int(arg or 0)]
            index = later[0] if later else len(shard.records)
        else:  # AFTER_SEQUENCE_NUMBER
            found = [i for i, r in enumerate(shard.records) if r[0] == arg]
            if not found or found[0] < shard.first:
                raise error(INVALID_ARGUMENT, "shard_iterator")
            index = found[0] + 1
        return self._token(stream, shard_id, index)

    def _token(self, stream: str, shard_id: str, index: int) -> str:
        token = f"iterator-{next(self._tokens)}"
        self._iterators[token] = (stream, shard_id, index, self.clock())
        return token

    def get_records(self, stream: str, shard_id: str, iterator: str, limit: int) -> RecordsPage:
        self._enter("get_records", shard_id)
        stream_of, shard_of, index, issued = self._iterators[iterator]
        assert (stream_of, shard_of) == (stream, shard_id), "an iterator used for another shard"
        if self.clock() - issued > ITERATOR_TTL:
            raise error(EXPIRED_ITERATOR, "get_records")
        shard = self._stream("get_records", stream)[shard_id]
        start = max(index, shard.first)
        batch = shard.records[start : start + limit]
        end = start + len(batch)
        records = [KinesisRecord(stream, shard_id, seq, key, data, ms) for seq, key, data, ms in batch]
        at_end = end >= len(shard.records)
        if shard.closed and at_end:  # SHARD_END
            children = tuple(ShardInfo(c, self.streams[stream][c].parents) for c in shard.children)
            return RecordsPage(records, None, 0, children)
        return RecordsPage(records, self._token(stream, shard_id, end), 0 if at_end else BEHIND_MS)
