"""What a job starts from, and the snapshots of abandoned epochs dropped before a resume.

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

R depends on every worker's progress, which is spread over the partitions. With all
of them in the directory (any number of workers in one process, or processes sharing
a directory) it is computed here; with one directory per process (one volume per
pod) the processes agree on it first (connectors/rendezvous.py).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from connectors.env import TRUE
from connectors.recovery_store.errors import RecoveryStoreError, init_command
from connectors.recovery_store.namespace import new_namespace, store_namespace
from connectors.recovery_store.partition_files import check_store, drop_snapshots_from, is_fresh, read_progress
from connectors.recovery_store.resume_epoch import AgreeResumeEpoch, missing_partitions, resume_epoch_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """What the job starts from."""

    directory: Path | None  # None: no recovery store (ALLOW_NO_RECOVERY)
    sink_namespace: str  # where sink partitions without restored state write
    fresh: bool  # nothing recorded yet: no execution, no snapshot

    @classmethod
    def without_store(cls) -> Resume:
        return cls(None, new_namespace(), True)


def _run_option(argv: Sequence[str], environ: Mapping[str, str], short: str, long: str, envvar: str) -> str | None:
    """An option `python -m bytewax.run` was given (the flag, else its env var), as text."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(short, long, dest="value", default=environ.get(envvar))
    known, _ = parser.parse_known_args(argv)
    return known.value


def recovery_directory(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The recovery directory `python -m bytewax.run` was given (`-r` or its env var)."""
    directory = _run_option(argv, environ, "-r", "--recovery-directory", "BYTEWAX_RECOVERY_DIRECTORY")
    return Path(directory) if directory else None


def epoch_interval(argv: Sequence[str], environ: Mapping[str, str]) -> timedelta:
    """The epoch interval `python -m bytewax.run` was given (`-s` or its env var; whole
    seconds), or its default, 10 s."""
    seconds = _run_option(argv, environ, "-s", "--snapshot-interval", "BYTEWAX_SNAPSHOT_INTERVAL")
    try:
        return timedelta(seconds=int(seconds or 10))
    except ValueError:  # bytewax.run refuses it with its own message
        return timedelta(seconds=10)


def prepare_resume(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    allow_no_recovery: bool | None = None,
    agree: AgreeResumeEpoch | None = None,
) -> Resume:
    """Call while building the flow, before bytewax opens the store.

    `agree`: how this process, one of a cluster, agrees with the others on the resume
    epoch when its directory holds only part of the store (None: a single process).

    Refuses a run without a store unless allowed (None: as ALLOW_NO_RECOVERY in `environ`
    says, validated by dataflows/settings.py): without one, a restart cannot resume, so
    the exactly-once and no-loss guarantees do not hold.
    """
    if allow_no_recovery is None:
        allow_no_recovery = environ.get("ALLOW_NO_RECOVERY", "").strip().lower() in TRUE
    directory = recovery_directory(argv, environ)
    if directory is None:
        if not allow_no_recovery:
            msg = (
                "no recovery store: create one with `" + init_command() + "` and pass it with -r <dir> "
                "(or BYTEWAX_RECOVERY_DIRECTORY), or set ALLOW_NO_RECOVERY=true to run without resume "
                "(each start is then a new run)"
            )
            raise RecoveryStoreError(msg)
        log.warning("running without a recovery store (ALLOW_NO_RECOVERY=true): a restart starts a new run")
        return Resume.without_store()
    if agree is not None and directory.is_dir() and not any(directory.glob("*.sqlite3")):
        # A cluster process past the ones holding the store (k8s/README.md, Scaling): bytewax finds
        # the partitions on them, process 0's rendezvous waits for them, and they judge `fresh`.
        log.info("recovery directory %s holds no partition: the cluster's other processes hold the store", directory)
        return Resume(directory, store_namespace(directory), fresh=False)
    check_store(directory)
    # Before the drop: a process whose only record is a crashed first epoch's snapshots
    # (with one directory per pod, the executions may be recorded in another pod's) has
    # run, and its sink may have written output: it resumes, it does not start anew.
    fresh = is_fresh(directory)
    drop_abandoned_snapshots(directory, agree)
    return Resume(directory, store_namespace(directory), fresh)


def drop_abandoned_snapshots(directory: Path, agree: AgreeResumeEpoch | None = None) -> int:
    """Delete snapshots at or past the epoch the next run resumes from; returns how many."""
    try:
        return _drop(directory, agree)
    except sqlite3.Error as exc:  # check_store ran before: only a store broken since
        log.warning("recovery store %s not checked for abandoned snapshots: %s", directory, exc)
        return 0


def _drop(directory: Path, agree: AgreeResumeEpoch | None) -> int:
    progress = read_progress(directory)
    if len({p.count for p in progress}) != 1:
        return 0  # no store or a broken one: bytewax refuses to start and says why
    if not missing_partitions(progress):
        epoch = resume_epoch_of(progress)
    elif agree is not None:  # one directory per process: the others hold the rest of the progress
        epoch = agree(directory, progress)
    else:
        log.warning(
            "recovery store %s holds partitions %s of %d: not all here, so snapshots of interrupted "
            "epochs cannot be found and are kept",
            directory,
            sorted(p.index for p in progress),
            progress[0].count,
        )
        return 0
    return drop_snapshots_from(directory, epoch)
