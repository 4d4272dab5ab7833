"""The I/O of recovery store backups: S3 calls, the consistent copy, the restore (connectors/backup.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from connectors import backup_layout as layout
from connectors import engine
from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.namespace import NAMESPACE_FILE
from connectors.recovery_store.partition_files import check_store, read_progress
from connectors.recovery_store.state_settings import SHAPE_FILE
from connectors.sinks.s3_client import S3Location, S3SinkError, with_retries

log = logging.getLogger(__name__)

MARKER_FILE = "waxstreams-restored.json"
EXTRA_FILES = (NAMESPACE_FILE, SHAPE_FILE)  # the store's own records, restored with it


class BackupError(RecoveryStoreError):
    """A backup or restore cannot be done; the message names the fix."""


@dataclass(frozen=True)
class BackupConfig:
    """Where backups go and when (dataflows/settings.py BackupSettings reads it from the environment)."""

    bucket: str | None = None
    prefix: str = ""
    run: str = "default"
    endpoint_url: str | None = None
    region: str | None = None
    interval_seconds: float = 0.0  # 0: no periodic backups, no savepoints, no restore at start
    retention: int = 5
    restore_from: str | None = None  # a savepoint or round, restored once
    give_up_after: float = 120.0

    @property
    def enabled(self) -> bool:
        return bool(self.bucket) and (self.interval_seconds > 0 or self.restore_from is not None)

    def location(self) -> S3Location:
        return S3Location(self.bucket or "", self.prefix, self.endpoint_url, self.region)

    def where(self) -> str:
        return f"s3://{self.bucket}/{layout.run_root(self.location().root(), self.run)}"


@dataclass(frozen=True)
class Restored:
    name: str
    epoch: int


class BackupStore:
    """The run's backups in S3; every call retried as the sinks' are."""

    def __init__(self, config: BackupConfig) -> None:
        self.config, self.location = config, config.location()
        self.client = self.location.client()
        self.root = self.location.root()

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        return with_retries(call, what, self.location, self.config.give_up_after)

    def keys(self, under: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=under)
        return self._call("list backups", lambda: [o["Key"] for p in pages for o in p.get("Contents", [])])

    def listed(self) -> list[layout.Listed]:
        base = layout.run_root(self.root, self.config.run)
        return [item for key in self.keys(base) if (item := layout.parse_key(self.root, self.config.run, key))]

    def manifest(self, key: str) -> layout.Manifest | None:
        """The manifest at `key`; None if it went since it was listed (its round was pruned)."""

        def read() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                    return None
                raise

        body = self._call("read backup manifest", read)
        return None if body is None else layout.Manifest.from_json(json.loads(body))

    def rounds(self) -> dict[tuple[str, str], list[layout.Manifest]]:
        """Every round that holds the whole store, with its manifests read."""
        rounds = {}
        for key, items in layout.complete(self.listed()).items():
            manifests = [self.manifest(i.key) for i in items]
            if all(m is not None for m in manifests):
                rounds[key] = [m for m in manifests if m is not None]
        return rounds

    def put(self, key: str, body: bytes, *, new: bool = False) -> bool:
        """Put `body`; with `new`, only if the key is free (False if it was taken)."""
        extra = {"IfNoneMatch": "*"} if new else {}
        try:
            self._call(
                "write backup",
                partial(self.client.put_object, Bucket=self.location.bucket, Key=key, Body=body, **extra),
            )
        except S3SinkError:
            raise
        except ClientError as exc:  # only a refused conditional write gets here
            if str(exc.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        return self._call("read backup", lambda: self.client.get_object(Bucket=self.location.bucket, Key=key))[
            "Body"
        ].read()

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            self._call("prune backups", partial(self.client.delete_objects, Bucket=self.location.bucket, Delete=batch))


def copy_store(directory: Path, into: Path) -> tuple[int, int, list[int], int, int, int | None]:
    """Copy the partitions of `directory` into `into` (SQLite's online backup: bytewax goes on
    writing), each cut where the copies are complete. Returns (latest execution recorded or
    -1, epoch, parts, part_count, the epoch bytewax collected up to, the newest snapshot at or
    below a collection)."""
    files = sorted(directory.glob("*.sqlite3"))
    epochs, parts, counts, executions, collections = [], [], set(), [-1], [0]
    kept: list[int] = []
    for file in files:
        online_copy(file, into / file.name)
        with closing(sqlite3.connect(into / file.name)) as db:
            collected = max(engine.commit_epochs(db), default=None)
            epochs.append(layout.file_epoch(engine.newest_snapshot_epoch(db), collected))
            collections.append(collected or 0)
            if collected is not None and (newest_kept := engine.newest_snapshot_at_or_below(db, collected)):
                kept.append(newest_kept)
            executions += [ex for ex, _, _ in engine.executions(db)]
            for index, count in engine.store_parts(db):
                parts.append(index)
                counts.add(count)
    epoch = min(epochs)
    for file in files:
        cut(into / file.name, epoch)
    for extra in EXTRA_FILES:
        if (directory / extra).exists():
            shutil.copy(directory / extra, into / extra)
    return max(executions), epoch, sorted(parts), counts.pop(), max(collections), max(kept, default=0)


# bytewax links its own SQLite: a second SQLite library opening the live file in the job's
# process would not see the job's locks (POSIX locks are per process), could reset the shared
# WAL index under it, and on closing drops the job's locks for every other process. So the
# copy is taken by a child process, which SQLite's locking does see.
_COPY = (
    "import sqlite3, sys\n"
    "src = sqlite3.connect(sys.argv[1] + '?mode=ro', uri=True, timeout=60)\n"
    "dst = sqlite3.connect(sys.argv[2])\n"
    "src.backup(dst)\n"
    "dst.close()\n"
    "src.close()\n"
)


def online_copy(live: Path, into: Path) -> None:
    """SQLite's online backup of `live` (bytewax goes on writing it) into `into`, by a child process."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _COPY, live.resolve().as_uri(), str(into)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        msg = f"backup of {live} failed ({reason}): check the recovery directory's disk"
        raise BackupError(msg)


def cut(file: Path, epoch: int) -> None:
    """Make a copied partition resume from `epoch` at most, with nothing from that epoch on."""
    with closing(sqlite3.connect(file)) as db, db:
        engine.cap_progress(db, epoch)
        engine.delete_snapshots_from(db, epoch)


def take(directory: Path, store: BackupStore, kind: str, name: str, process_id: int | None) -> layout.Manifest:
    """Back up this process's partitions as round `name` of `kind`; the manifest goes last."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".backup-") as scratch:
        execution, epoch, parts, count, collected, collected_snapshot = copy_store(directory, Path(scratch))
        folder = layout.round_dir(store.root, store.config.run, kind, name)
        attempt = f"{folder}{layout.owner_of(parts)}.{uuid.uuid4().hex[:8]}/"
        files: list[dict[str, Any]] = []
        for path in sorted(Path(scratch).iterdir()):
            raw = path.read_bytes()
            body = gzip.compress(raw, compresslevel=6)
            store.put(f"{attempt}{path.name}.gz", body)
            digest = hashlib.sha256(raw).hexdigest()
            files.append(
                {
                    "name": path.name,
                    "key": f"{attempt}{path.name}.gz",
                    "sha256": digest,
                    "bytes": len(raw),
                    "stored_bytes": len(body),
                }
            )
    manifest = layout.Manifest(
        kind,
        name,
        tuple(parts),
        count,
        process_id,
        execution,
        epoch,
        int(time.time() * 1000),
        time.monotonic() - began,
        tuple(files),
        collected,
        collected_snapshot,
    )
    key = layout.manifest_key(store.root, store.config.run, kind, name, parts, count)
    if not store.put(key, json.dumps(manifest.to_json(), indent=1).encode(), new=True):
        store.delete([str(f["key"]) for f in files])  # this round was already backed up (an earlier attempt)
        return store.manifest(key) or manifest
    return manifest


def restore(directory: Path, store: BackupStore, manifests: Sequence[layout.Manifest], epoch: int) -> Restored:
    """Replace the partitions in `directory` with the copies in `manifests` (checked first),
    cut at `epoch`: the round's, the same in every process that restores it."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".restore-") as scratch:
        for manifest in manifests:
            for entry in manifest.files:
                raw = gzip.decompress(store.get(entry["key"]))
                if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                    msg = f"backup file {entry['key']} does not match its manifest: restore another round"
                    raise BackupError(msg)
                (Path(scratch) / entry["name"]).write_bytes(raw)
        check_store(Path(scratch))
        for copied in Path(scratch).glob("*.sqlite3"):
            cut(copied, epoch)
        for stale in [*directory.glob("*.sqlite3"), *directory.glob("*.sqlite3-wal"), *directory.glob("*.sqlite3-shm")]:
            stale.unlink()  # bytewax has not opened the store yet
        restored = sorted(Path(scratch).iterdir(), key=lambda p: p.suffix == ".sqlite3")  # the records first
        for path in restored:
            os.replace(path, directory / path.name)
    marker = {"name": manifests[0].name, "kind": manifests[0].kind, "epoch": epoch, "at_ms": int(time.time() * 1000)}
    (directory / MARKER_FILE).write_text(json.dumps(marker) + "\n")
    log.info(
        "recovery store %s: restored %s %s (resumes from epoch %d at most)",
        directory,
        manifests[0].kind,
        manifests[0].name,
        epoch,
    )
    return Restored(manifests[0].name, epoch)


def _local_parts(directory: Path) -> list[int]:
    return sorted(p.index for p in read_progress(directory)) if any(directory.glob("*.sqlite3")) else []


def choose(
    store: BackupStore, name: str | None, local_parts: list[int], process_id: int | None
) -> tuple[list[layout.Manifest], int]:
    """The copies to restore: of round or savepoint `name`, else of the newest consistent round."""
    rounds = store.rounds()
    candidates = [r for r in layout.newest_first(rounds) if name is None or r[1] == name]
    if name is not None:
        candidates.sort(key=lambda r: r[0] != layout.SAVEPOINTS)  # a savepoint before a round of the same name
    for key in candidates:
        if not layout.consistent(rounds[key]):
            continue
        if not layout.resumable(rounds[key]):
            copies = ", ".join(
                f"{layout.owner_of(m.parts)} complete below {m.epoch}, collected up to {m.collected} "
                f"(kept {m.collected_snapshot})"
                for m in rounds[key]
            )
            log.warning(
                "backup %s %s not restorable: bytewax collected snapshots it needs (%s); raise -b "
                "(BYTEWAX_RECOVERY_BACKUP_INTERVAL) to at least BACKUP_INTERVAL_SECONDS",
                *key,
                copies,
            )
            continue
        if chosen := layout.mine(rounds[key], local_parts, process_id):
            return chosen, layout.round_epoch(rounds[key])
    return [], 0
