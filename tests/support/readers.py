"""A reader polling a job's output during SIGKILLs and resumes, for the exactly-once-for-readers tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import polars as pl

from producers.movie_impressions import GeneratedEvent
from tests.support.jobs import wait_for
from tests.support.runs import BOUND_S, ImpressionsRun

KEY = ("movieId", "userId", "windowStart")
COLUMNS = ["movieId", "userId", "impressions", "latestImpression", "windowStart", "windowEnd"]


class PollingReader(threading.Thread):
    """Reads the whole output again and again, and remembers every row it ever saw.

    `read` returns one consistent read as a reader would make it, (what it read, rows),
    or None while there is nothing to read yet. Each read is checked against every
    earlier one: no doubled key, no row gone, no row changed.
    """

    def __init__(self, read: Callable[[], tuple[str, pl.DataFrame] | None]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.stop = threading.Event()
        self.reads = 0
        self.seen: dict[tuple, tuple] = {}  # key -> the full row, as first seen
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                result = self.read()
            except Exception as exc:  # a read a real reader would have failed with
                self.problems.append(f"read {self.reads + 1} failed: {type(exc).__name__}: {exc}")
                continue
            if result is None:
                time.sleep(0.1)
                continue
            self.reads += 1
            self.check(*result)

    def check(self, what: str, rows: pl.DataFrame) -> None:
        rows = rows.select(COLUMNS)
        doubled = rows.filter(pl.len().over(KEY) > 1)
        if not doubled.is_empty():
            self.problems.append(f"{what}: {doubled.height} doubled rows, e.g. {doubled.row(0)}")
        now = {row[:2] + row[4:5]: row for row in rows.rows()}
        gone = [key for key in self.seen if key not in now]
        if gone:
            self.problems.append(f"{what}: {len(gone)} rows seen before are gone, e.g. {gone[0]}")
        changed = [key for key, row in now.items() if self.seen.get(key, row) != row]
        if changed:
            self.problems.append(f"{what}: {len(changed)} rows changed, e.g. {changed[0]}")
        for key, row in now.items():
            self.seen.setdefault(key, row)

    def wait_for_a_full_read(self) -> None:
        """Until a read that began after this call has been checked."""
        after = self.reads + 2
        wait_for(lambda: self.reads >= after or not self.is_alive(), 60, "the reader to read everything again")


def crash_and_resume(
    run: ImpressionsRun,
    workers: int,
    events: list[GeneratedEvent],
    kill_point: Callable[[], Callable[[], bool]],
    what: str,
    kills: int,
    after_kill: Callable[[], None] = lambda: None,
) -> None:
    """`kills` SIGKILLs at `kill_point`, each with downtime past the lateness bound, then a bounded run to the end.

    Each attempt first stores a snapshot (progress), then `kill_point()` (called then)
    returns the condition to kill on, and traffic flows: 4,000 events per kill, after
    8,000 waiting in the topic from the start.
    """
    run.produce(events[:8_000])
    cuts = range(8_000, 8_000 + 4_000 * kills + 1, 4_000)
    assert cuts[-1] == len(events), f"{kills} kills take {cuts[-1]} events"
    for cycle, (start, end) in enumerate(itertools.pairwise(cuts)):
        stored = run.newest_snapshot_epoch()
        job = run.start(workers)
        wait_for(lambda s=stored: run.newest_snapshot_epoch() > s, 90, f"a snapshot in cycle {cycle}", job)
        # Traffic only now: windows close, and are written, after the snapshot just stored.
        condition = kill_point()
        feeder = threading.Thread(target=run.produce, args=(events[start:end], 2000.0))
        feeder.start()
        wait_for(condition, 90, f"{what} in cycle {cycle}", job, 0.02)
        job.kill()
        after_kill()
        feeder.join()
        time.sleep(BOUND_S + 1)  # down longer than the lateness bound
    run.finish(workers)
