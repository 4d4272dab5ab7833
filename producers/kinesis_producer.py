"""Sending generated traffic to Kinesis streams, as the Kafka producer does to topics."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from connectors.transports.kinesis.proxy import kinesis_client

_BATCH = 500  # PutRecords' limit per call


def put_messages(
    messages: Iterable[tuple[str, bytes, bytes]], endpoint_url: str | None, region: str, progress: bool = False
) -> int:
    """Send (stream, key, value) in order, PutRecords batches per stream; failed records are sent again."""
    client = kinesis_client(endpoint_url, region, max_attempts=5)
    pending: dict[str, list[tuple[str, bytes]]] = {}
    sent = 0
    for stream, key, value in messages:
        batch = pending.setdefault(stream, [])
        batch.append((key.decode() or "-", value))
        if len(batch) == _BATCH:
            sent += _put(client, stream, batch)
            batch.clear()
            if progress and sent % 5000 < _BATCH:
                print(f"put {sent} records", file=sys.stderr)
    for stream, batch in pending.items():
        if batch:
            sent += _put(client, stream, batch)
    return sent


def _put(client: Any, stream: str, records: list[tuple[str, bytes]]) -> int:
    todo = records
    for attempt in range(10):
        response = client.put_records(StreamName=stream, Records=[{"PartitionKey": k, "Data": d} for k, d in todo])
        todo = [r for r, result in zip(todo, response["Records"], strict=True) if "ErrorCode" in result]
        if not todo:
            return len(records)
        time.sleep(0.1 * 2**attempt)
    msg = f"{len(todo)} records were not accepted by Kinesis stream {stream}"
    raise RuntimeError(msg)
