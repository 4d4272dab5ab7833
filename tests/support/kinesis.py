"""Session Kinesis (kinesis-local on free loopback ports) and helpers for the Kinesis tests.

A plugin: tests/conftest.py's `pytest_plugins` names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.transports.batch import RecordBatch
from devstack.kinesis import KinesisLocal, create_stream, wait_active
from devstack.processes import free_port
from tests.support.jobs import ROOT


@pytest.fixture(scope="session")
def kinesis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KinesisLocal]:
    server = KinesisLocal(free_port(), free_port(), tmp_path_factory.mktemp("kinesis") / "kinesis.log", ROOT / ".cache")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kinesis_stream(kinesis: KinesisLocal, unique: str) -> Callable[..., str]:
    """Make a fresh stream: `kinesis_stream(shards=2)` -> its name."""

    def make(shards: int = 1, name: str | None = None) -> str:
        stream = name or f"s-{unique}-{free_port()}"
        create_stream(kinesis.endpoint_url, stream, shards)
        return stream

    return make


def put(client: Any, stream: str, records: list[tuple[str, bytes]]) -> list[tuple[str, str, str]]:
    """PutRecords in calls of <= 500; returns (key, shard, sequence) per record, in order."""
    out: list[tuple[str, str, str]] = []
    for i in range(0, len(records), 500):
        chunk = records[i : i + 500]
        resp = client.put_records(StreamName=stream, Records=[{"PartitionKey": k, "Data": d} for k, d in chunk])
        assert resp["FailedRecordCount"] == 0, resp
        out.extend((k, r["ShardId"], r["SequenceNumber"]) for (k, _), r in zip(chunk, resp["Records"], strict=True))
    return out


def split(client: Any, stream: str, shard_id: str) -> None:
    """Split a shard in the middle of its hash range and wait until the stream is ACTIVE again."""
    shard = next(s for s in client.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == shard_id)
    low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    client.split_shard(StreamName=stream, ShardToSplit=shard_id, NewStartingHashKey=str((low + high) // 2))
    wait_active(client, stream)


def merge(client: Any, stream: str, shard_id: str, adjacent_id: str) -> None:
    client.merge_shards(StreamName=stream, ShardToMerge=shard_id, AdjacentShardToMerge=adjacent_id)
    wait_active(client, stream)


def open_shards(client: Any, stream: str) -> list[dict]:
    """Open shards, by starting hash key."""
    shards = client.list_shards(StreamName=stream)["Shards"]
    open_ = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    return sorted(open_, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))


def record_step(stream: str, batch: RecordBatch, count: int) -> tuple[list[tuple], int]:
    """A batch step for tests: each record as (key, shard, sequence, data); the state counts records."""
    keys, offsets, values = batch.keys, batch.offsets, batch.values
    items = [(keys[i].decode(), batch.partition, offsets[i], values[i]) for i in range(len(batch))]
    return items, count + len(batch)


def drain(part: Any, *, until: Callable[[list], bool] | None = None, timeout: float = 60.0) -> list:
    """Drive a source partition the way bytewax does (honouring next_awake) until StopIteration or `until(items)`."""
    items: list = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            items.extend(part.next_batch())
        except StopIteration:
            return items
        if until is not None and until(items):
            return items
        if time.monotonic() > deadline:
            pytest.fail(f"source did not finish within {timeout}s ({len(items)} items read)")
        wake = part.next_awake()
        if wake is not None:  # bytewax's scheduler: no call before the partition's awake time
            time.sleep(min(0.5, max(0.0, (wake - datetime.now(UTC)).total_seconds())))
