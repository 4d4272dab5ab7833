"""The recovery store backed up to S3, and restored from it (layout: connectors/backup_layout.py).

- Each process backs up its own partitions in a background thread, at every tick of
  BACKUP_INTERVAL_SECONDS (the same wall-clock ticks in every process, so the copies of
  a round are taken together) and when a savepoint is asked for
  (`python -m connectors.backup savepoint NAME -r DIR`). A copy is SQLite's online
  backup of each partition file: bytewax goes on writing (WAL) while it is read.
- At start, before bytewax opens the store: a directory with no state (missing, empty,
  or freshly initialised partitions) is restored from the newest round that holds the
  whole store, consistently; RESTORE_FROM_SAVEPOINT=NAME restores that savepoint or
  round once (a marker in the directory says it was done, so a restart resumes).
- A restored copy resumes from at most its `epoch`; in a cluster whose other processes
  kept their directories, the agreed resume epoch must not be past it, else the start
  stops with one line (restore every process from one round instead).

Replaying from a copy older than the newest output is exactly-once as far as the sinks'
replay protection goes (connectors/sinks/fence.py): inputs are re-read from the offsets
in the copy, and what was committed since is read back and not written again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from botocore.exceptions import ClientError
from prometheus_client import Counter, Gauge

from connectors import backup_layout as layout
from connectors.backup_store import (
    MARKER_FILE,
    BackupConfig,
    BackupError,
    BackupStore,
    Restored,
    _local_parts,
    choose,
    restore,
    take,
)
from connectors.recovery_store.partition_files import is_fresh
from connectors.recovery_store.resume_epoch import AgreeResumeEpoch, PartitionProgress
from connectors.sinks.s3_client import S3SinkError

__all__ = ["BackupConfig", "BackupError", "Restored", "checked_agreement", "restore_at_start", "start_backups"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5

BACKUPS_TAKEN = Counter("waxstreams_backups_total", "Recovery store backups written to S3", ["kind"])
BACKUP_FAILURES = Counter("waxstreams_backup_failures_total", "Recovery store backups that failed or were skipped")
BACKUP_LAST = Gauge("waxstreams_backup_last_success_timestamp_seconds", "When the last backup was written")
BACKUP_SECONDS = Gauge("waxstreams_backup_last_seconds", "How long the last backup took")
BACKUP_BYTES = Gauge("waxstreams_backup_last_bytes", "Bytes the last backup stored in S3 (compressed)")
BACKUP_EPOCH = Gauge("waxstreams_backup_last_epoch", "The epoch the last backup resumes from")


def restore_at_start(config: BackupConfig, directory: Path | None, process_id: int | None) -> Restored | None:
    """Before bytewax opens the store: restore it if it holds no state, or if asked to."""
    if directory is None or not config.enabled:
        return None
    marker = directory / MARKER_FILE
    has_state = directory.is_dir() and any(directory.glob("*.sqlite3")) and not is_fresh(directory)
    if config.restore_from is not None:
        done = json.loads(marker.read_text()).get("name") if marker.exists() else None
        if done == config.restore_from and has_state:
            log.info(
                "recovery store %s: %s was restored before; resuming (unset RESTORE_FROM_SAVEPOINT)", directory, done
            )
            return None
    elif has_state:
        return None
    store = BackupStore(config)
    local = _local_parts(directory) if directory.is_dir() else []
    chosen, epoch = choose(store, config.restore_from, local, process_id)
    if chosen:
        return restore(directory, store, chosen, epoch)
    if config.restore_from is not None:
        msg = (
            f"RESTORE_FROM_SAVEPOINT={config.restore_from}: no complete backup of that name under {config.where()} "
            f"holds this process's partitions: pick one from `python -m connectors.backup list`"
        )
        raise BackupError(msg)
    if store.listed():
        msg = (
            f"recovery directory {directory} holds no state and no complete backup under {config.where()} holds its "
            "partitions: restore one with RESTORE_FROM_SAVEPOINT=<name> (`python -m connectors.backup list`), "
            "or start a new run (a new BACKUP_RUN)"
        )
        raise BackupError(msg)
    return None  # the run's first start: nothing backed up yet


def checked_agreement(agree: AgreeResumeEpoch | None, restored: Restored | None) -> AgreeResumeEpoch | None:
    """`agree`, also refusing a resume epoch past what this process's restored copy holds."""
    if agree is None or restored is None:
        return agree

    def check(directory: Path, local: list[PartitionProgress]) -> int:
        epoch = agree(directory, local)
        if epoch > restored.epoch:
            msg = (
                f"recovery directory {directory} was restored from backup {restored.name} (epochs below "
                f"{restored.epoch}), but the other processes resume from epoch {epoch}: restore every process "
                f"from one round: RESTORE_FROM_SAVEPOINT={restored.name}"
            )
            raise BackupError(msg)
        return epoch

    return check


class Backups:
    """The background thread of one process: periodic rounds, savepoints on request, pruning.

    It runs while bytewax has the store open, and bytewax links its own SQLite: this process's
    sqlite3 must never open a live partition (not even to read it). Its close would take itself
    for the file's last connection (POSIX locks do not conflict within a process), checkpoint
    and delete the WAL bytewax goes on writing, and drop bytewax's locks for every other
    process: readers then see pages mid-checkpoint ('database disk image is malformed') and
    not what bytewax commits since. Live files are read by a child (backup_store.online_copy)."""

    def __init__(self, config: BackupConfig, directory: Path, process_id: int | None) -> None:
        self.config, self.directory, self.process_id = config, directory, process_id
        self.store = BackupStore(config)
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self.run, name="recovery-backup", daemon=True).start()

    def run(self) -> None:
        interval = self.config.interval_seconds
        tick = layout.next_tick(time.time(), interval)
        while not self.stopped.is_set():
            for request in sorted(self.directory.glob(f"*{layout.REQUEST}")):
                self.savepoint(request)
            if time.time() >= tick:
                self.once(layout.BACKUPS, layout.round_name(tick))
                tick = layout.next_tick(time.time(), interval)
            self.stopped.wait(min(_POLL_SECONDS, max(tick - time.time(), 0.01)))

    def once(self, kind: str, name: str) -> layout.Manifest | None:
        try:
            manifest = take(self.directory, self.store, kind, name, self.process_id)
            if kind == layout.BACKUPS:
                self.prune(manifest.parts)
        except (BackupError, S3SinkError, OSError, sqlite3.Error, ClientError) as exc:
            BACKUP_FAILURES.inc()
            log.warning("recovery store backup %s %s not taken: %s", kind, name, exc)
            return None
        BACKUPS_TAKEN.labels(kind).inc()
        BACKUP_LAST.set(time.time())
        BACKUP_SECONDS.set(manifest.seconds)
        BACKUP_BYTES.set(manifest.stored_bytes)
        BACKUP_EPOCH.set(manifest.epoch)
        log.info(
            "recovery store backup %s %s: epoch %d, %d bytes, %.2f s",
            kind,
            name,
            manifest.epoch,
            manifest.stored_bytes,
            manifest.seconds,
        )
        return manifest

    def savepoint(self, request: Path) -> None:
        name = request.name.removesuffix(layout.REQUEST)
        manifest = self.once(layout.SAVEPOINTS, name) if layout.valid_name(name) else None
        result = {"ok": manifest is not None, "where": self.config.where() + f"{layout.SAVEPOINTS}/{name}/"}
        if manifest is not None:
            result |= {"epoch": manifest.epoch, "bytes": manifest.stored_bytes, "seconds": round(manifest.seconds, 3)}
        (self.directory / f"{name}{layout.RESULT}").write_text(json.dumps(result) + "\n")
        request.unlink(missing_ok=True)

    def prune(self, parts: Sequence[int]) -> None:
        """Drop this process's copies (of `parts`, as the round just taken read them from its
        copies) in rounds past retention."""
        base = f"{layout.run_root(self.store.root, self.config.run)}{layout.BACKUPS}/"
        keys = self.store.keys(base)
        listed = [i for k in keys if (i := layout.parse_key(self.store.root, self.config.run, k))]
        seen = {k[len(base) :].split("/", 1)[0] for k in keys}
        owner = layout.owner_of(list(parts))
        for name in layout.to_prune(listed, self.config.retention, seen):
            ours = [k for k in keys if k.startswith(f"{base}{name}/{owner}.")]
            manifests = [k for k in ours if k.endswith(".manifest.json")]
            self.store.delete(manifests)  # first: a half-pruned round is never restored
            self.store.delete([k for k in ours if k not in manifests])


def history_seconds(argv: Sequence[str], environ: Mapping[str, str]) -> float:
    """The seconds of snapshot history bytewax keeps (`python -m bytewax.run -b`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-b", "--backup-interval", default=environ.get("BYTEWAX_RECOVERY_BACKUP_INTERVAL", "0"))
    known, _ = parser.parse_known_args(argv)
    try:
        return float(known.backup_interval)
    except ValueError:
        return 0.0  # bytewax refuses it itself


def start_backups(
    config: BackupConfig,
    directory: Path | None,
    process_id: int | None,
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Backups | None:
    """After the store is checked and repaired, before bytewax opens it.

    In a cluster, a process that lost its directory restores a copy up to one interval
    older than the others' live partitions, which must still hold that epoch's snapshots."""
    if directory is None or config.interval_seconds <= 0 or not config.bucket:
        return None
    kept = history_seconds(argv, environ or {})
    if process_id is not None and kept < config.interval_seconds:
        msg = (
            f"BACKUP_INTERVAL_SECONDS={config.interval_seconds:g} with bytewax keeping {kept:g} s of snapshot "
            "history: pass -b (BYTEWAX_RECOVERY_BACKUP_INTERVAL) of at least BACKUP_INTERVAL_SECONDS, so a "
            "process restored from its last backup can resume with the others"
        )
        raise BackupError(msg)
    backups = Backups(config, directory, process_id)
    backups.start()
    log.info("recovery store %s: backed up to %s every %g s", directory, config.where(), config.interval_seconds)
    return backups


if __name__ == "__main__":
    from connectors.backup_cli import main

    raise SystemExit(main())
