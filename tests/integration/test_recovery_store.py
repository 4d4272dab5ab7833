"""A resume drops exactly the snapshots bytewax itself resumes past, and stays exact."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT, init_recovery
from tests.runs import FLOW, traffic

pytestmark = pytest.mark.guarantees

# `python -m bytewax.run`, with bytewax's own log on, which names the epoch it resumes from.
RUN_WITH_ENGINE_LOG = (
    "import runpy, sys; from bytewax.tracing import setup_tracing; tracer = setup_tracing(log_level='INFO'); "
    "sys.argv = ['bytewax.run', *sys.argv[1:]]; runpy.run_module('bytewax.run', run_name='__main__')"
)


def _lose_last_frontier(store: Path) -> None:
    """The state a SIGKILL leaves between writing an epoch's snapshots and its frontier."""
    for part in store.glob("*.sqlite3"):
        with closing(sqlite3.connect(part)) as db, db:
            db.execute(
                "UPDATE fronts SET worker_frontier = worker_frontier - 1 WHERE ex_num = (SELECT MAX(ex_num) FROM exs)"
            )


def test_resume_drops_the_snapshots_past_bytewaxs_resume_epoch(new_run, tmp_path: Path) -> None:
    run = new_run()
    run.recovery = init_recovery(tmp_path / "two-part-store", partitions=2)
    run.produce(traffic(6_000, seed=21))
    run.finish(workers=2)
    _lose_last_frontier(run.recovery)
    before = run.snapshot_epochs()

    result = subprocess.run(
        [sys.executable, "-c", RUN_WITH_ENGINE_LOG, FLOW, "-w", "2", "-r", str(run.recovery), "-s", "1", "-b", "0"],
        env={**os.environ, **run.env, "BOUNDED": "true"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    engine_resume = re.search(r"ResumeEpoch\((\d+)\)", result.stdout)
    assert engine_resume, result.stdout[-3000:]
    epoch = int(engine_resume.group(1))
    abandoned = sum(e >= epoch for e in before)
    assert abandoned > 0, "the store held no snapshot past the resume epoch: nothing was tested"
    assert f"dropped {abandoned} snapshots of epochs >= {epoch} left by a crash" in result.stderr
    run.assert_exact()
