"""Partitioned, exactly-once S3 sink writing Parquet or CSV through polars (docs/architecture.md, section 5).

Every object, once it can be listed, is final: nothing is ever deleted or rewritten, so
a reader that lists and reads the objects at any instant (polars, DuckDB, Athena, a
new-files ingester) sees each row at most once, and never sees one go away.

Protocol per sink partition (the commit-ahead protocol of `connectors/sinks/fence.py`;
its snapshot is `CommitState(namespace, next_seq, None, fence)`):
1. rows are buffered; complete folders are written as the next `seq` once there are
   EARLY_WRITE_FOLDERS of them or EARLY_WRITE_ROWS rows in them, in the background,
   while the job goes on; at a snapshot (or close) the rest is written and the
   snapshot waits for every write in flight before it records `seq`;
2. each write first puts a manifest `<prefix>/_sink/<partition>/<namespace>/<seq>.json`
   naming its objects and each object's units (`s3_manifests.py`), then the objects;
   every PUT only if its key is free (S3 conditional write, `If-None-Match: *`): a
   taken manifest key means another writer of this partition, and this one stops;
3. on (re)start from `next_seq = K` with a fence, the manifests numbered K or more are
   writes a crashed attempt made after the restored snapshot. Their objects stay; the
   units (`unit_columns`: for the impressions job, (movieId, windowStart)) of those that
   landed join the fence, the replay drops its rows of fenced units (each leaves the
   fence once dropped), and numbering goes on past the newest such seq. A key that never
   landed is claimed with an empty object, so the crashed attempt's PUT, if still on its
   way, fails instead of landing beside the replay's rows; a claim holds no units.
The fence is in every snapshot until the replay passes each unit, so a resume that stores
a snapshot before re-reaching a unit does not make the next resume forget it. Skipping by
unit, not by seq, because a replay cuts epochs differently (they are wall-clock).

The namespace keeps runs apart: only manifests of the run being resumed are ever read.
A partition without restored state takes the namespace of its recovery store
(`connectors/recovery_store/`), so a new store, or a run without one, never mistakes
another run's output for its own: it appends. Older states resume too: `(namespace, seq)`
with an empty fence, and an `int` (stores written before namespaces existed, or a sink
built without one) in the legacy namespace, manifests directly in `<prefix>/_sink/<partition>/`.
A run that starts without state checks the prefix first (`s3_manifests.check_existing_output`).

Layers: the S3 client and its retries are `s3_client.py`, the manifest log `s3_manifests.py`,
the data PUTs `s3_client.NativePut`; this module buffers, writes and resumes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

import polars as pl
from botocore.exceptions import ClientError
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from prometheus_client import Counter

from connectors.sinks.fence import LEGACY_NAMESPACE, CommitState  # legacy: manifests directly in `_sink/<partition>/`
from connectors.sinks.object_bodies import decode, drop_units, encode, encoded_in_turn
from connectors.sinks.rows import ObjectRows, in_unit_order, partition_names, stable_partition
from connectors.sinks.s3_client import NativePut, S3Location, S3SinkError, key_taken, with_retries
from connectors.sinks.s3_manifests import ManifestLog, fence_of, manifest_body, units_of_runs, visible_of

log = logging.getLogger(__name__)

OBJECTS_WRITTEN = Counter("waxstreams_s3_objects_written_total", "Data objects written (committed or not)")
ROWS_WRITTEN = Counter("waxstreams_s3_rows_written_total", "Rows written (committed or not)")
UNITS_SKIPPED = Counter(
    "waxstreams_s3_replayed_units_skipped_total", "Replayed units found already written after the restored snapshot"
)

FORMATS = ("parquet", "csv")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The snapshot: `CommitState.to_snapshot()`; stores of older releases hold `(namespace, next_seq)`
# or a bare `next_seq` (the legacy namespace).
SinkState = dict[str, Any] | int | tuple[str, int]
# Object metadata of the empty object a resume puts where a crashed write's object never landed.
CLAIM_METADATA = "waxstreams-claim"


# Complete folders are written in the background, not waiting for the snapshot, once
# they hold this many rows or are this many (their objects are the same either way; a
# write costs one manifest PUT more, small beside several objects); and all buffered rows
# are written past the buffer limit (a memory bound).
EARLY_WRITE_ROWS = 20_000
EARLY_WRITE_FOLDERS = 4
BUFFER_LIMIT_ROWS = 1_000_000


class _S3SinkPartition(StatefulSinkPartition[ObjectRows, SinkState]):
    def __init__(self, sink: PartitionedS3Sink, partition: str, state: CommitState) -> None:
        self._sink = sink
        self._location = sink.location
        self._partition = partition
        self._namespace = state.namespace
        self._next_seq = state.next_seq
        self._client = sink.client if sink.client is not None else self._location.client()
        # Data objects and manifests (all PUTs) are sent by obstore, without Python in the request (NativePut).
        path_style = bool(self._location.endpoint_url)
        self._puts = NativePut(self._client, path_style=path_style) if sink.direct_put else self._client
        self._writer = uuid.uuid4().hex[:8]  # object names are never reused across runs
        self._empty = encode(pl.DataFrame(schema=sink.schema), sink.fmt)  # what claims a key (`_landed_units`)
        self._buffer: dict[str, list[pl.DataFrame]] = defaultdict(list)
        self._folder_rows: dict[str, int] = defaultdict(int)  # buffered rows by folder
        self._complete: set[str] = set()  # buffered folders that get no more rows (ObjectRows.complete)
        self._failed = False
        # Writes run while the job goes on; a snapshot waits only for what is still in flight.
        self._writes = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"s3-{partition}-seq")
        self._in_flight: list[Future[tuple[int, dict[str, Any]]]] = []
        self._uploads = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"s3-{partition}")
        self._manifests = ManifestLog(
            self._client,
            self._location,
            partition,
            self._namespace,
            sink.manifests_per_segment,
            sink.give_up_after,
            self._puts,
        )
        # The fence, by object folder: units committed past the restored snapshot (by the restored
        # fence, or found by `_resume`) that the replay has not reached; only parts in these folders
        # are looked at, and a unit goes once its replay has been dropped.
        self._visible: dict[str, set[tuple]] = visible_of(state.fence)
        # Its S3 listing runs while the job goes on (bytewax builds partitions one by one); what
        # uses the state it sets waits for it first, and gets its error if it failed.
        self._resuming = self._writes.submit(self._resume)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        return with_retries(call, what, self._location, self._sink.give_up_after)

    def _resume(self) -> None:
        """Find what this run's namespace wrote after the snapshot we resume from: it stays.

        Those objects may already have been read, so they are final: their units join the
        restored fence in `_visible`, which the replay drops, and numbering goes on past the
        newest seq. The manifests name each object's units; only those of older releases
        make it read the objects (`ManifestLog.writes_from` says which manifests are listed).
        """
        # Seq -> objects of the writes at or past the restored seq; object -> its units, as its manifest says.
        past, listed = self._manifests.writes_from(self._next_seq)
        fenced = sum(map(len, self._visible.values()))
        if past:
            objects = [key for seq in sorted(past) for key in past[seq]]
            found = self._uploads.map(lambda key: self._landed_units(key, listed.get(key)), objects)
            for key, units in zip(objects, found, strict=True):
                if units:
                    self._visible.setdefault(key.rsplit("/", 1)[0], set()).update(units)
            self._next_seq = max(past) + 1  # a manifest key is never written twice
        run = f" (run {self._namespace})" if self._namespace else ""
        if past:
            log.info(
                "%s%s: seqs %s written after the restored snapshot stay (%d units already visible, %d of them "
                "fenced by the snapshot); the replay skips them",
                self._partition,
                run,
                ",".join(map(str, sorted(past))),
                sum(map(len, self._visible.values())),
                fenced,
            )
        elif fenced:
            log.info(
                "%s%s: %d units fenced by the restored snapshot; the replay skips them", self._partition, run, fenced
            )
        self._manifests.compact_if_due(self._next_seq)

    def _landed_units(self, key: str, listed: list[tuple] | None) -> set[tuple]:
        """The units in an object of a write past the restored snapshot (`listed` by its
        manifest, else read from the object); none if it never landed.

        A key that is not there is claimed with an empty object (PUT if none exists), so
        the crashed write's PUT, should it still land, fails instead of doubling the
        rows the replay writes anew; if that PUT landed first, the claim fails and its
        units count as visible. A claim an earlier resume made holds no units.
        """
        bucket = self._location.bucket

        def find() -> dict | None:
            # A LIST, not a GET: without an unconditioned s3:ListBucket a missing key answers 403, not 404.
            listing = self._client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return next((entry for entry in listing.get("Contents", []) if entry["Key"] == key), None)

        def read() -> bytes:
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()

        def claimed() -> bool:
            return CLAIM_METADATA in self._client.head_object(Bucket=bucket, Key=key).get("Metadata", {})

        entry = self._call("list object", find)
        if entry is None and self._call("claim object", partial(self._put_new, key, self._empty, claim=True)):
            return set()
        if listed is not None:
            # Claims hold no rows, so they are small: only a small object can be one.
            small = entry is None or entry["Size"] <= 4 * len(self._empty) + 4096
            return set() if small and self._call("look at object", claimed) else set(listed)
        body = self._call("read object", read)
        frame = decode(body, self._sink.fmt, self._sink.schema)
        return set(frame.select(self._sink.unit_columns).unique().rows())

    def _put_new(self, key: str, body: bytes, *, claim: bool = False) -> bool:
        """PUT only if the key is free (S3 conditional write); whether this call's body is the one stored.

        A data write finding its key taken is either its own earlier attempt (a retry
        whose first answer was lost: fine) or a resume's claim: this process is stale.
        """
        bucket = self._location.bucket
        try:
            if claim:
                self._client.put_object(
                    Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", Metadata={CLAIM_METADATA: "resume"}
                )
            else:
                self._puts.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if not key_taken(exc):
                raise
            if claim:
                return False
            if CLAIM_METADATA in self._client.head_object(Bucket=bucket, Key=key).get("Metadata", {}):
                msg = (
                    f"s3://{bucket}/{key} was claimed by a resume of {self._partition}: this process is stale "
                    "and stops; run one job per recovery store"
                )
                log.error("%s", msg)
                raise S3SinkError(msg) from None
        return True

    def write_batch(self, items: list[ObjectRows]) -> None:
        self._resuming.result()
        schema = self._sink.schema
        for item in items:
            if item.rows.schema != schema:  # once per item, not per object: the job's rows match already
                item = replace(item, rows=item.rows.select(schema.names()).cast(schema))
            for folder, rows in item.by_folder():
                self._buffer[folder].append(rows)
                self._folder_rows[folder] += rows.height
            self._complete.update(folder for folder in item.complete if folder in self._buffer)
        if self._visible:  # before counting: the rows a write past the snapshot holds are not written again
            self._drop_visible()
        if sum(self._folder_rows.values()) >= BUFFER_LIMIT_ROWS:
            self._start_write()
        elif (
            len(self._complete) >= EARLY_WRITE_FOLDERS
            or sum(self._folder_rows[folder] for folder in self._complete) >= EARLY_WRITE_ROWS
        ):
            self._start_write(self._complete)

    def _start_write(self, folders: set[str] | None = None) -> None:
        """Write what is buffered (or only `folders` of it) as the next seq, in the
        background (manifest first, then objects)."""
        taken = self._buffer.keys() if folders is None else folders & self._buffer.keys()
        if not taken:
            return
        seq, batch = self._next_seq, {folder: self._buffer.pop(folder) for folder in list(taken)}
        self._next_seq = seq + 1
        for folder in batch:
            del self._folder_rows[folder]
        self._complete -= batch.keys()
        self._in_flight.append(self._writes.submit(self._write, seq, batch))

    def _drop_visible(self) -> None:
        """Drop the replayed rows of units that a write past the restored snapshot already put in."""
        columns = list(self._sink.unit_columns)
        for directory in self._buffer.keys() & self._visible.keys():
            visible, dropped = self._visible[directory], set()
            kept = []
            for part in self._buffer[directory]:
                rows, skipped = drop_units(part, visible, columns)
                if skipped:
                    dropped.update(part.select(columns).unique().rows())
                    UNITS_SKIPPED.inc(skipped)
                if rows.height:
                    kept.append(rows)
            visible -= dropped  # a unit is replayed once, whole: in one write
            if not visible:
                del self._visible[directory]
            if kept:
                self._buffer[directory] = kept
                self._folder_rows[directory] = sum(part.height for part in kept)
            else:
                del self._buffer[directory], self._folder_rows[directory]
                self._complete.discard(directory)

    def _write(self, seq: int, batch: dict[str, list[pl.DataFrame]]) -> tuple[int, dict[str, Any]]:
        keys, parts, heights = [], [], []
        for directory in sorted(batch):
            ordered = in_unit_order(batch[directory], self._sink.unit_columns)  # of the sink's schema (`write_batch`)
            if ordered:
                keys.append(f"{directory}/{self._partition}-{seq:010d}-{self._writer}.{self._sink.fmt}")
                parts += ordered
                heights.append(sum(part.height for part in ordered))
        # The write's objects one after another in one frame: their units in one query, their
        # bodies a group of objects per query (object_bodies.ENCODE_GROUP), not a query per object.
        rows = pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=self._sink.schema)
        units = dict(zip(keys, units_of_runs(rows, heights, self._sink.unit_columns), strict=True))
        manifest = manifest_body(seq, keys, units)
        self._manifests.put(seq, json.dumps(manifest, separators=(",", ":")).encode())

        def write(key: str, body: bytes, count: int) -> None:
            self._call("write object", partial(self._put_new, key, body))
            OBJECTS_WRITTEN.inc()
            ROWS_WRITTEN.inc(count)

        # Latency, not bandwidth, bounds many small PUTs: each is sent as soon as its body is encoded.
        bodies = encoded_in_turn(rows, heights, self._sink.fmt)
        sent = [self._uploads.submit(write, *o) for o in zip(keys, bodies, heights, strict=True)]
        for done in sent:
            done.result()  # re-raises S3SinkError
        return seq, manifest

    def _flush(self) -> None:
        """Write the rest and wait for every write in flight: then all seqs below next_seq are in."""
        self._resuming.result()
        self._start_write()
        in_flight, self._in_flight = self._in_flight, []
        for done in in_flight:
            seq, manifest = done.result()
            self._manifests.record(seq, manifest)
        self._manifests.compact_if_due(self._next_seq)

    def snapshot(self) -> SinkState:
        try:
            # bytewax snapshots a worker's partitions one after another: their writes start together,
            # so that an epoch waits for the slowest write, not for the sum of them.
            for part in self._sink.held[threading.get_ident()].values():
                if not part._failed:
                    part._resuming.result()
                    part._start_write()
            self._flush()
        except S3SinkError:
            self._failed = True
            raise
        # The fence: units written past the restored snapshot the replay has not reached yet.
        return CommitState(self._namespace, self._next_seq, None, fence_of(self._visible)).to_snapshot()

    def close(self) -> None:
        if not self._failed:  # after a failed write, leave the rows to the replay
            self._flush()
        self._writes.shutdown()
        self._uploads.shutdown()


class PartitionedS3Sink(FixedPartitionedSink[ObjectRows, SinkState]):
    """Writes each epoch's rows as one object per folder, exactly once across restarts.

    `namespace`: where partitions that restore no state write their manifests (the
    jobs pass their recovery store's, see module docstring). None is the legacy
    namespace, in which a partition without state skips the units of the prefix's
    earlier output of that partition: only for callers that own the prefix outright.
    `unit_columns`: what identifies a group of rows always emitted whole, and once.
    `direct_put`: data objects and manifests PUT by `s3_client.NativePut` (obstore), not boto3 (S3_DIRECT_PUT).
    `client`: one client for every partition (`shared_client`), else each makes its own.
    """

    def __init__(
        self,
        location: S3Location,
        schema: pl.Schema,
        fmt: str = "parquet",
        partitions: int = 4,
        give_up_after: float = 300.0,
        namespace: str | None = None,
        manifests_per_segment: int = 64,
        unit_columns: tuple[str, ...] = ("movieId", "windowStart"),
        direct_put: bool = True,
        client: Any = None,
    ) -> None:
        if fmt not in FORMATS:
            msg = f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}"
            raise ValueError(msg)
        if namespace is not None and not _NAMESPACE.fullmatch(namespace):
            msg = f"sink namespace {namespace!r} is not a plain name (letters, digits, '.', '_', '-')"
            raise ValueError(msg)
        self.namespace = namespace or LEGACY_NAMESPACE
        self.location = location
        self.schema = schema
        self.fmt = fmt
        self.partitions = partitions
        self.give_up_after = give_up_after
        self.manifests_per_segment = manifests_per_segment
        self.unit_columns = unit_columns
        self.direct_put = direct_put
        self.client = client
        self.held: dict[int, dict[str, _S3SinkPartition]] = defaultdict(dict)  # worker thread -> its partitions

    def list_parts(self) -> list[str]:
        return partition_names(self.partitions)

    def shared_client(self) -> Any:
        """A client for all of this sink's partitions (thread-safe), a connection for each of their
        10 threads: a client costs ~13 ms of CPU to make, and bytewax builds partitions on its worker."""
        return self.location.client(max_pool_connections=self.partitions * 10)

    def part_fn(self, item_key: str) -> int:
        return stable_partition(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: SinkState | None) -> _S3SinkPartition:
        part = _S3SinkPartition(self, for_part, CommitState.from_snapshot(resume_state, self.namespace))
        self.held[threading.get_ident()][for_part] = part  # a partition is built and used by one worker thread
        return part
