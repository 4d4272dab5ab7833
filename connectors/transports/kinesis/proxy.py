"""The Kinesis calls the source makes, behind one seam: `KinesisProxy`, and its boto3 implementation.

The reader sees only this interface: shards listed, an iterator for a position, a page of
records, a stream checked; and one error type, `ProxyError`, whose `reason` says what
the reader should do (back off, renew the iterator, restart the shard, stop). Tests put an
in-memory proxy behind it (tests/support/fake_kinesis.py); `BotoKinesisProxy` wraps a boto3 client.
IAM: kinesis:ListShards, GetShardIterator, GetRecords, DescribeStreamSummary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from connectors.errors import WaxstreamsError
from connectors.transports.kinesis.record import KinesisRecord
from connectors.transports.kinesis.settings import KinesisSettings
from connectors.transports.kinesis.tracker import ShardInfo

THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
    }
)
TRANSIENT_CODES = frozenset({"InternalFailure", "InternalFailureException", "ServiceUnavailable", "500", "503"})
CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)

# ProxyError.reason: what went wrong, as the reader acts on it.
THROTTLED = "throttled"  # slow down and call again
TRANSIENT = "transient"  # a 5xx or internal failure: call again after a pause
UNREACHABLE = "unreachable"  # no connection: call again after a pause (or stop, at start)
EXPIRED_ITERATOR = "expired_iterator"  # iterators live 5 minutes: take a new one
NOT_FOUND = "not_found"  # the stream or shard (or, on kinesis-local, the position) is not there
INVALID_ARGUMENT = "invalid_argument"  # e.g. a sequence number past retention
NO_CREDENTIALS = "no_credentials"
REFUSED = "refused"  # anything else: IAM, a wrong argument; not retried


class KinesisUnavailable(WaxstreamsError, RuntimeError):
    """The endpoint cannot be reached, credentials are refused or a stream is missing; the message names the fix."""


class ProxyError(Exception):
    """A Kinesis call failed. `detail` is the service's error code, or the connection error's text."""

    def __init__(self, call: str, reason: str, detail: str) -> None:
        super().__init__(f"Kinesis {call} failed: {reason} ({detail})")
        self.call, self.reason, self.detail = call, reason, detail


@dataclass(frozen=True)
class RecordsPage:
    """One GetRecords answer. `next_iterator` None: SHARD_END, and `children` hold what follows."""

    records: list[KinesisRecord]
    next_iterator: str | None
    millis_behind: int | None
    children: tuple[ShardInfo, ...] = ()


class KinesisProxy(Protocol):
    """The calls the source makes; each raises ProxyError on failure."""

    def list_shards(self, stream: str) -> list[ShardInfo]:
        """Every shard of the stream, open and closed."""
        ...

    def shard_iterator(self, stream: str, shard_id: str, kind: str, arg: str | int | None) -> str:
        """An iterator at a position: `kind` as GetShardIterator's type, `arg` a sequence number or epoch ms."""
        ...

    def get_records(self, stream: str, shard_id: str, iterator: str, limit: int) -> RecordsPage: ...

    def check_stream(self, stream: str) -> None:
        """Raises ProxyError if the stream is missing, refused or unreachable."""
        ...


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def reason_of(code: str) -> str:
    """What a service error code means to a reader."""
    if code in THROTTLING_CODES:
        return THROTTLED
    if code in TRANSIENT_CODES or code.startswith("5"):
        return TRANSIENT
    return {
        "ExpiredIteratorException": EXPIRED_ITERATOR,
        "ResourceNotFoundException": NOT_FOUND,
        "InvalidArgumentException": INVALID_ARGUMENT,
    }.get(code, REFUSED)


class BotoKinesisProxy:
    """KinesisProxy over a boto3 Kinesis client (or anything with its methods, as tests wrap it)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, call: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except ClientError as exc:
            code = error_code(exc)
            raise ProxyError(call, reason_of(code), code) from None
        except CONNECTION_ERRORS as exc:
            raise ProxyError(call, UNREACHABLE, str(exc)) from None

    def list_shards(self, stream: str) -> list[ShardInfo]:
        shards = []
        for info in self._call("ListShards", list_shards, client=self.client, stream=stream):
            parents = tuple(p for p in (info.get("ParentShardId"), info.get("AdjacentParentShardId")) if p)
            closed = "EndingSequenceNumber" in info.get("SequenceNumberRange", {})
            shards.append(ShardInfo(info["ShardId"], parents, closed))
        return shards

    def shard_iterator(self, stream: str, shard_id: str, kind: str, arg: str | int | None) -> str:
        args: dict[str, Any] = {"ShardIteratorType": kind}
        if kind == "AFTER_SEQUENCE_NUMBER":
            args["StartingSequenceNumber"] = arg
        elif kind == "AT_TIMESTAMP":
            args["Timestamp"] = datetime.fromtimestamp(int(arg or 0) / 1000, UTC)
        resp = self._call(
            "GetShardIterator", self.client.get_shard_iterator, StreamName=stream, ShardId=shard_id, **args
        )
        return str(resp["ShardIterator"])

    def get_records(self, stream: str, shard_id: str, iterator: str, limit: int) -> RecordsPage:
        resp = self._call("GetRecords", self.client.get_records, ShardIterator=iterator, Limit=limit)
        records = [
            KinesisRecord(
                stream,
                shard_id,
                r["SequenceNumber"],
                r["PartitionKey"],
                r["Data"],
                int(r["ApproximateArrivalTimestamp"].timestamp() * 1000),
            )
            for r in resp.get("Records", [])
        ]
        children = tuple(
            ShardInfo(c["ShardId"], tuple(c.get("ParentShards", ()))) for c in resp.get("ChildShards") or ()
        )
        return RecordsPage(records, resp.get("NextShardIterator"), resp.get("MillisBehindLatest"), children)

    def check_stream(self, stream: str) -> None:
        try:
            self._call("DescribeStreamSummary", self.client.describe_stream_summary, StreamName=stream)
        except NoCredentialsError:
            raise ProxyError("DescribeStreamSummary", NO_CREDENTIALS, "no credentials") from None


def kinesis_client(endpoint_url: str | None, region: str, *, max_attempts: int = 1) -> Any:
    """A client from boto3's standard credential chain; retries are ours (`max_attempts=1`), so none block."""
    return boto3.session.Session().client(
        "kinesis",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30
        ),
    )


def list_shards(client: Any, stream: str) -> list[dict]:
    """Every shard of a stream (open and closed) as ListShards describes it, following NextToken paging."""
    shards: list[dict] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}  # with a token, StreamName must not be sent


def where(endpoint_url: str | None, region: str) -> str:
    return endpoint_url or f"AWS Kinesis in {region}"


def unavailable(exc: ProxyError, stream: str, at: str, streams_setting: str) -> KinesisUnavailable:
    """The one line for a stream that cannot be used, naming the fix."""
    if exc.reason == UNREACHABLE:
        msg = f"cannot reach Kinesis at {at}: start it (make up) or fix KINESIS_ENDPOINT_URL"
    elif exc.reason == NO_CREDENTIALS:
        msg = "no AWS credentials for Kinesis: provide them through boto3's chain (env, profile, role)"
    elif exc.reason == NOT_FOUND:
        msg = f"Kinesis stream {stream!r} does not exist at {at}: create it or fix {streams_setting}"
    else:
        msg = (
            f"Kinesis refused DescribeStreamSummary on {stream!r} at {at} ({exc.detail}): "
            "fix the AWS credentials or the IAM policy (see README, Kinesis)"
        )
    return KinesisUnavailable(msg)


def check_streams(
    settings: KinesisSettings, streams: Sequence[str] | None = None, streams_setting: str = "KINESIS_STREAMS"
) -> None:
    """Fail fast at start with one line: unreachable endpoint, refused credentials, missing stream."""
    proxy = BotoKinesisProxy(kinesis_client(settings.endpoint_url, settings.region, max_attempts=2))
    for name in streams if streams is not None else settings.streams:
        try:
            proxy.check_stream(name)
        except ProxyError as exc:
            raise unavailable(exc, name, where(settings.endpoint_url, settings.region), streams_setting) from None
