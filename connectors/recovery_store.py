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

R depends on every worker's progress, which is spread over the partitions. With all
of them in the directory (any number of workers in one process, or processes sharing
a directory) it is computed here; with one directory per process (one volume per
pod) the processes agree on it first (connectors/rendezvous.py).

Also the store's checks and set-up, so a wrong `-r` is one line instead of a Rust panic:

    python -m connectors.recovery_store init DIR --partitions N   # idempotent, creates DIR

and the store's sink namespace (file `waxstreams-namespace` beside the partitions): the
run identity under which the S3 sink writes its manifests when it has no state to
restore (connectors/sinks/s3_objects.py). Made once per store, so every attempt of a run (also
one that crashed before its first snapshot) rolls back only its own writes, and a new
store never touches an older run's output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connectors import engine

log = logging.getLogger(__name__)

FIRST_EPOCH = 1  # bytewax's epoch when there is no progress yet
NAMESPACE_FILE = "waxstreams-namespace"
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RecoveryStoreError(RuntimeError):
    """The recovery store is missing, empty or not a bytewax store; the message names the fix."""


@dataclass(frozen=True)
class Resume:
    """What the job starts from."""

    directory: Path | None  # None: no recovery store (ALLOW_NO_RECOVERY)
    sink_namespace: str  # where sink partitions without restored state write
    fresh: bool  # nothing recorded yet: no execution, no snapshot

    @classmethod
    def without_store(cls) -> Resume:
        return cls(None, new_namespace(), True)


def init_command(directory: Path | str = "<dir>", partitions: int | str = 1) -> str:
    return f"python -m connectors.recovery_store init {directory} --partitions {partitions}"


def new_namespace() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def resume_epoch(worker_count: int, ex_resume_epoch: int, fronts: Iterable[tuple[int, int]]) -> int:
    """bytewax's resume epoch from the last execution: the minimum over its workers of
    the furthest frontier each reported (a worker that reported none is at the
    execution's own resume epoch)."""
    furthest = dict.fromkeys(range(worker_count), ex_resume_epoch)
    for worker, frontier in fronts:
        furthest[worker] = max(furthest.get(worker, ex_resume_epoch), frontier)
    return min(furthest.values())


@dataclass(frozen=True)
class PartitionProgress:
    """What one recovery partition records of the executions: all bytewax needs to find R."""

    index: int
    count: int
    exs: tuple[tuple[int, int, int], ...]  # (ex_num, worker_count, resume_epoch)
    fronts: tuple[tuple[int, int, int], ...]  # (ex_num, worker_index, worker_frontier)

    def to_json(self) -> dict:
        return {"index": self.index, "count": self.count, "exs": self.exs, "fronts": self.fronts}

    @classmethod
    def from_json(cls, raw: Mapping) -> PartitionProgress:
        return cls(
            int(raw["index"]),
            int(raw["count"]),
            tuple(sorted(tuple(map(int, row)) for row in raw["exs"])),  # type: ignore[misc]
            tuple(sorted(tuple(map(int, row)) for row in raw["fronts"])),  # type: ignore[misc]
        )


# Given the directory and its partitions' progress (not all of the store), the epoch the
# cluster resumes from, agreed with the other processes (connectors/rendezvous.py).
AgreeResumeEpoch = Callable[[Path, list[PartitionProgress]], int]


def missing_partitions(progress: Iterable[PartitionProgress]) -> list[int]:
    """The store's partitions not in `progress` (empty: the whole store is there)."""
    progress = list(progress)
    count = max((p.count for p in progress), default=0)
    return sorted(set(range(count)) - {p.index for p in progress})


def resume_epoch_of(progress: Iterable[PartitionProgress]) -> int:
    """The epoch bytewax resumes from, given every partition's progress (its resume calculation)."""
    progress = list(progress)
    executions = [ex for p in progress for ex in p.exs]
    if not executions:
        return FIRST_EPOCH  # no execution recorded: bytewax starts afresh
    last, worker_count, ex_resume = max(executions)
    fronts = [(worker, frontier) for p in progress for ex, worker, frontier in p.fronts if ex == last]
    return resume_epoch(worker_count, ex_resume, fronts)


def recovery_directory(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """The recovery directory `python -m bytewax.run` was given (`-r` or its env var)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory", default=environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    known, _ = parser.parse_known_args(argv)
    return Path(known.recovery_directory) if known.recovery_directory else None


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
        allow_no_recovery = environ.get("ALLOW_NO_RECOVERY", "").strip().lower() in ("1", "true", "yes", "on")
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
            with closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
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
        with closing(sqlite3.connect(file, timeout=60)) as db:
            if engine.has_history(db):
                return False
    return True


def store_namespace(directory: Path) -> str:
    """The store's sink namespace, made on first use; processes sharing the directory agree on it."""
    path = directory / NAMESPACE_FILE
    if not path.exists():
        scratch = directory / f".{NAMESPACE_FILE}.{uuid.uuid4().hex}"
        scratch.write_text(new_namespace() + "\n")
        try:
            os.link(scratch, path)  # atomic, and fails if another process made it first
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    namespace = path.read_text().strip()
    if not _NAMESPACE.fullmatch(namespace):
        msg = (
            f"recovery directory {directory}: {NAMESPACE_FILE} holds {namespace[:40]!r}, not a run namespace: "
            "restore it from a backup of the store, or start a new run with a new store"
        )
        raise RecoveryStoreError(msg)
    return namespace


SHAPE_FILE = "waxstreams-state-settings.json"
# Entries of the record that came after stores were made, with what such a store holds: an
# older record (or none) is judged by it, not taken to match whatever runs now.
RECORDED_LATER = {"WINDOW_STATE": "one key per movieId, per-user tallies"}
CODE_SHAPED = ("WINDOW_STATE",)  # not settings: how the job's version lays its state out


def _write_once(path: Path, text: str) -> None:
    """Create `path` with `text` unless it exists; processes sharing the directory agree on one."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    scratch.write_text(text)
    try:
        os.link(scratch, path)  # atomic, and fails if another process made it first
    except FileExistsError:
        pass
    finally:
        scratch.unlink()


def check_state_settings(directory: Path, shape: Mapping[str, str], fresh: bool) -> None:
    """The settings that shape the stored state must not change under it.

    Recorded while the store holds no state (each such start records its own); once it
    does, a run with an incompatible change (a window
    length, the sink's partitions, the output's format or place, the input) stops with
    one line saying what changed and how to migrate. Settings not in `shape` may change.
    """
    path = directory / SHAPE_FILE
    text = json.dumps(dict(shape), indent=1, sort_keys=True) + "\n"
    if fresh:
        # No state yet, so nothing can clash: a start that failed before its first snapshot
        # (a wrong setting, say) must not hold the next start to its settings.
        scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        scratch.write_text(text)
        os.replace(scratch, path)
        return
    if not path.exists():  # a store from before the record existed: record what it runs with now
        log.info("recovery store %s: recording the settings that shape its state", directory)
        held = {**shape, **{name: value for name, value in RECORDED_LATER.items() if name in shape}}
        _write_once(path, json.dumps(held, indent=1, sort_keys=True) + "\n")
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        msg = f"recovery directory {directory}: {SHAPE_FILE} is not JSON: restore it from a backup of the store"
        raise RecoveryStoreError(msg) from None
    held = {name: recorded.get(name, RECORDED_LATER.get(name, value)) for name, value in shape.items()}
    changed = [name for name, value in shape.items() if held[name] != value]
    if changed:
        what = "; ".join(f"{name} {held[name]!r} -> {shape[name]!r}" for name in changed)
        back = (
            "resume it with the version of the job that started it"
            if any(name in CODE_SHAPED for name in changed)
            else "put them back"
        )
        msg = (
            f"settings that shape the stored state changed since this recovery store started ({what}): "
            f"{back}, or start a new run (a new recovery store and a new S3_PREFIX) and backfill the history "
            "into it (README, Running it in production: upgrades)"
        )
        raise RecoveryStoreError(msg)


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
                shutil.copy(Path(scratch) / f"part-{index}.sqlite3", directory / f"part-{index}.sqlite3")
    namespace = store_namespace(directory)
    state = f"created partitions {sorted(missing)}" if missing else "already initialised"
    return f"recovery store {directory}: {state} ({partitions} partitions, sink namespace {namespace})"


def read_progress(directory: Path) -> list[PartitionProgress]:
    """The progress every partition file in `directory` records."""
    progress = []
    for file in sorted(directory.glob("*.sqlite3")):  # what bytewax opens as partitions
        with closing(sqlite3.connect(file, timeout=60)) as db:
            exs, fronts = tuple(sorted(engine.executions(db))), tuple(sorted(engine.all_frontiers(db)))
            progress += [PartitionProgress(index, count, exs, fronts) for index, count in engine.store_parts(db)]
    return progress


def drop_snapshots_from(directory: Path, epoch: int) -> int:
    """Delete the snapshots at or past `epoch` in every partition of `directory`; returns how many."""
    dropped = 0
    for file in sorted(directory.glob("*.sqlite3")):
        with closing(sqlite3.connect(file, timeout=60)) as db, db:
            dropped += engine.delete_snapshots_from(db, epoch)
    if dropped:
        log.info("recovery store %s: dropped %d snapshots of epochs >= %d left by a crash", directory, dropped, epoch)
    return dropped


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.recovery_store", description="Set up a recovery store for the jobs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create DIR and its recovery partitions (idempotent)")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--partitions", type=int, default=1, help="partitions of the store (default 1)")
    init.add_argument("--part", type=int, default=None, help="create only this partition (one volume per pod)")
    args = parser.parse_args(argv)
    try:
        print(init_store(args.directory, args.partitions, args.part))
    except (RecoveryStoreError, OSError) as exc:
        print(f"recovery_store: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
