"""Drops snapshots of abandoned epochs from a bytewax 0.21.1 recovery store before a resume.

bytewax resumes at epoch R, the oldest epoch some worker of the last execution had
not finished, and loads for every state key its newest snapshot older than R. A
crashed execution may already have written snapshots at epochs >= R; bytewax never
deletes them. The next execution replays from R and overwrites only the keys it
touches in those same epochs, so the others survive, and at a later resume they are
newer than the replay's own snapshots and are loaded instead: state from a timeline
that was thrown away. Seen as doubled S3 output: a sink partition restored with the
abandoned run's sequence number did not roll back the replay's uncommitted write.
Deleting every snapshot at epoch >= R before bytewax starts leaves exactly what the
resume needs and nothing a later one could pick up by mistake.

It needs all of the store's partitions (any number of workers in one process, or
processes sharing a directory): R depends on every worker's progress, which is spread
over the partitions.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

log = logging.getLogger(__name__)

FIRST_EPOCH = 1  # bytewax's epoch when there is no progress yet


def resume_epoch(worker_count: int, ex_resume_epoch: int, fronts: Iterable[tuple[int, int]]) -> int:
    """bytewax's resume epoch from the last execution: the minimum over its workers of
    the furthest frontier each reported (a worker that reported none is at the
    execution's own resume epoch)."""
    furthest = dict.fromkeys(range(worker_count), ex_resume_epoch)
    for worker, frontier in fronts:
        furthest[worker] = max(furthest.get(worker, ex_resume_epoch), frontier)
    return min(furthest.values())


def recovery_directory(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The recovery directory `python -m bytewax.run` was given (`-r` or its env var)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory", default=environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    known, _ = parser.parse_known_args(argv)
    return Path(known.recovery_directory) if known.recovery_directory else None


def prepare_resume(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Call while building the flow, before bytewax opens the store."""
    directory = recovery_directory(argv, environ)
    if directory is not None and directory.is_dir():
        drop_abandoned_snapshots(directory)


def drop_abandoned_snapshots(directory: Path) -> int:
    """Delete snapshots at or past the epoch the next run resumes from; returns how many."""
    files = sorted(directory.glob("*.sqlite3"))  # what bytewax opens as partitions
    connections = [sqlite3.connect(f, timeout=60) for f in files]
    try:
        return _drop(directory, connections)
    except sqlite3.Error as exc:  # not a bytewax store: bytewax refuses it with its own message
        log.warning("recovery store %s not checked for abandoned snapshots: %s", directory, exc)
        return 0
    finally:
        for connection in connections:
            connection.close()


def _drop(directory: Path, connections: list[sqlite3.Connection]) -> int:
    parts = [row for c in connections for row in c.execute("SELECT part_index, part_count FROM parts")]
    counts = {n for _, n in parts}
    present = {i for i, _ in parts}
    if len(counts) != 1:
        return 0  # no store or a broken one: bytewax refuses to start and says why
    part_count = counts.pop()
    if present != set(range(part_count)):
        # Spread over hosts (one volume per pod): the other workers' progress is not here.
        log.warning(
            "recovery store %s holds partitions %s of %d: not all here, so snapshots of interrupted "
            "epochs cannot be found and are kept",
            directory,
            sorted(present),
            part_count,
        )
        return 0
    executions = [row for c in connections for row in c.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")]
    epoch = FIRST_EPOCH  # no execution recorded: bytewax starts afresh
    if executions:
        last, worker_count, ex_resume = max(executions)
        fronts = [
            (w, f)
            for c in connections
            for w, f in c.execute("SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (last,))
        ]
        epoch = resume_epoch(worker_count, ex_resume, fronts)
    dropped = 0
    for connection in connections:
        with closing(connection.cursor()) as cursor, connection:
            cursor.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,))
            dropped += cursor.rowcount
    if dropped:
        log.info("recovery store %s: dropped %d snapshots of epochs >= %d left by a crash", directory, dropped, epoch)
    return dropped
