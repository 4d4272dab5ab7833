"""The chaos tier: every test under tests/chaos is marked `chaos` (only `make chaos` selects it),
and `make chaos` prints one table of what its sequences did at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.tiers import mark_tier

RESULTS = Path(os.environ.get("CHAOS_RESULTS", ".cache/chaos.jsonl"))
COLUMNS = (
    "output",
    "sequences",
    "native reader",
    "crashes",
    "frontier kills",
    "stalls",
    "outages",
    "records",
    "lost",
    "doubled",
    "failures",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "chaos")


def pytest_sessionstart(session: pytest.Session) -> None:
    chaos = (session.config.getoption("markexpr") or "").strip() == "chaos"  # as `make chaos` selects
    if chaos and not hasattr(session.config, "workerinput"):  # the controller: one table per session
        RESULTS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not RESULTS.exists() or config.getoption("markexpr").strip() != "chaos":
        return
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    terminalreporter.section("chaos: every output kind")
    terminalreporter.write_line(" | ".join(f"{c:>14}" for c in COLUMNS))
    for row in sorted(rows, key=lambda r: r["output"]):
        terminalreporter.write_line(" | ".join(f"{row.get(c, 0)!s:>14}" for c in COLUMNS))
    totals = {c: sum(r.get(c, 0) for r in rows) for c in COLUMNS[1:]}
    terminalreporter.write_line(" | ".join(f"{v!s:>14}" for v in ["all", *totals.values()]))
