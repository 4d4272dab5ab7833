"""Reading one Kinesis stream: every shard, round-robin, through a KinesisProxy, with a ShardTracker.

One bytewax partition per stream reads all its shards (source.py says why). It discovers
new shards with ListShards every `discovery_seconds` and from the ChildShards of a
parent's SHARD_END; the tracker says which shards may be read (parents first). The step
is called once per GetRecords answer, so all records of one call come from one shard.

Limits honoured: at most 5 GetRecords calls/s per shard (and `idle_poll_seconds` between
calls at the tip); throttling (ProvisionedThroughputExceeded, LimitExceeded, KMS
throttling) and transient failures (5xx, connection errors) back off exponentially with
jitter per shard, without blocking; expired iterators are renewed from the last sequence
number. A position out of retention resumes the shard at TRIM_HORIZON with one warning
line; a shard that is gone altogether counts as read. `next_awake` tells bytewax when the
next shard is due, so an idle stream is not busy-polled.

Bounded mode: each open shard is read until a read comes back empty with
MillisBehindLatest == 0, each closed one to SHARD_END (then its children), then it stops.

Metrics: `waxstreams_kinesis_millis_behind_latest{stream,shard}` (the Kinesis lag),
`waxstreams_kinesis_records_read_total{stream}`, `waxstreams_kinesis_retries_total{stream,reason}`,
`waxstreams_kinesis_position_resets_total{stream}`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from bytewax.inputs import StatefulSourcePartition
from prometheus_client import Counter, Gauge

from connectors.errors import WaxstreamsError
from connectors.transports.batch import RecordBatch
from connectors.transports.kinesis.proxy import (
    EXPIRED_ITERATOR,
    INVALID_ARGUMENT,
    NOT_FOUND,
    THROTTLED,
    THROTTLING_CODES,
    TRANSIENT,
    TRANSIENT_CODES,
    UNREACHABLE,
    KinesisProxy,
    KinesisUnavailable,
    ProxyError,
    unavailable,
    where,
)
from connectors.transports.kinesis.record import KinesisRecord, record_batch
from connectors.transports.kinesis.settings import MAX_GET_RECORDS, MIN_CALL_INTERVAL
from connectors.transports.kinesis.tracker import Position, Positions, ShardTracker, TrackedShard

log = logging.getLogger(__name__)

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

BACKOFF_BASE = 0.2
BACKOFF_CAP = 10.0

X = TypeVar("X")
S = TypeVar("S")

# (stream name, records of one shard in sequence order, stream state) -> (items, new state)
BatchStep = Callable[[str, RecordBatch, S], tuple[list[X], S]]


class KinesisSourceError(WaxstreamsError, RuntimeError):
    """Kinesis refused a read for good (not throttling, not transient); the message says why."""


@dataclass(frozen=True)
class ReadOptions:
    """How every stream of a source is read (StatefulKinesisSource's parameters)."""

    start: Position = ("TRIM_HORIZON", None)  # a fresh start's position; AT_TIMESTAMP with epoch ms
    bounded: bool = False
    discovery_seconds: float = 10.0
    idle_poll_seconds: float = 1.0
    max_records: int = MAX_GET_RECORDS
    endpoint_url: str | None = None  # named in error lines
    region: str = "us-east-1"
    streams_setting: str = "KINESIS_STREAMS"  # the setting named for a missing stream


def next_backoff(backoff: float) -> float:
    """Doubles per failure in a streak: 0.2, 0.4, 0.8 ... 10 s."""
    return min(BACKOFF_CAP, max(BACKOFF_BASE, backoff * 2))


@dataclass
class _Calls:
    """A shard's calls in flight: its iterator and when it may be called again."""

    iterator: str | None = field(default=None, repr=False)
    due: float = 0.0  # clock time of the next allowed call
    backoff: float = 0.0


class StreamReader(StatefulSourcePartition[X, tuple[Positions, S]], Generic[X, S]):
    """Reads one stream's shards and runs `step` on every GetRecords answer, keeping its state.

    `clock` (monotonic seconds), `wall` (epoch seconds) and `jitter` (random.uniform) are for tests that drive time.
    """

    def __init__(
        self,
        options: ReadOptions,
        stream: str,
        proxy: KinesisProxy,
        step: BatchStep,
        positions: Positions | None,
        state: S,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._opts = options
        self._stream = stream
        self._proxy = proxy
        self._step = step
        self._state = state
        self._clock = clock
        self._jitter = jitter
        self._tracker = ShardTracker(options.start, positions)
        self._calls: dict[str, _Calls] = {}
        self._started_ms = int(wall() * 1000)
        self._next_discovery = 0.0
        self._finished = False
        self._rr = 0
        self._discover(first=positions is None)

    # -- discovery

    def _discover(self, first: bool = False) -> bool:
        """Refresh the shard list; False if ListShards failed passingly (retried at the next discovery)."""
        self._next_discovery = self._clock() + self._opts.discovery_seconds
        try:
            listed = self._proxy.list_shards(self._stream)
        except ProxyError as exc:
            if exc.reason == UNREACHABLE:
                if first:
                    at = where(self._opts.endpoint_url, self._opts.region)
                    msg = f"cannot reach Kinesis at {at}: start it (make up) or fix KINESIS_ENDPOINT_URL"
                    raise KinesisUnavailable(msg) from None
            elif exc.reason == NOT_FOUND or exc.detail not in THROTTLING_CODES | TRANSIENT_CODES:
                self._check_stream()
                msg = f"Kinesis refused ListShards on stream {self._stream!r} ({exc.detail}): check the IAM policy"
                raise KinesisSourceError(msg) from None
            log.warning(
                "Kinesis ListShards on %s failed (%s); retrying at the next discovery", self._stream, exc.detail
            )
            return False
        self._tracker.on_listing(listed)
        return True

    def _check_stream(self) -> None:
        """Raises KinesisUnavailable (one line) if the stream is missing or refused."""
        try:
            self._proxy.check_stream(self._stream)
        except ProxyError as exc:
            at = where(self._opts.endpoint_url, self._opts.region)
            raise unavailable(exc, self._stream, at, self._opts.streams_setting) from None

    def _shard_calls(self, shard_id: str) -> _Calls:
        return self._calls.setdefault(shard_id, _Calls())

    def _finish(self, shard_id: str) -> None:
        self._tracker.finish(shard_id)
        self._calls.pop(shard_id, None)
        try:
            MILLIS_BEHIND.remove(self._stream, shard_id)
        except KeyError:
            pass

    # -- reading

    def next_batch(self) -> list[X]:
        if self._finished:
            raise StopIteration
        now = self._clock()
        if now >= self._next_discovery:
            self._discover()
        ready = self._tracker.readable()
        if ready:  # round-robin: no shard waits behind a busy one for ever
            self._rr = (self._rr + 1) % len(ready)
            ready = ready[self._rr :] + ready[: self._rr]
        items: list[X] = []
        budget = self._opts.max_records
        for shard in ready:
            if self._shard_calls(shard.shard_id).due > now:
                continue
            records = self._read(shard, now)
            if records:
                RECORDS_READ.labels(self._stream).inc(len(records))
                batch = record_batch(self._stream, shard.shard_id, records)
                out, self._state = self._step(self._stream, batch, self._state)
                items.extend(out)
                budget -= len(records)
                if budget <= 0:
                    break
        if self._opts.bounded and self._tracker.complete():
            # A last look: shards split or merged meanwhile are read too.
            self._finished = self._discover() and self._tracker.complete()
        return items

    def _read(self, shard: TrackedShard, now: float) -> list[KinesisRecord]:
        calls = self._shard_calls(shard.shard_id)
        if calls.iterator is None and not self._renew_iterator(shard, calls, now):
            return []
        now = self._clock()  # the limits count from the call itself
        calls.due = now + MIN_CALL_INTERVAL  # failed calls count against the 5/s too
        try:
            page = self._proxy.get_records(self._stream, shard.shard_id, calls.iterator or "", self._opts.max_records)
        except ProxyError as exc:
            if exc.reason == EXPIRED_ITERATOR:  # iterators live 5 minutes
                RETRIES.labels(self._stream, "expired_iterator").inc()
                log.info("Kinesis iterator of %s/%s expired; renewing it", self._stream, shard.shard_id)
                calls.iterator = None
                return []  # renewed at the next call, 0.2 s on
            self._retry_or_raise(shard, calls, now, exc)
            return []
        calls.backoff = 0.0
        if page.millis_behind is not None:
            MILLIS_BEHIND.labels(self._stream, shard.shard_id).set(page.millis_behind)
        records = page.records
        if records:
            self._tracker.read_up_to(shard.shard_id, records[-1].offset())
        if page.next_iterator is None:  # SHARD_END: the children may start
            self._finish(shard.shard_id)
            self._tracker.add_children(page.children)
            return records
        calls.iterator = page.next_iterator
        idle = not records and page.millis_behind == 0
        calls.due = now + (self._opts.idle_poll_seconds if idle else MIN_CALL_INTERVAL)
        if idle and self._opts.bounded:
            self._tracker.reached_tip(shard.shard_id)
        return records

    def _renew_iterator(self, shard: TrackedShard, calls: _Calls, now: float) -> bool:
        try:
            calls.iterator = self._proxy.shard_iterator(self._stream, shard.shard_id, shard.kind, shard.arg)
        except ProxyError as exc:
            if exc.reason in (INVALID_ARGUMENT, NOT_FOUND) and shard.kind != "TRIM_HORIZON":
                log.warning(
                    "Kinesis position %s %s of %s/%s is out of retention or unknown (%s): resuming at TRIM_HORIZON",
                    shard.kind,
                    shard.arg,
                    self._stream,
                    shard.shard_id,
                    exc.detail,
                )
                POSITION_RESETS.labels(self._stream).inc()
                self._tracker.restart_at_trim_horizon(shard.shard_id)
                return self._renew_iterator(shard, calls, now)
            if exc.reason == NOT_FOUND:  # the shard is gone (past retention), or the stream is
                self._check_stream()
                log.warning("Kinesis shard %s of %s is gone (past retention): skipped", shard.shard_id, self._stream)
                self._finish(shard.shard_id)
                return False
            self._retry_or_raise(shard, calls, now, exc)
            return False
        self._tracker.iterator_taken(shard.shard_id, self._started_ms)
        return True

    def _retry_or_raise(self, shard: TrackedShard, calls: _Calls, now: float, exc: ProxyError) -> None:
        if exc.reason == THROTTLED:
            self._back_off(shard, calls, now, "throttled", exc.detail)
        elif exc.reason in (TRANSIENT, UNREACHABLE):
            self._back_off(shard, calls, now, "transient", exc.detail)
        else:
            msg = f"Kinesis refused {exc.call} on {self._stream}/{shard.shard_id} ({exc.detail}): check the IAM policy"
            raise KinesisSourceError(msg)

    def _back_off(self, shard: TrackedShard, calls: _Calls, now: float, reason: str, detail: str) -> None:
        RETRIES.labels(self._stream, reason).inc()
        if calls.backoff == 0.0 and reason == "transient":  # one line per streak, not per retry
            log.warning(
                "Kinesis read of %s/%s failed (%s); retrying with backoff", self._stream, shard.shard_id, detail
            )
        calls.backoff = next_backoff(calls.backoff)
        # Jitter: shards throttled together do not all come back at once; never above 5 calls/s.
        calls.due = now + max(MIN_CALL_INTERVAL, self._jitter(calls.backoff / 2, calls.backoff))

    def next_awake(self) -> datetime | None:
        if self._finished:
            return None
        times = [self._shard_calls(s.shard_id).due for s in self._tracker.readable()]
        wake = min([*times, self._next_discovery])
        delay = wake - self._clock()
        return None if delay <= 0 else datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> tuple[Positions, S]:
        return self._tracker.snapshot(self._started_ms), self._state

    def close(self) -> None:
        for shard_id in list(self._tracker.shards):
            try:
                MILLIS_BEHIND.remove(self._stream, shard_id)
            except KeyError:
                pass
