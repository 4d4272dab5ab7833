"""Which shards of one stream to read, and from where: pure bookkeeping, no I/O, no clock.

The reader feeds it what Kinesis said (a ListShards answer, a shard's end with its
children) and asks it which shards may be read now. A shard may be read once every one
of its parents (ParentShardId, AdjacentParentShardId) has been read to SHARD_END, or is
gone: so for every partition key records come in the order they were written, across
SplitShard, MergeShards and UpdateShardCount. Finished shards are remembered until
ListShards no longer lists them (past retention), so a child does not wait for them.

Positions are `(kind, arg)`: AFTER_SEQUENCE_NUMBER with the last sequence number read,
TRIM_HORIZON, AT_TIMESTAMP with epoch ms, or LATEST. A fresh start takes the configured
start position for the shards of its first listing; shards found later hold only new
data and start at TRIM_HORIZON.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Position = tuple[str, str | int | None]
# A stream's positions as snapshotted: plain data, so it pickles across versions of this package.
# {"shards": {shard_id: {"pos": [kind, arg], "parents": [...]}}, "done": [shard_id, ...]}
Positions = dict[str, Any]


@dataclass(frozen=True)
class ShardInfo:
    """A shard as ListShards (or a parent's ChildShards) describes it."""

    shard_id: str
    parents: tuple[str, ...] = ()
    closed: bool = False  # listed with an EndingSequenceNumber: no new records will arrive


@dataclass
class TrackedShard:
    shard_id: str
    parents: tuple[str, ...]
    kind: str  # where to (re)start: AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, AT_TIMESTAMP, LATEST
    arg: str | int | None = None  # the sequence number, or the timestamp in epoch ms
    closed: bool = False
    at_tip: bool = False  # bounded mode: read to the tip, not polled again


class ShardTracker:
    """The shards of one stream known and not finished, the finished ones, and their positions."""

    def __init__(self, start: Position, positions: Positions | None = None) -> None:
        self._start = start
        self.shards: dict[str, TrackedShard] = {}  # known, not finished, in the order found
        self.done: set[str] = set()
        self.fresh = positions is None
        self.listed = False  # one listing went through
        if positions is not None:
            self.done = set(positions.get("done", ()))
            for shard_id, entry in positions.get("shards", {}).items():
                kind, arg = entry["pos"]
                self.shards[shard_id] = TrackedShard(shard_id, tuple(entry["parents"]), kind, arg)

    def on_listing(self, listed: Iterable[ShardInfo]) -> None:
        """Take a ListShards answer: new shards are tracked, known ones marked closed, and finished
        shards it no longer lists are forgotten (past retention: their children need not wait)."""
        listed = list(listed)
        initial = self.fresh and not self.listed
        start_kind, start_arg = self._start if initial else ("TRIM_HORIZON", None)
        for info in listed:
            if info.shard_id in self.done:
                continue
            known = self.shards.get(info.shard_id)
            if known is not None:
                if info.closed and not known.closed:
                    known.closed = True
                    known.at_tip = False  # closed since: read on to SHARD_END, then its children
                continue
            if initial and start_kind == "LATEST" and info.closed:
                self.done.add(info.shard_id)  # LATEST: nothing new will ever arrive in a closed shard
                continue
            self.shards[info.shard_id] = TrackedShard(info.shard_id, info.parents, start_kind, start_arg, info.closed)
        # Unfinished shards not listed are kept: one really gone fails GetShardIterator, and the reader skips it.
        self.done &= {info.shard_id for info in listed}
        self.listed = True

    def finish(self, shard_id: str) -> None:
        """The shard was read to SHARD_END (or is gone): its children may start."""
        self.shards.pop(shard_id, None)
        self.done.add(shard_id)

    def add_children(self, children: Iterable[ShardInfo]) -> None:
        """The children a finished shard named; they hold only what followed it, from TRIM_HORIZON.

        A child with a parent this tracker has not seen (made since the last listing) waits for
        the next listing, which names that parent too: taken now, the unknown parent would count
        as finished and the child be read before it."""
        for child in children:
            known = all(p in self.shards or p in self.done for p in child.parents)
            if known and child.shard_id not in self.shards and child.shard_id not in self.done:
                self.shards[child.shard_id] = TrackedShard(child.shard_id, child.parents, "TRIM_HORIZON")

    def is_ready(self, shard: TrackedShard) -> bool:
        """Every parent read to SHARD_END, or gone."""
        return not any(p in self.shards for p in shard.parents)

    def readable(self) -> list[TrackedShard]:
        """The shards to read now, in the order found: parents finished, not resting at their tip."""
        return [s for s in self.shards.values() if self.is_ready(s) and not s.at_tip]

    def read_up_to(self, shard_id: str, sequence: str) -> None:
        self.shards[shard_id].kind, self.shards[shard_id].arg = "AFTER_SEQUENCE_NUMBER", sequence

    def restart_at_trim_horizon(self, shard_id: str) -> None:
        """The position fell out of retention: read what is left."""
        self.shards[shard_id].kind, self.shards[shard_id].arg = "TRIM_HORIZON", None

    def iterator_taken(self, shard_id: str, started_ms: int) -> None:
        """LATEST becomes "at the start time": a renewal or resume must not skip what arrives meanwhile."""
        shard = self.shards[shard_id]
        if shard.kind == "LATEST":
            shard.kind, shard.arg = "AT_TIMESTAMP", started_ms

    def reached_tip(self, shard_id: str) -> None:
        """Bounded mode: an open shard read to its tip is not polled again."""
        shard = self.shards[shard_id]
        if not shard.closed:
            shard.at_tip = True

    def complete(self) -> bool:
        """Bounded mode: listed, and every shard left is open and read to its tip."""
        return self.listed and all(s.at_tip and not s.closed for s in self.shards.values())

    def snapshot(self, started_ms: int) -> Positions:
        shards = {}
        for s in self.shards.values():
            kind, arg = (s.kind, s.arg) if s.kind != "LATEST" else ("AT_TIMESTAMP", started_ms)  # not read yet
            shards[s.shard_id] = {"pos": [kind, arg], "parents": list(s.parents)}
        return {"shards": shards, "done": sorted(self.done)}
