"""The private parts of pinned libraries this project relies on, in one place.

bytewax 0.21.1 does not make these public: how `python -m bytewax.run` calls the run,
the Kafka source partition's consumer, batch size, end-of-partition flag and next offset
(its own snapshot() and lag metrics read `_offset`), the Kafka source's extra client
config, and the recovery store's sqlite tables (bytewax's src/recovery.rs). Nor does
botocore a client's resolved credentials and TLS verification, which the sink's native
PUTs reuse (connectors/sinks/s3_client.NativePut), nor Python 3.11 its exit steps
(`exit_without_teardown`). tests/integration/test_engine.py checks each against the
installed libraries, so an upgrade that moves one fails there, loudly, rather than as
wrong output.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from bytewax._bytewax import cli_main as bytewax_cli_main
from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import TopicPartition


def exit_when_run_ends(finish: Callable[[], NoReturn] | None = None) -> bool:
    """In `python -m bytewax.run`: once the run ends without error, the process ends at once.

    `bytewax.run`, run as `__main__`, builds the flow (`_locate_dataflow`, where the jobs call
    this) and then calls its global `cli_main(**kwargs)` last; that global is wrapped so that
    `finish` (default `exit_without_teardown`) follows a run that returned. A run that
    raised is left to Python as before (traceback, exit code 1, full teardown). Whether it
    applies: False in any other entry point (tests, tools), which are left alone."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    run = getattr(main, "cli_main", None)
    # bytewax's own, or it wrapped (functools.wraps: dataflows/__init__ turns the collector on in it).
    if spec is None or spec.name != "bytewax.run" or run is None or inspect.unwrap(run) is not bytewax_cli_main:
        return False
    done = finish or exit_without_teardown

    def cli_main(**kwargs: Any) -> None:
        run(**kwargs)
        done()

    main.cli_main = cli_main  # type: ignore[union-attr]
    return True


def exit_without_teardown() -> NoReturn:
    """What the interpreter does at a normal exit, less tearing itself down: non-daemon threads
    joined (with the thread pools' own exit hooks), the atexit handlers (logging's flush, the run
    summary), output flushed, exit code 0. The teardown (every module's objects freed, full
    garbage collections over everything imported) held a bounded run's process 0.1-0.4 s
    past its end, with nothing left to do: the sinks and the store committed before the run returned.
    The steps are the standard library's own for a process it ends (multiprocessing's child)."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: as at a normal exit, nothing more to say
    os._exit(0)


class KafkaPartitionInternals:
    """bytewax's `_KafkaSourcePartition`, read and steered through its private attributes."""

    def __init__(self, part: Any) -> None:
        self.part = part

    @property
    def consumer(self) -> Any:  # confluent_kafka.Consumer
        return self.part._consumer

    @property
    def batch_size(self) -> int:
        return self.part._batch_size

    @property
    def at_end(self) -> bool:
        """Bounded mode: the partition's end was reached; the source stops after this batch."""
        return self.part._eof

    def mark_end(self) -> None:
        self.part._eof = True

    @property
    def next_offset(self) -> int:
        return self.part._offset

    @next_offset.setter
    def next_offset(self, offset: int) -> None:
        self.part._offset = offset

    @property
    def topic(self) -> str:
        return self.part._topic

    @property
    def partition(self) -> int:
        return self.part._part_idx

    def topic_partition(self, offset: int | None = None) -> TopicPartition:
        tp = TopicPartition(self.topic, self.partition)
        if offset is not None:
            tp.offset = offset
        return tp


def consumer_config(source: KafkaSource) -> dict[str, Any]:
    """The consumer configuration bytewax's KafkaSource gives each partition's consumer (less its
    statistics, which feed bytewax's own lag gauge), for a reader that replaces that consumer."""
    return {
        "group.id": "BYTEWAX_IGNORED",
        "enable.auto.commit": "false",
        "bootstrap.servers": ",".join(source._brokers),
        "enable.partition.eof": str(not source._tail),
        **source._add_config,
    }


def add_source_config(source: KafkaSource, config: dict[str, str]) -> None:
    """Client properties for the consumers bytewax's KafkaSource builds from now on."""
    source._add_config = {**source._add_config, **config}


# librdkafka consumer-only properties: the AdminClient bytewax's list_parts builds from the
# source's config would print a CONFWARN line for each.
_CONSUMER_ONLY = (
    "group.",
    "auto.offset.reset",
    "auto.commit.",
    "enable.auto.",
    "enable.partition.eof",
    "fetch.",
    "max.partition.fetch.bytes",
    "queued.",
    "isolation.level",
    "max.poll.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "check.crcs",
)


def list_parts_quietly(source: KafkaSource) -> list[str]:
    """bytewax's `KafkaSource.list_parts`, without handing its AdminClient consumer-only properties."""
    config = source._add_config
    source._add_config = {k: v for k, v in config.items() if not k.startswith(_CONSUMER_ONLY)}
    try:
        return source.list_parts()
    finally:
        source._add_config = config


# The recovery store: one sqlite file per partition, with these tables.
RECOVERY_TABLES = {
    "parts": {"part_index", "part_count"},
    "exs": {"ex_num", "worker_count", "resume_epoch"},
    "fronts": {"ex_num", "worker_index", "worker_frontier"},
    "snaps": {"step_id", "state_key", "snap_epoch", "ser_change"},
}


def missing_recovery_columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    """Tables and columns this project reads that the store lacks (empty: all there)."""
    missing = {}
    for table, columns in RECOVERY_TABLES.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if columns - have:
            missing[table] = columns - have
    return missing


def store_parts(db: sqlite3.Connection) -> list[tuple[int, int]]:
    """(part_index, part_count) of the partition this file holds."""
    return list(db.execute("SELECT part_index, part_count FROM parts"))


def has_history(db: sqlite3.Connection) -> bool:
    """Any execution or snapshot recorded."""
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM exs) OR EXISTS (SELECT 1 FROM snaps)").fetchone()[0])


def executions(db: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """(ex_num, worker_count, resume_epoch) of every execution recorded."""
    return list(db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs"))


def frontiers(db: sqlite3.Connection, ex_num: int) -> list[tuple[int, int]]:
    """(worker_index, worker_frontier) each worker of an execution reported."""
    return list(db.execute("SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (ex_num,)))


def all_frontiers(db: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """(ex_num, worker_index, worker_frontier) of every execution's workers."""
    return list(db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts"))


def snapshot_epochs(db: sqlite3.Connection) -> list[int]:
    return [epoch for (epoch,) in db.execute("SELECT snap_epoch FROM snaps")]


def delete_snapshots_from(db: sqlite3.Connection, epoch: int) -> int:
    """Delete every snapshot at or past `epoch` (in the caller's transaction); returns how many."""
    return db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount


def boto3_client_credentials(client: Any) -> Any:
    """A boto3 client's own credentials (refreshable ones refresh themselves), or None."""
    return client._request_signer._credentials


def boto3_client_verify(client: Any) -> bool | str:
    """A boto3 client's TLS verification as boto3 resolved it: True, False or a CA bundle path."""
    return client._endpoint.http_session._verify


def commit_epochs(db: sqlite3.Connection) -> list[int]:
    """The epoch up to which bytewax garbage-collected each partition's older snapshots (its
    `commits` table): a copy can resume only from this epoch or later."""
    return [epoch for (epoch,) in db.execute("SELECT commit_epoch FROM commits")]


def cap_progress(db: sqlite3.Connection, epoch: int) -> None:
    """Lower every recorded worker frontier and execution resume epoch to at most `epoch`
    (in the caller's transaction): bytewax then resumes from `epoch` or earlier."""
    db.execute("UPDATE fronts SET worker_frontier = ? WHERE worker_frontier > ?", (epoch, epoch))
    db.execute("UPDATE exs SET resume_epoch = ? WHERE resume_epoch > ?", (epoch, epoch))


def newest_snapshot_epoch(db: sqlite3.Connection) -> int | None:
    return db.execute("SELECT MAX(snap_epoch) FROM snaps").fetchone()[0]


def newest_snapshot_at_or_below(db: sqlite3.Connection, epoch: int) -> int | None:
    return db.execute("SELECT MAX(snap_epoch) FROM snaps WHERE snap_epoch <= ?", (epoch,)).fetchone()[0]
