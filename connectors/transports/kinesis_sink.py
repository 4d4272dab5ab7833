"""A bytewax sink writing `(partition_key: str, data: bytes)` items to one Kinesis stream with PutRecords.

Use::

    sink = KinesisSink.from_settings(KinesisSettings.from_env(os.environ), "alerts")
    # or KinesisSink("alerts", endpoint_url=..., region=..., retry_seconds=...)
    op.output("out", items, sink)          # items: (partition key, bytes)

Each worker writes its own items (a DynamicSink, no state). Per `write_batch` the items
are sent in PutRecords calls of at most 500 records and 5 MiB (data + keys); a record
over 1 MiB (data + UTF-8 key), or a key that is empty or over 256 characters, raises
KinesisSinkError at once: Kinesis would refuse it, and dropping it would lose data.

Records that fail inside a partially successful call (throttling, internal errors), and
whole calls that are throttled or fail transiently (5xx, connection errors), are sent
again with exponential backoff and jitter until `retry_seconds` (KINESIS_SINK_RETRY_SECONDS,
default 300) have passed since the batch started; then KinesisSinkError, one line. A
missing stream or refused credentials fail at once.

Guarantee: at-least-once. After a crash bytewax replays the epoch and the same items
are sent again, byte-identical, with the same partition keys; so are records whose
PutRecords answer was lost. Order: per partition key, items are written in order
unless a record is retried after a later record of the same key already succeeded in
the same call (PutRecords does not order across failures); a consumer needing strict
order must tolerate that or key its data so it is order-insensitive.

Metrics: `waxstreams_kinesis_records_written_total{stream}`,
`waxstreams_kinesis_put_retries_total{stream}` (records sent again).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter

from connectors.transports.kinesis_source import (
    _CONNECTION_ERRORS,
    THROTTLING_CODES,
    TRANSIENT_CODES,
    KinesisSettings,
    _code,
    kinesis_client,
)

log = logging.getLogger(__name__)

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data + partition key
MAX_KEY_CHARS = 256

RECORDS_WRITTEN = Counter("waxstreams_kinesis_records_written_total", "Records PutRecords accepted", ["stream"])
PUT_RETRIES = Counter("waxstreams_kinesis_put_retries_total", "Records sent again after a failure", ["stream"])

_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 5.0


class KinesisSinkError(RuntimeError):
    """A record cannot be written (too big, refused, or still failing after the retry budget)."""


def record_size(key: str, data: bytes) -> int:
    """What counts against Kinesis' 1 MiB record and 5 MiB request limits: data plus UTF-8 key."""
    return len(data) + len(key.encode())


def validate(stream: str, key: str, data: bytes) -> None:
    if not isinstance(key, str) or not isinstance(data, bytes | bytearray):
        got = f"({type(key).__name__}, {type(data).__name__})"
        msg = f"Kinesis sink for {stream!r} takes (partition_key: str, data: bytes) items, got {got}"
        raise KinesisSinkError(msg)
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        msg = f"Kinesis partition key of {len(key)} characters for stream {stream!r}: it must have 1..{MAX_KEY_CHARS}"
        raise KinesisSinkError(msg)
    size = record_size(key, data)
    if size > MAX_RECORD_BYTES:
        msg = (
            f"Kinesis record of {size} bytes (data + key) for stream {stream!r} is over the 1 MiB limit: "
            "split or shrink it before the sink"
        )
        raise KinesisSinkError(msg)


def plan_calls(items: Sequence[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """Cut items, in order, into PutRecords calls of at most 500 records and 5 MiB."""
    calls: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = 0
    for key, data in items:
        item_size = record_size(key, data)
        if current and (len(current) >= MAX_RECORDS_PER_CALL or size + item_size > MAX_BYTES_PER_CALL):
            calls.append(current)
            current, size = [], 0
        current.append((key, data))
        size += item_size
    if current:
        calls.append(current)
    return calls


class _KinesisSinkPartition(StatelessSinkPartition[tuple[str, bytes]]):
    def __init__(self, sink: KinesisSink) -> None:
        self._sink = sink
        self._stream = sink.stream
        self._client = sink._client_factory()

    def write_batch(self, items: list[tuple[str, bytes]]) -> None:
        for key, data in items:
            validate(self._stream, key, data)
        deadline = time.monotonic() + self._sink.retry_seconds
        for call in plan_calls(items):
            self._put(call, deadline)

    def _put(self, records: list[tuple[str, bytes]], deadline: float) -> None:
        pending = records
        backoff = 0.0
        while True:
            failure = self._attempt(pending)
            if isinstance(failure, list):
                if not failure:
                    return
                pending, reason = [rec for rec, _ in failure], failure[0][1]
                PUT_RETRIES.labels(self._stream).inc(len(pending))
            else:
                reason = failure
                PUT_RETRIES.labels(self._stream).inc(len(pending))
            backoff = min(_BACKOFF_CAP, max(_BACKOFF_BASE, backoff * 2))
            pause = random.uniform(backoff / 2, backoff)
            if time.monotonic() + pause > deadline:
                msg = (
                    f"Kinesis PutRecords to {self._stream!r}: {len(pending)} record(s) still failing ({reason}) "
                    f"after {self._sink.retry_seconds:g}s of retries: check the stream's capacity, "
                    "or raise KINESIS_SINK_RETRY_SECONDS"
                )
                raise KinesisSinkError(msg)
            time.sleep(pause)  # a sink may block: bytewax waits for the write

    def _attempt(self, records: list[tuple[str, bytes]]) -> list[tuple[tuple[str, bytes], str]] | str:
        """Send once; the records that failed (with a reason), or a reason if the whole call failed."""
        try:
            resp = self._client.put_records(
                StreamName=self._stream, Records=[{"PartitionKey": k, "Data": d} for k, d in records]
            )
        except ClientError as exc:
            code = _code(exc)
            if code in THROTTLING_CODES or code in TRANSIENT_CODES or code.startswith("5"):
                return code
            if code == "ResourceNotFoundException":
                msg = f"Kinesis stream {self._stream!r} does not exist: create it or fix the sink's stream setting"
            else:
                msg = f"Kinesis refused PutRecords to {self._stream!r} ({code}): check the IAM policy (PutRecords)"
            raise KinesisSinkError(msg) from None
        except _CONNECTION_ERRORS as exc:
            return type(exc).__name__
        except NoCredentialsError:
            msg = "no AWS credentials for Kinesis: provide them through boto3's chain (env, profile, role)"
            raise KinesisSinkError(msg) from None
        results = resp["Records"]
        failed = [
            (rec, res.get("ErrorCode", "unknown"))
            for rec, res in zip(records, results, strict=True)
            if res.get("ErrorCode")
        ]
        RECORDS_WRITTEN.labels(self._stream).inc(len(records) - len(failed))
        return failed

    def close(self) -> None:
        pass


class KinesisSink(DynamicSink[tuple[str, bytes]]):
    """Writes `(partition_key, data)` items to `stream` with PutRecords; at-least-once (see the module doc)."""

    def __init__(
        self,
        stream: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        retry_seconds: float = 300.0,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        """`endpoint_url` None: AWS itself. `client_factory` builds each worker's boto3 client (tests wrap it)."""
        self.stream = stream
        self.retry_seconds = retry_seconds
        # Our retry loop decides; botocore's own retries would sleep outside the budget.
        self._client_factory = client_factory or (lambda: kinesis_client(endpoint_url, region))

    @classmethod
    def from_settings(cls, settings: KinesisSettings, stream: str) -> KinesisSink:
        return cls(
            stream,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            retry_seconds=settings.sink_retry_seconds,
        )

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KinesisSinkPartition:
        return _KinesisSinkPartition(self)
