"""A bytewax source for Kinesis Data Streams with a per-stream stateful step, like StatefulKafkaSource.

Use::

    settings = KinesisSettings.from_env(os.environ)
    check_streams(settings)                      # fail fast with one line (missing stream, no endpoint)
    source = StatefulKinesisSource.from_settings(settings, step, initial_state)
    flow = Dataflow("job"); stream = op.input("in", flow, source)

`step(part_id, records, state) -> (items, state)` is the batch step of
connectors/transports/kafka_source.py: `part_id` is the stream name, `records` are the records of
one GetRecords call (one shard, in sequence-number order) as `KinesisRecord`s, whose
accessors mirror confluent_kafka.Message so the same pure batch functions take either:

| KinesisRecord | meaning                          | confluent_kafka.Message |
|---------------|----------------------------------|-------------------------|
| `.value()`    | the data, bytes                  | `.value()`              |
| `.key()`      | the partition key, UTF-8 bytes   | `.key()`                |
| `.topic()`    | the stream name                  | `.topic()`              |
| `.partition()`| the shard id, e.g. "shardId-000000000002" (a str, not an int) | `.partition()` |
| `.offset()`   | the sequence number (a str of up to 128 digits; compare as int) | `.offset()` |
| `.timestamp()`| (TIMESTAMP_LOG_APPEND_TIME, approximate arrival in epoch ms) | `.timestamp()` |
| `.error()`    | always None                      | `.error()`              |

plus `.stream()`, `.shard_id()`, `.sequence_number()`, `.partition_key()`.
The step's state is snapshotted together with the positions of all shards of the
stream, so after a resume both describe the same point.

Resharding (the design and its limit). bytewax's partition list is fixed, Kinesis'
shard list is not. So there is ONE bytewax partition per stream, and it reads all the
stream's shards itself, round-robin, discovering new shards with ListShards every
`discovery_seconds` and from the ChildShards of a parent's SHARD_END. A shard is read
only once every one of its parents (ParentShardId, AdjacentParentShardId) has been read
to SHARD_END, so for every partition key the step sees records in the order they were
written, across SplitShard, MergeShards and UpdateShardCount, with no restart. Because a
single partition knows every shard, merges of parents that another reader would own
need no coordination. The limit: one stream is read by one bytewax worker (several
streams spread over workers). A worker issues GetRecords calls one after another, so
its throughput is bounded by round trips: about 1/RTT calls per second for the whole
stream (~50/s at 20 ms), each up to `max_records` records, i.e. it keeps about ten
busy shards at Kinesis' 5 calls/s (idle shards cost 1/`idle_poll_seconds` calls/s).
Locally it read 20,000 small records from 4 shards in 2 s. For more, split the data
over several streams. The step is called once per GetRecords answer, so all records
of one call come from one shard; a step that needs per-shard state (a per-partition
watermark, say) can key its state by `records[0].partition()`: the state passed in is
per stream.

Positions: per shard, the last sequence number read (resumed AFTER_SEQUENCE_NUMBER);
shards read to SHARD_END are remembered (and forgotten once ListShards no longer lists
them: past retention). A position that fell out of retention resumes the shard at
TRIM_HORIZON with one warning line and `waxstreams_kinesis_position_resets_total`; a
shard that is gone altogether counts as read. A fresh start reads from TRIM_HORIZON, or
LATEST / AT_TIMESTAMP (`start_position`); shards that appear later are always read from
TRIM_HORIZON. LATEST is remembered as "AT_TIMESTAMP the start time", so a resume before
a shard's first record does not skip what arrived in between.

Limits honoured: at most 5 GetRecords calls/s per shard (and `idle_poll_seconds`
between calls at the tip); throttling (ProvisionedThroughputExceeded, LimitExceeded,
KMS throttling) and transient failures (5xx, connection errors) back off exponentially
with jitter per shard, without blocking; expired iterators are renewed from the last
sequence number. `next_awake` tells bytewax when the next shard is due, so an idle
stream is not busy-polled. Metrics: `waxstreams_kinesis_millis_behind_latest{stream,shard}`
(the Kinesis lag), `waxstreams_kinesis_records_read_total{stream}`,
`waxstreams_kinesis_retries_total{stream,reason}`.

Bounded mode (`bounded=True`, BOUNDED=true): each open shard is read until a read comes
back empty with MillisBehindLatest == 0, each closed one to SHARD_END (then its
children), then the source stops. Not supported: enhanced fan-out (SubscribeToShard),
KPL-aggregated records (they arrive as one aggregated record each).

Settings (KinesisSettings.from_env): KINESIS_STREAMS, KINESIS_ENDPOINT_URL,
AWS_REGION/AWS_DEFAULT_REGION, KINESIS_START_POSITION, KINESIS_START_TIMESTAMP,
KINESIS_DISCOVERY_SECONDS, KINESIS_IDLE_POLL_SECONDS, KINESIS_MAX_RECORDS, BOUNDED,
KINESIS_SINK_RETRY_SECONDS (connectors/transports/kinesis_sink.py). IAM: kinesis:ListShards,
GetShardIterator, GetRecords, DescribeStreamSummary (and PutRecords for the sink).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

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
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

LOCAL_KINESIS = "http://127.0.0.1:4568"  # devstack's kinesis-local (python -m devstack up)
START_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
MAX_GET_RECORDS = 10_000  # Kinesis' own cap on GetRecords' Limit

MILLIS_BEHIND = Gauge(
    "waxstreams_kinesis_millis_behind_latest", "MillisBehindLatest of the last GetRecords", ["stream", "shard"]
)
RECORDS_READ = Counter("waxstreams_kinesis_records_read_total", "Kinesis records handed to the step", ["stream"])
RETRIES = Counter(
    "waxstreams_kinesis_retries_total",
    "Kinesis reads retried: throttled, transient or expired_iterator",
    ["stream", "reason"],
)
POSITION_RESETS = Counter(
    "waxstreams_kinesis_position_resets_total",
    "Shards resumed at TRIM_HORIZON because their position was out of retention",
    ["stream"],
)

_MIN_CALL_INTERVAL = 0.2  # 5 GetRecords calls per second per shard
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 10.0
THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
    }
)
TRANSIENT_CODES = frozenset({"InternalFailure", "InternalFailureException", "ServiceUnavailable", "500", "503"})
_CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


class KinesisConfigError(ValueError):
    """A Kinesis setting is missing or wrong; the message names it and the fix."""


class KinesisUnavailable(RuntimeError):
    """The endpoint cannot be reached, credentials are refused or a stream is missing; the message names the fix."""


class KinesisSourceError(RuntimeError):
    """Kinesis refused a read for good (not throttling, not transient); the message says why."""


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class KinesisSettings:
    """Kinesis settings, read once from the environment; defaults point at `make up`'s kinesis-local."""

    streams: tuple[str, ...] = ("movie-impressions",)
    endpoint_url: str | None = LOCAL_KINESIS  # None: AWS's own endpoint for the region
    region: str = "us-east-1"
    start_position: str = "TRIM_HORIZON"
    start_timestamp: datetime | None = None  # for AT_TIMESTAMP
    discovery_seconds: float = 10.0
    idle_poll_seconds: float = 1.0
    max_records: int = MAX_GET_RECORDS
    bounded: bool = False
    sink_retry_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KinesisSettings:
        streams = tuple(s.strip() for s in env.get("KINESIS_STREAMS", ",".join(cls.streams)).split(",") if s.strip())
        if not streams:
            raise KinesisConfigError("KINESIS_STREAMS is empty: set it to a comma-separated list of stream names")
        endpoint = env.get("KINESIS_ENDPOINT_URL", LOCAL_KINESIS).strip() or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            msg = f"KINESIS_ENDPOINT_URL={endpoint!r} is not an http(s) URL: e.g. {LOCAL_KINESIS}, or empty for AWS"
            raise KinesisConfigError(msg)
        region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cls.region).strip()
        position = env.get("KINESIS_START_POSITION", cls.start_position).strip().upper()
        if position not in START_POSITIONS:
            msg = f"KINESIS_START_POSITION={position!r} is not supported: use one of {', '.join(START_POSITIONS)}"
            raise KinesisConfigError(msg)
        timestamp = _timestamp(env.get("KINESIS_START_TIMESTAMP", "").strip())
        if position == "AT_TIMESTAMP" and timestamp is None:
            msg = (
                "KINESIS_START_POSITION=AT_TIMESTAMP needs KINESIS_START_TIMESTAMP (ISO 8601 with offset, or epoch ms)"
            )
            raise KinesisConfigError(msg)
        max_records = int(_number(env, "KINESIS_MAX_RECORDS", cls.max_records, 1, integer=True))
        if max_records > MAX_GET_RECORDS:
            msg = f"KINESIS_MAX_RECORDS={max_records} is above Kinesis' GetRecords limit: use 1..{MAX_GET_RECORDS}"
            raise KinesisConfigError(msg)
        bounded_raw = env.get("BOUNDED", "false").strip().lower()
        if bounded_raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise KinesisConfigError(f"BOUNDED={bounded_raw!r} is not a boolean: set it to true or false")
        return cls(
            streams=streams,
            endpoint_url=endpoint,
            region=region,
            start_position=position,
            start_timestamp=timestamp,
            discovery_seconds=_number(env, "KINESIS_DISCOVERY_SECONDS", cls.discovery_seconds, 0.1),
            idle_poll_seconds=_number(env, "KINESIS_IDLE_POLL_SECONDS", cls.idle_poll_seconds, _MIN_CALL_INTERVAL),
            max_records=max_records,
            bounded=bounded_raw in ("1", "true", "yes", "on"),
            sink_retry_seconds=_number(env, "KINESIS_SINK_RETRY_SECONDS", cls.sink_retry_seconds, 0),
        )


def _number(env: Mapping[str, str], name: str, default: float, minimum: float, integer: bool = False) -> float:
    raw = env.get(name, str(default)).strip()
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise KinesisConfigError(f"{name}={raw!r} is not {kind}: set it to e.g. {default}") from None
    if value < minimum:
        raise KinesisConfigError(f"{name}={raw} is below the minimum {minimum}: set it to e.g. {default}")
    return value


def _timestamp(raw: str) -> datetime | None:
    if not raw:
        return None
    try:
        if raw.isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        msg = f"KINESIS_START_TIMESTAMP={raw!r} is not a time: use ISO 8601 with offset (2026-01-31T08:00Z) or epoch ms"
        raise KinesisConfigError(msg)
    return parsed


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
    """Every shard of a stream (open and closed), following ListShards' NextToken paging."""
    shards: list[dict] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}  # with a token, StreamName must not be sent


def _where(endpoint_url: str | None, region: str) -> str:
    return endpoint_url or f"AWS Kinesis in {region}"


def check_streams(
    settings: KinesisSettings, streams: Sequence[str] | None = None, streams_setting: str = "KINESIS_STREAMS"
) -> None:
    """Fail fast at start with one line: unreachable endpoint, refused credentials, missing stream."""
    client = kinesis_client(settings.endpoint_url, settings.region, max_attempts=2)
    for name in streams if streams is not None else settings.streams:
        _describe(client, name, settings.endpoint_url, settings.region, streams_setting)


def _describe(client: Any, stream: str, endpoint_url: str | None, region: str, streams_setting: str) -> dict:
    where = _where(endpoint_url, region)
    try:
        return client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    except _CONNECTION_ERRORS:
        msg = f"cannot reach Kinesis at {where}: start it (make up) or fix KINESIS_ENDPOINT_URL"
        raise KinesisUnavailable(msg) from None
    except NoCredentialsError:
        msg = "no AWS credentials for Kinesis: provide them through boto3's chain (env, profile, role)"
        raise KinesisUnavailable(msg) from None
    except ClientError as exc:
        code = _code(exc)
        if code == "ResourceNotFoundException":
            msg = f"Kinesis stream {stream!r} does not exist at {where}: create it or fix {streams_setting}"
        else:
            msg = (
                f"Kinesis refused DescribeStreamSummary on {stream!r} at {where} ({code}): "
                "fix the AWS credentials or the IAM policy (see README, Kinesis)"
            )
        raise KinesisUnavailable(msg) from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


# ---------------------------------------------------------------------------- records


class KinesisRecord:
    """One Kinesis record, with confluent_kafka.Message's accessor names (see the module doc)."""

    __slots__ = ("_arrival_ms", "_data", "_key", "_seq", "_shard", "_stream")

    def __init__(self, stream: str, shard: str, sequence: str, key: str, data: bytes, arrival_ms: int) -> None:
        self._stream = stream
        self._shard = shard
        self._seq = sequence
        self._key = key
        self._data = data
        self._arrival_ms = arrival_ms

    def value(self) -> bytes:
        return self._data

    def key(self) -> bytes:
        return self._key.encode()

    def partition_key(self) -> str:
        return self._key

    def topic(self) -> str:
        return self._stream

    stream = topic

    def partition(self) -> str:
        return self._shard

    shard_id = partition

    def offset(self) -> str:
        return self._seq

    sequence_number = offset

    def timestamp(self) -> tuple[int, int]:
        return (2, self._arrival_ms)  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME: set by the service

    def error(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"KinesisRecord({self._stream}/{self._shard}@{self._seq}, key={self._key!r}, {len(self._data)} bytes)"


# ---------------------------------------------------------------------------- reading

X = TypeVar("X")
S = TypeVar("S")

# (stream name, records of one shard in sequence order, stream state) -> (items, new state)
BatchStep = Callable[[str, list[KinesisRecord], S], tuple[list[X], S]]
# Snapshot of one stream's positions: plain data, so it pickles across versions of this module.
# {"shards": {shard_id: {"pos": [kind, arg], "parents": [...]}}, "done": [shard_id, ...]}
Positions = dict[str, Any]


@dataclass
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    kind: str  # where to (re)start: AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, AT_TIMESTAMP, LATEST
    arg: str | int | None = None  # the sequence number, or the timestamp in epoch ms
    closed: bool = False  # listed with an EndingSequenceNumber
    iterator: str | None = field(default=None, repr=False)
    due: float = 0.0  # monotonic time of the next allowed call
    backoff: float = 0.0
    at_tip: bool = False  # bounded mode: read to the tip, not polled again


class _StreamReader(StatefulSourcePartition[X, tuple[Positions, S]], Generic[X, S]):
    def __init__(self, source: StatefulKinesisSource, stream: str, positions: Positions | None, state: S) -> None:
        self._src = source
        self._stream = stream
        self._step = source._step
        self._state = state
        self._client = source._client_factory()
        self._shards: dict[str, _Shard] = {}  # known, not finished
        self._done: set[str] = set()
        self._started_ms = int(time.time() * 1000)
        self._next_discovery = 0.0
        self._finished = False
        self._listed = False  # one ListShards went through
        self._fresh = positions is None
        self._rr = 0
        if positions is not None:
            self._done = set(positions.get("done", ()))
            for shard_id, entry in positions.get("shards", {}).items():
                kind, arg = entry["pos"]
                self._shards[shard_id] = _Shard(shard_id, tuple(entry["parents"]), kind, arg)
        self._discover(first=positions is None)

    # -- discovery

    def _list_shards(self) -> list[dict]:
        return list_shards(self._client, self._stream)

    def _discover(self, first: bool = False) -> bool:
        """Refresh the shard list; False if ListShards failed passingly (retried at the next discovery)."""
        self._next_discovery = time.monotonic() + self._src._discovery_seconds
        try:
            listed = self._list_shards()
        except ClientError as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException" or not (code in THROTTLING_CODES or code in TRANSIENT_CODES):
                self._check_stream()
                msg = f"Kinesis refused ListShards on stream {self._stream!r} ({code}): check the IAM policy"
                raise KinesisSourceError(msg) from None
            log.warning("Kinesis ListShards on %s failed (%s); retrying at the next discovery", self._stream, code)
            return False
        except _CONNECTION_ERRORS as exc:
            if first:
                where = _where(self._src._endpoint_url, self._src._region)
                msg = f"cannot reach Kinesis at {where}: start it (make up) or fix KINESIS_ENDPOINT_URL"
                raise KinesisUnavailable(msg) from None
            log.warning("Kinesis ListShards on %s failed (%s); retrying at the next discovery", self._stream, exc)
            return False
        listed_ids = {s["ShardId"] for s in listed}
        # The start position is for the first listing of a fresh start; later shards hold only new data.
        initial = self._fresh and not self._listed
        start_kind, start_arg = self._src._start if initial else ("TRIM_HORIZON", None)
        for info in listed:
            shard_id = info["ShardId"]
            closed = "EndingSequenceNumber" in info.get("SequenceNumberRange", {})
            if shard_id in self._done:
                continue
            known = self._shards.get(shard_id)
            if known is not None:
                if closed and not known.closed:
                    known.closed = True
                    known.at_tip = False  # closed since: read on to SHARD_END, then its children
                continue
            if initial and start_kind == "LATEST" and closed:
                self._done.add(shard_id)  # LATEST: nothing new will ever arrive in a closed shard
                continue
            parents = tuple(p for p in (info.get("ParentShardId"), info.get("AdjacentParentShardId")) if p)
            self._shards[shard_id] = _Shard(shard_id, parents, start_kind, start_arg, closed)
        # Finished shards no longer listed are past retention: their children need not wait for them.
        # (Unfinished ones are kept: a shard that is really gone fails GetShardIterator and is skipped there.)
        self._done &= listed_ids
        self._listed = True
        return True

    def _check_stream(self) -> None:
        """Raises KinesisUnavailable (one line) if the stream is missing or refused."""
        src = self._src
        _describe(self._client, self._stream, src._endpoint_url, src._region, src._streams_setting)

    def _ready(self, shard: _Shard) -> bool:
        return not any(p in self._shards for p in shard.parents)  # every parent read to SHARD_END (or gone)

    def _finish(self, shard: _Shard) -> None:
        self._shards.pop(shard.shard_id, None)
        self._done.add(shard.shard_id)
        try:
            MILLIS_BEHIND.remove(self._stream, shard.shard_id)
        except KeyError:
            pass

    # -- reading

    def next_batch(self) -> list[X]:
        if self._finished:
            raise StopIteration
        now = time.monotonic()
        if now >= self._next_discovery:
            self._discover()
        ready = [s for s in self._shards.values() if self._ready(s) and not s.at_tip]
        if ready:  # round-robin: no shard waits behind a busy one for ever
            self._rr = (self._rr + 1) % len(ready)
            ready = ready[self._rr :] + ready[: self._rr]
        items: list[X] = []
        budget = self._src._max_records
        for shard in ready:
            if shard.due > now:
                continue
            records = self._read(shard, now)
            if records:
                RECORDS_READ.labels(self._stream).inc(len(records))
                out, self._state = self._step(self._stream, records, self._state)
                items.extend(out)
                budget -= len(records)
                if budget <= 0:
                    break
        if self._src._bounded and self._complete():
            # A last look: shards split or merged meanwhile are read too.
            self._finished = self._discover() and self._complete()
        return items

    def _complete(self) -> bool:
        return self._listed and all(s.at_tip and not s.closed for s in self._shards.values())

    def _read(self, shard: _Shard, now: float) -> list[KinesisRecord]:
        if shard.iterator is None and not self._renew_iterator(shard, now):
            return []
        now = time.monotonic()  # the limits count from the call itself
        shard.due = now + _MIN_CALL_INTERVAL  # failed calls count against the 5/s too
        try:
            resp = self._client.get_records(ShardIterator=shard.iterator, Limit=self._src._max_records)
        except ClientError as exc:
            code = _code(exc)
            if code == "ExpiredIteratorException":  # iterators live 5 minutes
                RETRIES.labels(self._stream, "expired_iterator").inc()
                log.info("Kinesis iterator of %s/%s expired; renewing it", self._stream, shard.shard_id)
                shard.iterator = None
                return []  # renewed at the next call, 0.2 s on
            self._retry_or_raise(shard, now, code, "GetRecords")
            return []
        except _CONNECTION_ERRORS as exc:
            self._back_off(shard, now, "transient", str(exc))
            return []
        shard.backoff = 0.0
        raw = resp.get("Records", [])
        behind = resp.get("MillisBehindLatest")
        if behind is not None:
            MILLIS_BEHIND.labels(self._stream, shard.shard_id).set(behind)
        records = [
            KinesisRecord(
                self._stream,
                shard.shard_id,
                r["SequenceNumber"],
                r["PartitionKey"],
                r["Data"],
                int(r["ApproximateArrivalTimestamp"].timestamp() * 1000),
            )
            for r in raw
        ]
        if records:
            shard.kind, shard.arg = "AFTER_SEQUENCE_NUMBER", records[-1].offset()
        next_iterator = resp.get("NextShardIterator")
        if next_iterator is None:  # SHARD_END: the children may start
            self._finish(shard)
            for child in resp.get("ChildShards", []):
                child_id = child["ShardId"]
                if child_id not in self._shards and child_id not in self._done:
                    parents = tuple(child.get("ParentShards", ()))
                    self._shards[child_id] = _Shard(child_id, parents, "TRIM_HORIZON")
            return records
        shard.iterator = next_iterator
        idle = not records and behind == 0
        shard.due = now + (self._src._idle_poll_seconds if idle else _MIN_CALL_INTERVAL)
        if idle and self._src._bounded and not shard.closed:
            shard.at_tip = True
        return records

    def _position_args(self, shard: _Shard) -> dict[str, Any]:
        args: dict[str, Any] = {"ShardIteratorType": shard.kind}
        if shard.kind == "AFTER_SEQUENCE_NUMBER":
            args["StartingSequenceNumber"] = shard.arg
        elif shard.kind == "AT_TIMESTAMP":
            args["Timestamp"] = datetime.fromtimestamp(int(shard.arg or 0) / 1000, UTC)
        return args

    def _renew_iterator(self, shard: _Shard, now: float) -> bool:
        try:
            resp = self._client.get_shard_iterator(
                StreamName=self._stream, ShardId=shard.shard_id, **self._position_args(shard)
            )
        except ClientError as exc:
            code = _code(exc)
            if code in ("InvalidArgumentException", "ResourceNotFoundException") and shard.kind != "TRIM_HORIZON":
                log.warning(
                    "Kinesis position %s %s of %s/%s is out of retention or unknown (%s): resuming at TRIM_HORIZON",
                    shard.kind,
                    shard.arg,
                    self._stream,
                    shard.shard_id,
                    code,
                )
                POSITION_RESETS.labels(self._stream).inc()
                shard.kind, shard.arg = "TRIM_HORIZON", None
                return self._renew_iterator(shard, now)
            if code == "ResourceNotFoundException":  # the shard is gone (past retention), or the stream is
                self._check_stream()
                log.warning("Kinesis shard %s of %s is gone (past retention): skipped", shard.shard_id, self._stream)
                self._finish(shard)
                return False
            self._retry_or_raise(shard, now, code, "GetShardIterator")
            return False
        except _CONNECTION_ERRORS as exc:
            self._back_off(shard, now, "transient", str(exc))
            return False
        shard.iterator = resp["ShardIterator"]
        if shard.kind == "LATEST":
            # From now on "at the start time": a renewal or resume must not skip what arrives meanwhile.
            shard.kind, shard.arg = "AT_TIMESTAMP", self._started_ms
        return True

    def _retry_or_raise(self, shard: _Shard, now: float, code: str, call: str) -> None:
        if code in THROTTLING_CODES:
            self._back_off(shard, now, "throttled", code)
        elif code in TRANSIENT_CODES or code.startswith("5"):
            self._back_off(shard, now, "transient", code)
        else:
            msg = f"Kinesis refused {call} on {self._stream}/{shard.shard_id} ({code}): check the IAM policy"
            raise KinesisSourceError(msg)

    def _back_off(self, shard: _Shard, now: float, reason: str, detail: str) -> None:
        RETRIES.labels(self._stream, reason).inc()
        if shard.backoff == 0.0 and reason == "transient":  # one line per streak, not per retry
            log.warning(
                "Kinesis read of %s/%s failed (%s); retrying with backoff", self._stream, shard.shard_id, detail
            )
        shard.backoff = min(_BACKOFF_CAP, max(_BACKOFF_BASE, shard.backoff * 2))
        # Jitter: shards throttled together do not all come back at once; never above 5 calls/s.
        shard.due = now + max(_MIN_CALL_INTERVAL, random.uniform(shard.backoff / 2, shard.backoff))

    def next_awake(self) -> datetime | None:
        if self._finished:
            return None
        times = [s.due for s in self._shards.values() if self._ready(s) and not s.at_tip]
        wake = min([*times, self._next_discovery])
        delay = wake - time.monotonic()
        return None if delay <= 0 else datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> tuple[Positions, S]:
        shards = {}
        for s in self._shards.values():
            kind, arg = (s.kind, s.arg) if s.kind != "LATEST" else ("AT_TIMESTAMP", self._started_ms)  # not read yet
            shards[s.shard_id] = {"pos": [kind, arg], "parents": list(s.parents)}
        return {"shards": shards, "done": sorted(self._done)}, self._state

    def close(self) -> None:
        for shard_id in list(self._shards):
            try:
                MILLIS_BEHIND.remove(self._stream, shard_id)
            except KeyError:
                pass


class StatefulKinesisSource(FixedPartitionedSource[X, tuple[Positions, S]], Generic[X, S]):
    """Reads Kinesis `streams` and runs `step` on every GetRecords batch of every shard, keeping its state.

    One bytewax partition per stream (see the module doc for why and the limits).
    """

    def __init__(
        self,
        streams: Sequence[str],
        step: BatchStep,
        initial_state: S,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        start_position: str = "TRIM_HORIZON",
        start_timestamp: datetime | None = None,
        bounded: bool = False,
        discovery_seconds: float = 10.0,
        idle_poll_seconds: float = 1.0,
        max_records: int = MAX_GET_RECORDS,
        client_factory: Callable[[], Any] | None = None,
        streams_setting: str = "KINESIS_STREAMS",
    ) -> None:
        """`endpoint_url` None: AWS itself. `client_factory` builds each partition's boto3 client (tests wrap it).

        `streams_setting` is the setting named in the error for a missing stream.
        """
        if start_position not in START_POSITIONS:
            msg = f"start_position {start_position!r} is not one of {', '.join(START_POSITIONS)}"
            raise KinesisConfigError(msg)
        if start_position == "AT_TIMESTAMP" and start_timestamp is None:
            raise KinesisConfigError("start_position AT_TIMESTAMP needs start_timestamp")
        if len(set(streams)) != len(streams) or not streams:
            raise KinesisConfigError(f"streams must be distinct and non-empty, got {list(streams)}")
        self._streams = list(streams)
        self._step = step
        self._initial_state = initial_state
        self._endpoint_url = endpoint_url
        self._region = region
        ts_ms = int(start_timestamp.timestamp() * 1000) if start_timestamp is not None else None
        self._start: tuple[str, int | None] = (start_position, ts_ms)
        self._bounded = bounded
        self._discovery_seconds = discovery_seconds
        self._idle_poll_seconds = max(idle_poll_seconds, _MIN_CALL_INTERVAL)
        self._max_records = max(1, min(max_records, MAX_GET_RECORDS))
        self._client_factory = client_factory or (lambda: kinesis_client(endpoint_url, region))
        self._streams_setting = streams_setting

    @classmethod
    def from_settings(
        cls,
        settings: KinesisSettings,
        step: BatchStep,
        initial_state: S,
        streams: Sequence[str] | None = None,
        streams_setting: str = "KINESIS_STREAMS",
    ) -> StatefulKinesisSource:
        return cls(
            list(streams) if streams is not None else list(settings.streams),
            step,
            initial_state,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            start_position=settings.start_position,
            start_timestamp=settings.start_timestamp,
            bounded=settings.bounded,
            discovery_seconds=settings.discovery_seconds,
            idle_poll_seconds=settings.idle_poll_seconds,
            max_records=settings.max_records,
            streams_setting=streams_setting,
        )

    def list_parts(self) -> list[str]:
        return list(self._streams)

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[Positions, S] | None) -> _StreamReader[X, S]:
        positions, state = resume_state if resume_state is not None else (None, self._initial_state)
        return _StreamReader(self, for_part, positions, state)
