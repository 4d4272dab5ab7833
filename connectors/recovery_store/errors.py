"""The recovery store's one error type, and the command that makes a store, which its messages name."""

from __future__ import annotations

from pathlib import Path

from connectors.errors import WaxstreamsError


class RecoveryStoreError(WaxstreamsError, RuntimeError):
    """The recovery store is missing, empty or not a bytewax store; the message names the fix."""


def init_command(directory: Path | str = "<dir>", partitions: int | str = 1) -> str:
    return f"python -m connectors.recovery_store init {directory} --partitions {partitions}"
