"""Reading a Kinesis output stream back: which of a sink partition's records landed.

Every shard ListShards lists (open and closed: a resharded shard's children too, and
children that appear while reading, from a parent's ChildShards) is read from a start:
after the sequence number the partition last saw confirmed there, or, for a shard it
has no number for (it wrote nothing there before the point it resumes from), from a
time: every record of the partition's there arrived after that time. Reading stops
at the shard's tip (MillisBehindLatest 0) or end.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from connectors.transports.kinesis.proxy import CONNECTION_ERRORS, THROTTLING_CODES, TRANSIENT_CODES, error_code
from connectors.transports.kinesis.records import KinesisSinkError, later
from connectors.transports.kinesis.settings import MAX_GET_RECORDS

log = logging.getLogger(__name__)

_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 5.0


@dataclass
class ReadBack:
    found: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (shard, sequence number)
    tips: dict[str, str] = field(default_factory=dict)  # shard -> the last sequence number read there
    shards: set[str] = field(default_factory=set)  # every shard listed or reached


class _Calls:
    """Kinesis calls retried on throttling and transient failures until a deadline."""

    def __init__(self, client: Any, stream: str, deadline: float, budget: float) -> None:
        self.client, self.stream, self.deadline, self.budget = client, stream, deadline, budget

    def __call__(self, name: str, passthrough: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """Call `name`; ClientErrors with a code in `passthrough` are the caller's."""
        backoff = 0.0
        while True:
            try:
                return getattr(self.client, name)(**kwargs)
            except ClientError as exc:
                code = error_code(exc)
                if code in passthrough:
                    raise
                if not (code in THROTTLING_CODES or code in TRANSIENT_CODES or code.startswith("5")):
                    raise refused(self.stream, name, code) from None
                reason = code
            except CONNECTION_ERRORS as exc:
                reason = type(exc).__name__
            backoff = min(_BACKOFF_CAP, max(_BACKOFF_BASE, backoff * 2))
            pause = random.uniform(backoff / 2, backoff)
            if time.monotonic() + pause > self.deadline:
                msg = (
                    f"reading Kinesis stream {self.stream!r} back ({name}) still fails ({reason}) after "
                    f"{self.budget:g}s: check that Kinesis is reachable, or raise KINESIS_SINK_RETRY_SECONDS"
                )
                raise KinesisSinkError(msg)
            time.sleep(pause)  # a sink may block: bytewax waits for it


def refused(stream: str, call: str, code: str) -> KinesisSinkError:
    if code == "ResourceNotFoundException":
        msg = f"Kinesis stream {stream!r} does not exist ({call}): create it or fix the job's stream setting"
    else:
        msg = (
            f"Kinesis refused {call} on stream {stream!r} ({code}): the sink writes with PutRecords and reads its "
            "output back with ListShards, GetShardIterator and GetRecords: allow them in the IAM policy"
        )
    return KinesisSinkError(msg)


def read_back(
    client: Any,
    stream: str,
    after: dict[str, str],
    since_ms: int | None,
    own_id: Callable[[str, bytes], str | None],
    *,
    deadline: float,
    budget: float,
) -> ReadBack:
    """The records `own_id(partition_key, data)` names, past `after` (shard -> sequence number)
    or, in a shard not in `after`, arrived at or after `since_ms` (None: such shards are skipped)."""
    calls = _Calls(client, stream, deadline, budget)
    out = ReadBack()
    todo = [s["ShardId"] for s in _list_shards(calls, stream)]
    seen = set(todo)
    while todo:
        shard = todo.pop(0)
        out.shards.add(shard)
        iterator = _iterator(calls, stream, shard, after.get(shard), since_ms)
        while iterator:
            resp = calls("get_records", ShardIterator=iterator, Limit=MAX_GET_RECORDS)
            for record in resp.get("Records", []):
                seq = record["SequenceNumber"]
                out.tips[shard] = later(out.tips.get(shard), seq)
                rid = own_id(record["PartitionKey"], record["Data"])
                if rid is not None:
                    out.found[rid] = (shard, seq)
            iterator = resp.get("NextShardIterator")
            if iterator is None:  # the shard's end: its children hold what follows
                for child in resp.get("ChildShards") or []:
                    if child["ShardId"] not in seen:
                        seen.add(child["ShardId"])
                        todo.append(child["ShardId"])
            elif resp.get("MillisBehindLatest", 0) == 0:
                break  # the tip when this answer was made: what comes later was sent later
    return out


def _list_shards(calls: _Calls, stream: str) -> list[dict]:
    shards: list[dict] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = calls("list_shards", **kwargs)
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


def _iterator(calls: _Calls, stream: str, shard: str, after: str | None, since_ms: int | None) -> str | None:
    if after is not None:
        kwargs: dict[str, Any] = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after}
    elif since_ms is not None:
        kwargs = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": datetime.fromtimestamp(since_ms / 1000, UTC)}
    else:
        return None
    gone = ("InvalidArgumentException", "ResourceNotFoundException") if after is not None else ()
    try:
        return calls("get_shard_iterator", gone, StreamName=stream, ShardId=shard, **kwargs)["ShardIterator"]
    except ClientError:
        pass
    # The number fell out of retention (kinesis-local answers ResourceNotFound): what is left follows it.
    log.warning(
        "Kinesis %r shard %s: sequence number %s is gone; reading it back from TRIM_HORIZON", stream, shard, after
    )
    return calls("get_shard_iterator", StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
