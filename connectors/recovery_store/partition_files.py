"""bytewax's recovery partitions on disk, one SQLite file each (tables in connectors/engine.py):
checked so a wrong `-r` is one line instead of a Rust panic, created, read and pruned."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from connectors import engine
from connectors.recovery_store.errors import RecoveryStoreError, init_command
from connectors.recovery_store.namespace import store_namespace
from connectors.recovery_store.resume_epoch import PartitionProgress

log = logging.getLogger(__name__)


def connect(file: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Python's SQLite on a partition file, refused if this process already holds the file open.

    bytewax links its own SQLite: a second SQLite library opening a live partition in the job's
    process does not see the job's locks (POSIX locks are per process), and its close checkpoints
    and deletes the WAL bytewax is still writing (SQLite's "How To Corrupt", 2.2). Such a file is
    read in a child process, as the backups do (`backup_store.online_copy`)."""
    if _open_in_this_process(file):
        msg = f"{file} is open in this process (by bytewax): read a live partition from a child process (a bug)"
        raise RecoveryStoreError(msg)
    if read_only:
        return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    return sqlite3.connect(file, timeout=60)


def _open_in_this_process(file: Path) -> bool:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():  # not Linux: nothing to check with
        return False
    target = str(file.resolve())
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:  # closed while listed (the listing's own descriptor among them)
            continue
    return False


def check_store(directory: Path) -> list[tuple[int, int]]:
    """The (part_index, part_count) of every partition file; one-line errors for a wrong `-r`."""
    where = f"recovery directory {directory} (-r / BYTEWAX_RECOVERY_DIRECTORY)"
    if not directory.exists():
        msg = f"{where} does not exist: create it with `{init_command(directory)}`"
        raise RecoveryStoreError(msg)
    if not directory.is_dir():
        msg = f"{where} is not a directory: point -r at a directory made by `{init_command()}`"
        raise RecoveryStoreError(msg)
    files = sorted(directory.glob("*.sqlite3"))
    if not files:
        msg = f"{where} holds no recovery partitions (*.sqlite3): initialise it with `{init_command(directory)}`"
        raise RecoveryStoreError(msg)
    parts = []
    for file in files:
        try:
            # Read-only: a check must not turn a stray file into an empty database.
            with closing(connect(file, read_only=True)) as db:
                missing = engine.missing_recovery_columns(db)
                if missing:
                    msg = f"missing tables or columns {', '.join(f'{t}.{sorted(c)}' for t, c in missing.items())}"
                    raise sqlite3.DatabaseError(msg)
                parts += engine.store_parts(db)
        except sqlite3.Error as exc:
            msg = (
                f"{where}: {file.name} is not a bytewax recovery partition ({exc}): "
                f"move it away, or point -r at a store made by `{init_command()}`"
            )
            raise RecoveryStoreError(msg) from None
    if len({count for _, count in parts}) > 1:
        msg = f"{where} mixes partitions of stores of different sizes: keep the files of one store only"
        raise RecoveryStoreError(msg)
    return parts


def is_fresh(directory: Path) -> bool:
    """No execution and no snapshot recorded: nothing has ever run from this store."""
    for file in directory.glob("*.sqlite3"):
        with closing(connect(file)) as db:
            if engine.has_history(db):
                return False
    return True


def init_store(directory: Path, partitions: int, only: int | None = None) -> str:
    """Create the directory and its partitions (all, or part `only` for a per-pod volume); idempotent."""
    if partitions < 1:
        msg = f"--partitions {partitions}: a store needs at least 1 partition"
        raise RecoveryStoreError(msg)
    if only is not None and not 0 <= only < partitions:
        msg = f"--part {only} is not a partition of a {partitions}-partition store: use 0..{partitions - 1}"
        raise RecoveryStoreError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(range(partitions)) if only is None else {only}
    existing = check_store(directory) if any(directory.glob("*.sqlite3")) else []
    if existing:
        count = existing[0][1]
        if count != partitions:
            msg = (
                f"{directory} already holds a recovery store of {count} partitions: use --partitions {count}, "
                "or a new directory for a new store"
            )
            raise RecoveryStoreError(msg)
    missing = wanted - {index for index, _ in existing}
    if missing:
        from bytewax.recovery import init_db_dir

        # bytewax creates all partitions at once and panics on existing ones: make them aside, copy the missing.
        with tempfile.TemporaryDirectory(dir=directory, prefix=".init-") as scratch:
            init_db_dir(Path(scratch), partitions)
            for index in sorted(missing):
                # Moved in whole: a crash mid-copy must not leave a truncated partition under its
                # name, nor a reader (a backup, a pod's start-up) open half a file.
                aside = Path(scratch) / f".copy-{index}"
                shutil.copy(Path(scratch) / f"part-{index}.sqlite3", aside)
                os.replace(aside, directory / f"part-{index}.sqlite3")
    namespace = store_namespace(directory)
    state = f"created partitions {sorted(missing)}" if missing else "already initialised"
    return f"recovery store {directory}: {state} ({partitions} partitions, sink namespace {namespace})"


def read_progress(directory: Path) -> list[PartitionProgress]:
    """The progress every partition file in `directory` records."""
    progress = []
    for file in sorted(directory.glob("*.sqlite3")):  # what bytewax opens as partitions
        with closing(connect(file)) as db:
            exs, fronts = tuple(sorted(engine.executions(db))), tuple(sorted(engine.all_frontiers(db)))
            progress += [PartitionProgress(index, count, exs, fronts) for index, count in engine.store_parts(db)]
    return progress


def drop_snapshots_from(directory: Path, epoch: int) -> int:
    """Delete the snapshots at or past `epoch` in every partition of `directory`; returns how many."""
    dropped = 0
    for file in sorted(directory.glob("*.sqlite3")):
        with closing(connect(file)) as db, db:
            dropped += engine.delete_snapshots_from(db, epoch)
    if dropped:
        log.info("recovery store %s: dropped %d snapshots of epochs >= %d left by a crash", directory, dropped, epoch)
    return dropped
