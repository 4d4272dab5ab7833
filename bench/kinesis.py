"""The Kinesis read figure of `make bench`: the impressions job from a local Kinesis stream
into S3, against the ceiling of a plain boto3 GetRecords loop over the same stream."""

from __future__ import annotations

import time
import uuid
from typing import Any

from connectors.transports.kinesis.proxy import kinesis_client
from devstack.kinesis import create_stream, read_stream
from producers.kinesis_producer import put_messages
from producers.movie_impressions import TrafficShape, generate

ENDPOINT = "http://127.0.0.1:4568"  # `make up`'s kinesis-local


def load(events: int, shards: int = 2) -> str:
    stream = f"bench-{uuid.uuid4().hex[:6]}"
    create_stream(ENDPOINT, stream, shards)
    shape = TrafficShape(count=events, movies=200, users=5_000, step_ms=max(1, 4 * 3600 * 1000 // events), seed=1)
    put_messages(((stream, e.key, e.value) for e in generate(shape)), ENDPOINT, "us-east-1")
    return stream


def raw_get_records(stream: str) -> dict:
    """The ceiling: every shard read to its tip with GetRecords(Limit=10000), nothing else done."""
    client: Any = kinesis_client(ENDPOINT, "us-east-1", max_attempts=3)
    started = time.perf_counter()
    count = len(read_stream(client, stream))
    return {"events_per_s": count / (time.perf_counter() - started), "records": count}
