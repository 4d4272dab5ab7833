"""`python -m connectors.backup`: savepoints, the list of backups, a restore (connectors/backup.py).

    python -m connectors.backup savepoint NAME -r DIR [-r DIR ...]   # asks the running job(s)
    python -m connectors.backup list --job movie-impressions
    python -m connectors.backup restore NAME -r DIR --job movie-impressions [--process-id I]

Settings come from the environment, read as the job reads them (`--job`), so the CLI
finds the backups where the job writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from connectors import backup_layout as layout
from connectors.backup_layout import REQUEST, RESULT
from connectors.backup_store import BackupConfig, BackupError, BackupStore, _local_parts, choose, restore
from connectors.errors import WaxstreamsError

JOBS = ("movie-impressions", "booking-correlation")


def job_config(job: str) -> BackupConfig:
    from dataflows.settings import BookingSettings, MovieImpressionsSettings

    settings = MovieImpressionsSettings if job == "movie-impressions" else BookingSettings
    config = settings.from_env(os.environ).backup
    if not config.bucket:
        msg = "no backup bucket: set BACKUP_S3_BUCKET (or S3_BUCKET for movie-impressions) as the job has it"
        raise BackupError(msg)
    return config


def ask_savepoint(name: str, directories: Sequence[Path], timeout: float) -> list[dict]:
    """Ask the job running on each directory for a savepoint; wait for every answer."""
    if not layout.valid_name(name):
        msg = f"savepoint name {name!r}: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise BackupError(msg)
    for directory in directories:
        if not directory.is_dir():
            msg = f"-r {directory} is not a recovery directory: give the directory the job runs with"
            raise BackupError(msg)
        (directory / f"{name}{RESULT}").unlink(missing_ok=True)
        (directory / f"{name}{REQUEST}").write_text(f"{datetime.now(UTC).isoformat()}\n")
    deadline = time.monotonic() + timeout
    results = []
    for directory in directories:
        result = directory / f"{name}{RESULT}"
        while not result.exists():
            if time.monotonic() > deadline:
                (directory / f"{name}{REQUEST}").unlink(missing_ok=True)
                msg = (
                    f"no job took savepoint {name} in {directory} within {timeout:g} s: is the job running with "
                    "-r on that directory and BACKUP_INTERVAL_SECONDS > 0? (see its log for 'backup')"
                )
                raise BackupError(msg)
            time.sleep(0.2)
        answer = json.loads(result.read_text())
        result.unlink()
        if not answer["ok"]:
            msg = f"the job on {directory} could not take savepoint {name}: its log says why (search 'backup')"
            raise BackupError(msg)
        results.append(answer)
    return results


def describe(store: BackupStore) -> list[str]:
    listed = store.listed()
    done = layout.complete(listed)
    lines = []
    for kind, name in sorted({(i.kind, i.name) for i in listed}, key=lambda r: r[1]):
        if (kind, name) in done:
            manifests = [m for i in done[(kind, name)] if (m := store.manifest(i.key)) is not None]
            state = "complete" if layout.consistent(manifests) else "broken"
            size = sum(m.stored_bytes for m in manifests)
            lines.append(f"{kind:10} {name:28} {state:16} epoch {layout.round_epoch(manifests):>8}  {size:>10} bytes")
        else:
            lines.append(f"{kind:10} {name:28} {'incomplete':16}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.backup", description="Recovery store backups in S3.")
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("savepoint", help="ask the running job for a named, consistent backup")
    save.add_argument("name")
    save.add_argument("-r", "--recovery-directory", type=Path, action="append", required=True, dest="dirs")
    save.add_argument("--timeout", type=float, default=120.0)
    listing = commands.add_parser("list", help="the run's backups and savepoints")
    listing.add_argument("--job", choices=JOBS, required=True)
    back = commands.add_parser("restore", help="restore a savepoint or backup round into a stopped job's directory")
    back.add_argument("name")
    back.add_argument("-r", "--recovery-directory", type=Path, required=True, dest="dir")
    back.add_argument("--job", choices=JOBS, required=True)
    back.add_argument("--process-id", type=int, default=None, help="the process whose partitions to restore")
    args = parser.parse_args(argv)
    try:
        if args.command == "savepoint":
            for answer in ask_savepoint(args.name, args.dirs, args.timeout):
                print(f"savepoint {args.name}: {answer['where']} (epoch {answer['epoch']}, {answer['bytes']} bytes)")
        elif args.command == "list":
            print("\n".join(describe(BackupStore(job_config(args.job)))) or "no backups")
        else:
            store = BackupStore(job_config(args.job))
            local = _local_parts(args.dir) if args.dir.is_dir() else []
            chosen, epoch = choose(store, args.name, local, args.process_id)
            if not chosen:
                msg = f"no complete backup {args.name} holds these partitions: see `python -m connectors.backup list`"
                raise BackupError(msg)
            restored = restore(args.dir, store, chosen, epoch)
            print(f"restored {args.name} into {args.dir}: resumes from epoch {restored.epoch} at most")
    except (WaxstreamsError, OSError) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    return 0
