"""A bytewax sink writing `OutputRecord`s to one Kinesis stream, each record once across crashes.

Use::

    sink = KinesisSink.from_settings(settings, "alerts", namespace=resume.sink_namespace, job="booking")
    op.output("out", op.key_on("key", records, lambda r: r.key.decode()), sink)

The wire (records.py): the partition key is the record's key; the data is its
value, a JSON object, with `"outputId"` added as the first field: the record's unit
id (`#<n>` appended for further records of one unit in an epoch). A reader can drop a
record whose `outputId` it has already seen.

Partitions: `partitions` fixed sink partitions (`p00`, `p01`, ...; crc32 of the key
picks one), so a key's records go through one partition, in order. A partition sends
each batch in PutRecords calls of at most 500 records and 5 MiB, holding at most one
record of a key: a key's next record is sent once the one before is confirmed, so a
partial failure never reorders a key's records (throughput per key: one record per
round trip). Records failing inside a call (throttled, internal error) are sent again;
whole calls that were surely not taken (throttled, no connection made) likewise, with
exponential backoff and jitter until `retry_seconds` (KINESIS_SINK_RETRY_SECONDS,
default 300) have passed since the batch started. A whole call whose outcome is
unknown (a timeout or closed connection after sending, a 5xx) is settled by reading
the stream back: the records found are confirmed, only the others are sent again.
Anything refused for good (a missing stream, refused credentials or IAM, a record over
1 MiB: `max_record_bytes` says what fits, larger ones must go to the dead letters) or
still failing past the budget stops the job with one line (logged before raising).

Exactly once (connectors/sinks/fence.py, docs/architecture.md "Exactly-once"): records
are written as they come, and confirmed before `snapshot()`. The snapshot is
`CommitState(namespace, next_seq, position, fence)` with position = per output shard
the highest sequence number this partition saw confirmed, plus `since`, a time before
anything written after the snapshot arrived (the snapshot's time less a minute for
clock skew), for shards it had written nothing to. On resume the partition reads every
shard back (children of resharded shards too) from those positions, keeps the records
it routes (crc32 of their partition key) that carry an `outputId`, and fences those ids:
the replay drops them (fence = restored fence + found). A partition without state
(its run's first epoch was never stored) reads back from its run namespace's creation
time (recovery_store.new_namespace), or nothing if the namespace has no time in it.

What remains, honestly:
- a zombie writer: Kinesis cannot fence a stale process. A writer presumed dead that
  still runs (a paused pod) can put records after the replay read the stream back;
  they are repeats of ids already there;
- a PutRecords call still in flight at the server after our client gave up on it can
  land after the read-back that settles it, and its records are then sent twice;
- records another writer put with our ids and keys are taken for ours.
A reader that needs strictly no repeats drops a repeated `outputId` (one id per record).

Metrics: `waxstreams_kinesis_records_written_total{stream}`, `..._put_retries_total{stream}`
(records sent again), `..._fenced_total{stream}` (records a replay found already written),
`..._ambiguous_puts_total{stream}` (calls settled by reading back).
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as NoConnection
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from prometheus_client import Counter

from connectors.sinks.fence import CommitState, Fence
from connectors.transports.contract import OutputRecord
from connectors.transports.kinesis.proxy import THROTTLING_CODES, TRANSIENT_CODES, error_code, kinesis_client
from connectors.transports.kinesis.readback import read_back, refused
from connectors.transports.kinesis.records import (
    KinesisSinkError,
    Pending,
    Queues,
    RecordIds,
    envelope,
    later,
    max_record_bytes,
    namespace_start_ms,
    record_id,
    route,
)
from connectors.transports.kinesis.settings import KinesisSettings

log = logging.getLogger(__name__)

RECORDS_WRITTEN = Counter("waxstreams_kinesis_records_written_total", "Records PutRecords accepted", ["stream"])
PUT_RETRIES = Counter("waxstreams_kinesis_put_retries_total", "Records sent again after a failure", ["stream"])
FENCED = Counter("waxstreams_kinesis_fenced_total", "Replayed records found already written", ["stream"])
AMBIGUOUS = Counter("waxstreams_kinesis_ambiguous_puts_total", "PutRecords calls settled by reading back", ["stream"])

_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 5.0
CLOCK_SKEW_MS = 60_000  # how far Kinesis' arrival times may lag our clock

State = dict[str, Any]
Result = tuple[str, str] | str  # (shard, sequence number) once confirmed, else why not


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _KinesisSinkPartition(StatefulSinkPartition[OutputRecord, State]):
    def __init__(self, sink: KinesisSink, part: str, index: int, state: CommitState, fresh: bool) -> None:
        self._sink = sink
        self._stream = sink.stream
        self._part = part
        self._index = index
        self._namespace = state.namespace
        self._next_seq = state.next_seq
        self._client = sink._client_factory()
        position = state.position or {}
        self._positions: dict[str, str] = dict(position.get("shards", {}))
        if fresh:
            start = namespace_start_ms(state.namespace)
            since = None if start is None else start - CLOCK_SKEW_MS
        else:
            since = position.get("since")
        self._fence = Fence(state.fence)
        self._ids = RecordIds()
        try:
            self._resume(since)
        except KinesisSinkError as exc:
            log.error("%s", exc)
            raise

    def _own_id(self, key: str, data: bytes) -> str | None:
        return record_id(data) if route(key, self._sink.partitions) == self._index else None

    def _read_back(self, since_ms: int | None, own_id: Callable[[str, bytes], str | None], deadline: float) -> Any:
        back = read_back(
            self._client,
            self._stream,
            self._positions,
            since_ms,
            own_id,
            deadline=deadline,
            budget=self._sink.retry_seconds,
        )
        # Everything of ours up to each shard's tip is now known: later reads start there.
        self._positions = {s: seq for s, seq in self._positions.items() if s in back.shards}
        for shard, tip in back.tips.items():
            self._positions[shard] = later(self._positions.get(shard), tip)
        return back

    def _resume(self, since_ms: int | None) -> None:
        if not self._positions and since_ms is None:
            return
        started = time.monotonic()
        back = self._read_back(since_ms, self._own_id, started + self._sink.retry_seconds)
        self._fence.add(back.found)
        log.info(
            "Kinesis %r sink partition %s (job %r): read %d shard(s) back in %.1fs; %d record(s) written after the "
            "restored snapshot will not be sent again; fence %d",
            self._stream,
            self._part,
            self._sink.job,
            len(back.shards),
            time.monotonic() - started,
            len(back.found),
            len(self._fence),
        )

    def write_batch(self, values: list[OutputRecord]) -> None:
        try:
            self._write(values)
        except KinesisSinkError as exc:
            log.error("%s", exc)
            raise

    def _write(self, values: list[OutputRecord]) -> None:
        pending = []
        for record in values:
            rid = self._ids.next(record.unit)
            if not self._fence.passes(rid):
                FENCED.labels(self._stream).inc()
                continue
            try:
                key = record.key.decode()
            except UnicodeDecodeError:
                msg = f"Kinesis partition key {record.key[:40]!r} for stream {self._stream!r} is not UTF-8"
                raise KinesisSinkError(msg) from None
            pending.append(Pending(rid, key, envelope(self._stream, rid, key, record.value)))
        self._send(Queues(pending))

    def _send(self, queues: Queues) -> None:
        deadline = time.monotonic() + self._sink.retry_seconds
        backoff = 0.0
        while queues:
            call = queues.next_call()
            sent_ms = _now_ms()
            outcome = self._attempt(call)
            if isinstance(outcome, tuple):  # the answer was lost: what landed is in the stream
                reason = outcome[0]
                AMBIGUOUS.labels(self._stream).inc()
                outcome = self._settle(call, sent_ms, deadline)
                landed = sum(1 for c in outcome if isinstance(c, tuple))
                log.warning(
                    "Kinesis PutRecords to %r: the answer was lost (%s); read back: %d of %d record(s) landed",
                    self._stream,
                    reason,
                    landed,
                    len(call),
                )
            if isinstance(outcome, list):
                failed = []
                for p, result in zip(call, outcome, strict=True):
                    if isinstance(result, tuple):
                        queues.confirmed(p)
                        self._positions[result[0]] = later(self._positions.get(result[0]), result[1])
                    else:
                        failed.append(p)
                        reason = result
                RECORDS_WRITTEN.labels(self._stream).inc(len(call) - len(failed))
                if not failed:
                    backoff = 0.0
                    continue
            else:
                failed, reason = call, outcome
            PUT_RETRIES.labels(self._stream).inc(len(failed))
            backoff = min(_BACKOFF_CAP, max(_BACKOFF_BASE, backoff * 2))
            pause = random.uniform(backoff / 2, backoff)
            if time.monotonic() + pause > deadline:
                msg = (
                    f"Kinesis PutRecords to {self._stream!r}: {len(queues)} record(s) still failing ({reason}) "
                    f"after {self._sink.retry_seconds:g}s of retries: check the stream's capacity and that Kinesis "
                    "is reachable, or raise KINESIS_SINK_RETRY_SECONDS"
                )
                raise KinesisSinkError(msg)
            time.sleep(pause)  # a sink may block: bytewax waits for the write

    def _attempt(self, call: list[Pending]) -> list[Result] | str | tuple[str]:
        """Send once. Per record (shard, sequence number), or why it was not taken; a reason if
        the whole call was surely not taken; `(reason,)` if its outcome is unknown."""
        try:
            resp = self._client.put_records(
                StreamName=self._stream, Records=[{"PartitionKey": p.key, "Data": p.data} for p in call]
            )
        except ClientError as exc:
            code = error_code(exc)
            if code in THROTTLING_CODES:
                return code
            if code in TRANSIENT_CODES or code.startswith("5"):
                return (code,)
            raise refused(self._stream, "PutRecords", code) from None
        except NoCredentialsError:
            msg = "no AWS credentials for Kinesis: provide them through boto3's chain (env, profile, role)"
            raise KinesisSinkError(msg) from None
        except NoConnection as exc:  # no connection made (refused, connect timeout, TLS): nothing went out
            return type(exc).__name__
        except HTTPClientError as exc:  # sent, and the answer lost (read timeout, connection closed)
            return (type(exc).__name__,)
        return [r["ErrorCode"] if r.get("ErrorCode") else (r["ShardId"], r["SequenceNumber"]) for r in resp["Records"]]

    def _settle(self, call: list[Pending], sent_ms: int, deadline: float) -> list[Result]:
        """Which records of a call whose answer was lost are in the stream: read it back."""
        sent_keys = {p.id: p.key for p in call}

        def sent(key: str, data: bytes) -> str | None:
            rid = record_id(data)
            return rid if rid is not None and sent_keys.get(rid) == key else None

        back = self._read_back(sent_ms - CLOCK_SKEW_MS, sent, deadline)
        return [back.found.get(p.id, "not found when read back") for p in call]

    def snapshot(self) -> State:
        self._ids.epoch_done()
        self._next_seq += 1
        position = {"shards": dict(self._positions), "since": _now_ms() - CLOCK_SKEW_MS}
        return CommitState(self._namespace, self._next_seq, position, self._fence.units()).to_snapshot()

    def close(self) -> None:
        pass


class KinesisSink(FixedPartitionedSink[OutputRecord, State]):
    """Writes `OutputRecord`s (keyed by their key, as str) to `stream`, each once (see the module doc)."""

    def __init__(
        self,
        stream: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        retry_seconds: float = 300.0,
        partitions: int = 4,
        namespace: str = "",
        job: str = "",
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        """`endpoint_url` None: AWS itself. `namespace`: the recovery store's run namespace, for
        partitions without state. `client_factory` builds each partition's boto3 client (tests wrap it)."""
        if partitions < 1:
            msg = f"Kinesis sink for {stream!r}: partitions={partitions}, it must be at least 1"
            raise ValueError(msg)
        self.stream = stream
        self.retry_seconds = retry_seconds
        self.partitions = partitions
        self.namespace = namespace
        self.job = job
        # Our retry loop decides; botocore's own retries would sleep outside the budget.
        self._client_factory = client_factory or (lambda: kinesis_client(endpoint_url, region))

    @classmethod
    def from_settings(
        cls, settings: KinesisSettings, stream: str, *, partitions: int = 4, namespace: str = "", job: str = ""
    ) -> KinesisSink:
        return cls(
            stream,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            retry_seconds=settings.sink_retry_seconds,
            partitions=partitions,
            namespace=namespace,
            job=job,
        )

    @staticmethod
    def max_record_bytes() -> int:
        return max_record_bytes()

    def list_parts(self) -> list[str]:
        # Zero-padded: bytewax routes `part_fn(key) % n` into the names sorted as strings.
        width = max(2, len(str(self.partitions - 1)))
        return [f"p{i:0{width}d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: State | None) -> _KinesisSinkPartition:
        state = CommitState.from_snapshot(resume_state, self.namespace)
        return _KinesisSinkPartition(self, for_part, self.list_parts().index(for_part), state, resume_state is None)
