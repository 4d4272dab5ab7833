"""The settings that shape the stored state (file `waxstreams-state-settings.json` beside the
partitions): recorded while the store holds no state, checked at every later start."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from connectors.recovery_store.errors import RecoveryStoreError
from connectors.recovery_store.namespace import write_once

log = logging.getLogger(__name__)

SHAPE_FILE = "waxstreams-state-settings.json"
# Entries of the record that came after stores were made, with what such a store holds: an
# older record (or none) is judged by it, not taken to match whatever runs now.
RECORDED_LATER = {"WINDOW_STATE": "one key per movieId, per-user tallies"}
CODE_SHAPED = ("WINDOW_STATE",)  # not settings: how the job's version lays its state out


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
        write_once(path, json.dumps(held, indent=1, sort_keys=True) + "\n")
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
            "into it (docs/operations.md, Upgrades)"
        )
        raise RecoveryStoreError(msg)
