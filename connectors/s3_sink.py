"""Partitioned, exactly-once S3 sink writing Parquet or CSV through polars (DESIGN §5).

Protocol per sink partition, whose snapshot state is `next_seq`:
1. rows are buffered until bytewax snapshots the epoch (or closes the sink);
2. the objects to be written are first listed in a manifest
   `<prefix>/_sink/<partition>/<seq>.json`, then written, then `seq` advances;
3. on (re)start, every manifest with a seq at or past the restored `next_seq`
   belongs to output that the replay will produce again: its objects are deleted.
So the bucket holds each row once, whatever point a crash interrupted.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import boto3
import polars as pl
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from prometheus_client import Counter

log = logging.getLogger(__name__)

OBJECTS_WRITTEN = Counter("waxstreams_s3_objects_written_total", "Data objects written (committed or not)")
ROWS_WRITTEN = Counter("waxstreams_s3_rows_written_total", "Rows written (committed or not)")
S3_RETRIES = Counter("waxstreams_s3_retries_total", "S3 calls retried after a transient failure")

FORMATS = ("parquet", "csv")
# Client errors that retrying cannot fix; anything else (5xx, throttling, network) is retried.
_TERMINAL_CODES = {
    "NoSuchBucket": "the bucket does not exist: create it or fix S3_BUCKET",
    "AccessDenied": "access denied: check the AWS credentials and the bucket policy",
    "InvalidAccessKeyId": "the AWS access key is not valid: fix the AWS credentials",
    "SignatureDoesNotMatch": "the AWS secret key does not match: fix the AWS credentials",
    "403": "access denied: check the AWS credentials and the bucket policy",
    "404": "the bucket does not exist: create it or fix S3_BUCKET",
}


class S3SinkError(RuntimeError):
    """S3 refused or could not be reached for good; the message names the fix."""


@dataclass(frozen=True, slots=True)
class ObjectRows:
    """Rows bound for one object folder (`directory`, relative to the bucket)."""

    directory: str
    columns: dict[str, list]


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None

    def client(self) -> Any:
        # Credentials come from boto3's standard chain (env, profile, IRSA, instance role).
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30, max_pool_connections=16
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
        )

    def manifest_dir(self, partition: str) -> str:
        return f"{self.prefix.strip('/')}/_sink/{partition}/".lstrip("/")


def describe_s3_error(exc: Exception, location: S3Location) -> str | None:
    """One-line reason with the fix for errors retrying cannot cure, None for transient ones."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _TERMINAL_CODES:
            return f"S3 bucket {location.bucket!r}: {_TERMINAL_CODES[code]}"
    if isinstance(exc, BotoCoreError) and "credentials" in type(exc).__name__.lower():
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile"
    return None


def with_retries(call: Callable[[], Any], what: str, location: S3Location, give_up_after: float) -> Any:
    """Run an S3 call, retrying transient failures with capped exponential backoff."""
    deadline = time.monotonic() + give_up_after
    delay = 0.2
    while True:
        try:
            return call()
        except (ClientError, BotoCoreError) as exc:
            msg = describe_s3_error(exc, location)
            if msg is None and time.monotonic() + delay > deadline:
                msg = (
                    f"S3 {what} still failing after {give_up_after:.0f}s ({exc}); check S3_ENDPOINT_URL and the network"
                )
            if msg is not None:
                # Logged here too: bytewax may abort on a sink exception without printing it.
                log.error("%s; stopping: rows not yet in S3 are replayed from the last snapshot on restart", msg)
                raise S3SinkError(msg) from None
            log.warning("S3 %s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            S3_RETRIES.inc()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def check_bucket(location: S3Location) -> None:
    """Fail fast at start with one clear line if the bucket cannot be written."""
    client = location.client()
    try:
        client.head_bucket(Bucket=location.bucket)
    except EndpointConnectionError:
        msg = f"cannot reach S3 at {location.endpoint_url or 'AWS'}: start it or fix S3_ENDPOINT_URL"
        raise S3SinkError(msg) from None
    except (ClientError, BotoCoreError) as exc:
        raise S3SinkError(describe_s3_error(exc, location) or f"S3 bucket {location.bucket!r}: {exc}") from None


def encode(frame: pl.DataFrame, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buffer)
    else:
        frame.write_csv(buffer)
    return buffer.getvalue()


def stable_partition(key: str) -> int:
    """Stable across processes and runs, unlike hash() (salted per process)."""
    return zlib.crc32(key.encode())


class _S3SinkPartition(StatefulSinkPartition[ObjectRows, int]):
    def __init__(self, sink: PartitionedS3Sink, partition: str, next_seq: int) -> None:
        self._sink = sink
        self._location = sink.location
        self._partition = partition
        self._next_seq = next_seq
        self._client = self._location.client()
        self._writer = uuid.uuid4().hex[:8]  # object names are never reused across runs
        self._buffer: dict[str, list[dict[str, list]]] = defaultdict(list)
        self._failed = False
        self._uploads = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"s3-{partition}")
        self._roll_back_uncommitted()

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        return with_retries(call, what, self._location, self._sink.give_up_after)

    def _roll_back_uncommitted(self) -> None:
        """Delete what was written after the snapshot we resume from."""
        prefix = self._location.manifest_dir(self._partition)
        bucket = self._location.bucket
        pages = self._call(
            "list manifests",
            lambda: list(self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)),
        )
        for page in pages:
            for entry in page.get("Contents", []):
                seq = int(entry["Key"].rsplit("/", 1)[-1].split(".")[0])
                if seq < self._next_seq:
                    continue
                body = self._call("read manifest", partial(self._client.get_object, Bucket=bucket, Key=entry["Key"]))
                keys = json.loads(body["Body"].read())["objects"]
                for key in keys:
                    self._call("delete object", partial(self._client.delete_object, Bucket=bucket, Key=key))
                self._call("delete manifest", partial(self._client.delete_object, Bucket=bucket, Key=entry["Key"]))
                log.info("rolled back %d uncommitted objects of %s seq %d", len(keys), self._partition, seq)

    def write_batch(self, items: list[ObjectRows]) -> None:
        for item in items:
            self._buffer[item.directory].append(item.columns)

    def _flush(self) -> None:
        if not self._buffer:
            return
        seq, bucket, fmt = self._next_seq, self._location.bucket, self._sink.fmt
        objects = {
            directory: f"{directory}/{self._partition}-{seq:010d}-{self._writer}.{fmt}"
            for directory in sorted(self._buffer)
        }
        manifest = json.dumps({"seq": seq, "objects": list(objects.values())}).encode()
        manifest_key = f"{self._location.manifest_dir(self._partition)}{seq:012d}.json"
        self._call("write manifest", partial(self._client.put_object, Bucket=bucket, Key=manifest_key, Body=manifest))

        def write(directory: str, key: str) -> None:
            frame = pl.concat([pl.DataFrame(c, schema=self._sink.schema) for c in self._buffer[directory]])
            body = encode(frame, fmt)
            self._call("write object", partial(self._client.put_object, Bucket=bucket, Key=key, Body=body))
            OBJECTS_WRITTEN.inc()
            ROWS_WRITTEN.inc(frame.height)

        # S3 latency, not bandwidth, bounds a write of many small objects: send them at once.
        for done in [self._uploads.submit(write, d, k) for d, k in objects.items()]:
            done.result()  # re-raises S3SinkError; the seq only advances when all are in
        self._next_seq = seq + 1
        self._buffer.clear()

    def snapshot(self) -> int:
        try:
            self._flush()
        except S3SinkError:
            self._failed = True
            raise
        return self._next_seq

    def close(self) -> None:
        if not self._failed:  # after a failed write, leave the rows to the replay
            self._flush()
        self._uploads.shutdown()


class PartitionedS3Sink(FixedPartitionedSink[ObjectRows, int]):
    """Writes each epoch's rows as one object per folder, exactly once across restarts."""

    def __init__(
        self,
        location: S3Location,
        schema: pl.Schema,
        fmt: str = "parquet",
        partitions: int = 4,
        give_up_after: float = 300.0,
    ) -> None:
        if fmt not in FORMATS:
            msg = f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}"
            raise ValueError(msg)
        self.location = location
        self.schema = schema
        self.fmt = fmt
        self.partitions = partitions
        self.give_up_after = give_up_after

    def list_parts(self) -> list[str]:
        # Zero-padded: bytewax routes `part_fn(key) % n` into the names sorted as strings.
        width = max(2, len(str(self.partitions - 1)))
        return [f"p{i:0{width}d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return stable_partition(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _S3SinkPartition:
        return _S3SinkPartition(self, for_part, resume_state or 0)
