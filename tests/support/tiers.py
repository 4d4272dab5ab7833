"""The folder is the tier: a tier folder's conftest.py marks every test under it with its marker."""

from __future__ import annotations

from pathlib import Path

import pytest


def mark_tier(items: list[pytest.Item], conftest_file: str, marker: str) -> None:
    """Add `marker` to every item collected from the folder holding `conftest_file` (the
    collection hook sees the whole session's items, not only this folder's)."""
    folder = Path(conftest_file).parent
    for item in items:
        if folder in item.path.parents:
            item.add_marker(marker)
