"""A resume drops exactly the snapshots bytewax itself resumes past, and stays exact."""

from __future__ import annotations

import os
import pickle
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from connectors.recovery_store.partition_files import read_progress
from connectors.recovery_store.resume_epoch import resume_epoch_of
from tests.support.jobs import ROOT, init_recovery, wait_for
from tests.support.runs import FLOW, open_live_store, traffic

# `python -m bytewax.run`, with bytewax's own log on, which names the epoch it resumes from.
RUN_WITH_ENGINE_LOG = (
    "import runpy, sys; from bytewax.tracing import setup_tracing; tracer = setup_tracing(log_level='INFO'); "
    "sys.argv = ['bytewax.run', *sys.argv[1:]]; runpy.run_module('bytewax.run', run_name='__main__')"
)


def _lose_last_frontier(store: Path) -> None:
    """The state a SIGKILL leaves between writing an epoch's snapshots and its frontier.

    bytewax writes an epoch's snapshots, then each worker's frontier past the epoch, and
    only once every worker's frontier is past it commits the epoch: garbage collection
    that keeps, per state key, just its newest snapshot at or before that epoch. So a
    crash always leaves the committed epoch below the resume epoch. Taking the last
    frontier back one epoch reproduces that only if the run's last epoch was not
    committed yet (it kept one epoch of history, -b 1): after a -b 0 run the older
    snapshots that resume needs are already deleted, a state no crash leaves, and the
    resume lost the state of every key last snapshotted in that epoch (rows went missing).
    """
    for part in store.glob("*.sqlite3"):
        with closing(sqlite3.connect(part)) as db, db:
            db.execute(
                "UPDATE fronts SET worker_frontier = worker_frontier - 1 WHERE ex_num = (SELECT MAX(ex_num) FROM exs)"
            )
    resume = resume_epoch_of(read_progress(store))
    committed = max(_committed_epochs(store), default=0)
    assert committed < resume, f"epoch {committed} is committed, resume at {resume}: no crash leaves that"


def _committed_epochs(store: Path) -> list[int]:
    epochs = []
    for part in store.glob("*.sqlite3"):
        with closing(open_live_store(part)) as db:
            epochs += [epoch for (epoch,) in db.execute("SELECT commit_epoch FROM commits")]
    return epochs


def _snapshotted_offsets(store: Path) -> int:
    """The input offsets of the store's newest snapshots, summed over the partitions."""
    newest: dict[str, tuple[int, int]] = {}
    for part in store.glob("*.sqlite3"):
        with closing(open_live_store(part)) as db:
            rows = db.execute("SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%.input'")
            for key, epoch, change in rows:
                if change is not None and epoch >= newest.get(key, (-1, 0))[0]:
                    newest[key] = (epoch, max(pickle.loads(change)[0], 0))  # (offset, the step's state)
    return sum(offset for _, offset in newest.values())


def test_resume_drops_the_snapshots_past_bytewaxs_resume_epoch(new_run, tmp_path: Path) -> None:
    run = new_run()
    run.recovery = init_recovery(tmp_path / "two-part-store", partitions=2)
    run.produce(traffic(6_000, seed=21))
    # Killed once its snapshots cover the input: however fast the machine, the resume below
    # then loads real state (open windows, sink sequence numbers, offsets), not a fresh start.
    job = run.start(workers=2)
    wait_for(lambda: _snapshotted_offsets(run.recovery) == len(run.produced), 120, "snapshots of the whole input", job)
    # ... and once the frontiers passed those snapshots: else (a loaded machine) the finish
    # resumes before them, drops them as abandoned, and starts afresh.
    covering = run.newest_snapshot_epoch()
    wait_for(lambda: resume_epoch_of(read_progress(run.recovery)) > covering, 120, "the frontiers past them", job)
    job.kill()
    run.finish(workers=2, backup_s=1)  # its last epoch stays uncommitted, as at a crash
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
    assert sum(e < epoch for e in before) > 0, "no snapshot to resume from: a fresh start tests nothing"
    assert f"dropped {abandoned} snapshots of epochs >= {epoch} left by a crash" in result.stderr
    run.assert_exact()
