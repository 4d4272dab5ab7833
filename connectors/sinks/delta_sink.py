"""Exactly-once sink into a Delta Lake table on S3 (delta-rs); the table itself is `delta_table.py`.

Readers that go through the Delta log (polars `scan_delta`, DuckDB `delta_scan`, Spark,
Athena, Trino) see a row once its transaction is committed and never see it go away:
nothing is ever rolled back, so a crash must never commit a row twice.

Protocol per sink partition (the commit-ahead protocol of `connectors/sinks/fence.py`;
its snapshot is `CommitState(namespace, next_seq, None, fence)`):
1. rows are buffered until bytewax snapshots the epoch (or closes the sink);
2. the epoch becomes ONE Delta transaction carrying an application transaction
   (`txn` action) `app_id = <job>/<prefix>/<partition>/<namespace>`, `version = next_seq`,
   and, in its commitInfo, the units (here (movieId, windowStart)) it holds;
3. the check and the commit use the same table snapshot: the app's version in that
   snapshot must be the last one this process committed (else another writer took
   over: this one stops), and delta-rs fails a commit when a concurrent commit
   carries the same app id (conflict check on the log's conditional put; no lock service).

On resume from `next_seq = K` with a fence, the log may already hold this app's versions
K..V, committed after the snapshot bytewax restored. A replay does not re-cut epochs the
same way (epochs are wall-clock), so skipping by version alone could drop or double rows:
the units of versions K..V, read from the commit infos (no data file is read), join the
fence; the replay drops fenced units (each leaves the fence once dropped) and continues
at V + 1. The fence is in every snapshot until the replay passes each unit, so any
number of crashes in a row commit a unit once. Old `(namespace, seq)` states resume with
an empty fence.

The namespace (the recovery store's, as for the object sink) is in the app id so that a
new run with a new store never mistakes an earlier run's versions for its own.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from prometheus_client import Counter

from connectors.retry import RetryPolicy, retry
from connectors.sinks.delta_table import (
    APP_KEY,
    UNITS_KEY,
    VERSION_KEY,
    WRITER_KEY,
    DeltaLocation,
    DeltaSinkError,
    committed_units,
    describe_delta_error,
)
from connectors.sinks.fence import CommitState, Fence
from connectors.sinks.rows import ObjectRows, in_unit_order, partition_names, stable_partition

log = logging.getLogger(__name__)

COMMITS = Counter("waxstreams_delta_commits_total", "Delta transactions committed by the sink")
ROWS_COMMITTED = Counter("waxstreams_delta_rows_committed_total", "Rows committed to the Delta table")
UNITS_SKIPPED = Counter(
    "waxstreams_delta_replayed_units_skipped_total", "Replayed units found already committed in the log"
)

# `CommitState.to_snapshot()`; stores of older releases hold `(namespace, next_seq)`.
DeltaState = dict[str, Any] | tuple[str, int]


class FencedError(DeltaSinkError):
    """Another writer committed for this sink partition's app id: this one is stale."""


class _DeltaPartition(StatefulSinkPartition[ObjectRows, DeltaState]):
    def __init__(self, sink: DeltaTableSink, partition: str, state: CommitState) -> None:
        self._sink = sink
        self._namespace = namespace = state.namespace
        next_seq = state.next_seq
        self.app_id = f"{sink.app_prefix}/{partition}/{namespace}"
        self._buffer: list[pl.DataFrame] = []
        self._failed = False
        self._options = sink.location.storage_options()
        self._table = self._retry("open the table", self._open)
        last = self._table.transaction_version(self.app_id)
        if (last is None and next_seq > 0) or (last is not None and last < next_seq - 1):
            msg = (
                f"the Delta table {sink.location.uri} lacks commits of {self.app_id} up to version {next_seq - 1} "
                f"that the restored snapshot counts on (the log has {last}): the table was replaced or restored; "
                "resume against the original table or start a new run with a new recovery store"
            )
            raise DeltaSinkError(msg)
        # The fence: units committed past the restored snapshot that the replay has not reached,
        # as the snapshot carries them, and those of the versions a crashed attempt committed after it.
        self._fence = Fence(state.fence)
        if last is not None and last >= next_seq:
            self._fence.add(committed_units(self._table, self.app_id, next_seq, last))
            log.info(
                "%s: versions %d..%d already committed (%d units fenced, %d by the snapshot); the replay skips them",
                self.app_id,
                next_seq,
                last,
                len(self._fence),
                len(state.fence),
            )
            next_seq = last + 1
        elif self._fence:
            log.info(
                "%s: %d units fenced by the restored snapshot; the replay skips them", self.app_id, len(self._fence)
            )
        self._last = last
        self._next_seq = next_seq
        self._attempted: int | None = None
        self._writer = uuid.uuid4().hex  # tells this process's commits from a concurrent writer's

    def _open(self) -> DeltaTable:
        return DeltaTable(self._sink.location.uri, storage_options=self._options)

    def _retry(self, what: str, call: Callable[[], Any]) -> Any:
        # FencedError and DeltaSinkError are WaxstreamsErrors: never retried.
        policy = RetryPolicy(
            service="Delta",
            retry_on=(DeltaError, OSError),
            error=DeltaSinkError,
            give_up_after=self._sink.give_up_after,
            fix="check S3_ENDPOINT_URL, DELTA_TABLE_URI and the network",
            on_stop="rows not yet committed are replayed from the last snapshot",
            describe=describe_delta_error,
            logger=log,
        )
        return retry(call, what, policy)

    def write_batch(self, items: list[ObjectRows]) -> None:
        self._buffer.extend(item.rows for item in items)

    def _flush(self) -> None:
        if not self._buffer:
            return
        sink = self._sink
        ordered = in_unit_order(self._buffer, sink.unit_columns)
        self._buffer.clear()
        if not ordered:
            return
        frame = pl.concat([r.select(sink.schema.names()).cast(sink.schema) for r in ordered])
        if self._fence:
            replayed = frame.select(sink.unit_columns).unique().rows()
            already = [u for u in replayed if not self._fence.passes(u)]
            if already:
                UNITS_SKIPPED.inc(len(already))
                frame = frame.join(
                    pl.DataFrame(already, schema=frame.select(sink.unit_columns).schema, orient="row"),
                    on=list(sink.unit_columns),
                    how="anti",
                )
        if frame.is_empty():
            return
        units = sorted(frame.select(sink.unit_columns).unique().rows())
        self._retry("commit", lambda: self._commit(sink.prepare(frame), units))

    def _commit(self, frame: pl.DataFrame, units: list[tuple]) -> None:
        version = self._next_seq
        options = self._sink.location.storage_options()
        if options != self._options:  # renewed credentials: delta-rs keeps the ones it was opened with
            self._options = options
            self._table = self._open()
        self._table.update_incremental()  # the one snapshot both the check and the commit use
        seen = self._table.transaction_version(self.app_id)
        if seen == version and self._attempted == version and self._landed(version):
            # An earlier attempt of this very commit landed but its answer was lost.
            self._committed(version, frame.height)
            return
        if seen != self._last:
            raise self._fenced(seen)
        self._attempted = version
        try:
            write_deltalake(
                self._table,
                frame,
                mode="append",
                partition_by=list(self._sink.partition_by),
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app_id=self.app_id, version=version)],
                    custom_metadata={
                        APP_KEY: self.app_id,
                        VERSION_KEY: str(version),
                        WRITER_KEY: self._writer,
                        UNITS_KEY: json.dumps(units, separators=(",", ":")),
                    },
                ),
            )
        except CommitFailedError as exc:
            if "concurrent transaction" in str(exc).lower():
                raise self._fenced(None) from None
            raise
        self._committed(version, frame.height)

    def _landed(self, version: int) -> bool:
        """Whether the log's commit of `version` is this process's own (not a concurrent writer's)."""
        for commit in self._table.history(64):
            if commit.get(APP_KEY) == self.app_id and commit.get(VERSION_KEY) == str(version):
                return commit.get(WRITER_KEY) == self._writer
        return False

    def _committed(self, version: int, rows: int) -> None:
        self._last = version
        self._next_seq = version + 1
        COMMITS.inc()
        ROWS_COMMITTED.inc(rows)

    def _fenced(self, seen: int | None) -> FencedError:
        found = f"version {seen}" if seen is not None else "a concurrent commit"
        msg = (
            f"another writer committed {found} for {self.app_id} in {self._sink.location.uri} "
            f"(this process last committed {self._last}): this process is stale and stops; "
            "run one job per recovery store and let the restart resume from it"
        )
        log.error("%s", msg)
        return FencedError(msg)

    def snapshot(self) -> DeltaState:
        try:
            self._flush()
        except DeltaSinkError:
            self._failed = True
            raise
        return CommitState(self._namespace, self._next_seq, None, self._fence.units()).to_snapshot()

    def close(self) -> None:
        if not self._failed:  # after a failed commit, leave the rows to the replay
            self._flush()


@dataclass
class DeltaTableSink(FixedPartitionedSink[ObjectRows, DeltaState]):
    """Each sink partition commits each epoch as one Delta transaction, exactly once (module docstring).

    `schema`: the rows as they arrive; `prepare` adds derived columns (e.g. the
    partition columns) to the table's schema; `unit_columns`: what identifies a group of
    rows that is always emitted whole (the replay skips groups already committed).
    """

    location: DeltaLocation
    schema: pl.Schema
    app_prefix: str  # <job>/<prefix>
    namespace: str
    partition_by: tuple[str, ...]
    unit_columns: tuple[str, ...]
    prepare: Callable[[pl.DataFrame], pl.DataFrame] = field(default=lambda frame: frame)
    partitions: int = 4
    give_up_after: float = 300.0

    def list_parts(self) -> list[str]:
        return partition_names(self.partitions)

    def part_fn(self, item_key: str) -> int:
        return stable_partition(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: DeltaState | None) -> _DeltaPartition:
        if isinstance(resume_state, int):
            # The object sink's legacy state: the store was made by a run with another OUTPUT_FORMAT.
            msg = (
                f"the recovery store holds object-sink state for {for_part} ({resume_state!r}), not a Delta sink's: "
                "OUTPUT_FORMAT changed on a resumed run; switch formats with a new recovery store"
            )
            raise DeltaSinkError(msg)
        return _DeltaPartition(self, for_part, CommitState.from_snapshot(resume_state, self.namespace))
