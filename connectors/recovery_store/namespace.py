"""The store's sink namespace: file `waxstreams-namespace` beside the partitions.

The run identity under which the S3 sink writes its manifests when it has no state to
restore (connectors/sinks/s3_objects.py). Made once per store, so every attempt of a run
(also one that crashed before its first snapshot) rolls back only its own writes, and a
new store never touches an older run's output.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from connectors.recovery_store.errors import RecoveryStoreError

NAMESPACE_FILE = "waxstreams-namespace"
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_namespace() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def write_once(path: Path, text: str) -> None:
    """Create `path` with `text` unless it exists; processes sharing the directory agree on one."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    scratch.write_text(text)
    try:
        os.link(scratch, path)  # atomic, and fails if another process made it first
    except FileExistsError:
        pass
    finally:
        scratch.unlink()


def store_namespace(directory: Path) -> str:
    """The store's sink namespace, made on first use; processes sharing the directory agree on it."""
    path = directory / NAMESPACE_FILE
    if not path.exists():
        write_once(path, new_namespace() + "\n")
    namespace = path.read_text().strip()
    if not _NAMESPACE.fullmatch(namespace):
        msg = (
            f"recovery directory {directory}: {NAMESPACE_FILE} holds {namespace[:40]!r}, not a run namespace: "
            "restore it from a backup of the store, or start a new run with a new store"
        )
        raise RecoveryStoreError(msg)
    return namespace
