"""Exactly-once where readers look: a reader of the Delta log during SIGKILLs and resumes."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from polars.testing import assert_frame_equal

from connectors.sinks.delta_table import DeltaLocation
from tests.chaos import wait_for
from tests.oracles import expected_rows
from tests.runs import BOUND_S, ImpressionsRun, traffic

pytestmark = pytest.mark.guarantees
KEY = ("movieId", "userId", "windowStart")
COLUMNS = ["movieId", "userId", "impressions", "latestImpression", "windowStart", "windowEnd"]


class LogReader(threading.Thread):
    """Polls the table through its log as a reader would, and remembers every row it ever saw."""

    def __init__(self, location: DeltaLocation) -> None:
        super().__init__(daemon=True)
        self.location = location
        self.stop = threading.Event()
        self.reads = 0
        self.versions: set[int] = set()
        self.seen: dict[tuple, tuple] = {}  # key -> the full row, as first seen
        self.problems: list[str] = []

    def version(self) -> int:
        try:
            return DeltaTable(self.location.uri, storage_options=self.location.storage_options()).version()
        except TableNotFoundError:
            return -1

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                table = DeltaTable(self.location.uri, storage_options=self.location.storage_options())
            except TableNotFoundError:
                time.sleep(0.1)
                continue
            # One snapshot of the log: the version and its rows belong together.
            rows = pl.read_delta(table).select(COLUMNS)
            self.reads += 1
            self.versions.add(table.version())
            self.check(table.version(), rows)

    def check(self, version: int, rows: pl.DataFrame) -> None:
        doubled = rows.filter(pl.len().over(KEY) > 1)
        if not doubled.is_empty():
            self.problems.append(f"version {version}: {doubled.height} doubled rows, e.g. {doubled.row(0)}")
        now = {row[:2] + row[4:5]: row for row in rows.rows()}
        gone = [key for key in self.seen if key not in now]
        if gone:
            self.problems.append(f"version {version}: {len(gone)} rows seen before are gone, e.g. {gone[0]}")
        changed = [key for key, row in now.items() if self.seen.get(key, row) != row]
        if changed:
            self.problems.append(f"version {version}: {len(changed)} rows changed, e.g. {changed[0]}")
        for key, row in now.items():
            self.seen.setdefault(key, row)


@pytest.mark.parametrize("workers", [2])  # 2 workers: the harder case (1 worker runs in the crash tests)
def test_a_delta_reader_never_sees_a_doubled_or_vanishing_row_through_sigkills(new_run, workers: int) -> None:
    run: ImpressionsRun = new_run(output_format="delta")
    location = DeltaLocation(f"s3://{run.bucket}/{run.prefix}", run.env["S3_ENDPOINT_URL"], "us-east-1")
    reader = LogReader(location)
    reader.start()
    events = traffic(24_000, seed=20 + workers)
    try:
        run.produce(events[:8_000])
        # Each cycle lets the attempt store a snapshot (progress), then kills it right after
        # a sink partition's next Delta commit: the epoch's other partitions, and bytewax's
        # snapshot of it, are usually not stored yet, so the resume replays versions the
        # log already holds.
        for cycle, (start, end) in enumerate([(8_000, 12_000), (12_000, 16_000), (16_000, 20_000), (20_000, 24_000)]):
            stored = run.newest_snapshot_epoch()
            job = run.start(workers)
            feeder = threading.Thread(target=run.produce, args=(events[start:end], 4000.0))
            feeder.start()
            wait_for(lambda s=stored: run.newest_snapshot_epoch() > s, 90, f"a snapshot in cycle {cycle}", job)
            target = reader.version() + 1
            wait_for(lambda t=target: reader.version() >= t, 90, f"a Delta commit in cycle {cycle}", job, 0.02)
            job.kill()
            feeder.join()
            time.sleep(BOUND_S + 1)  # down longer than the lateness bound
        run.finish(workers)
        final_version = reader.version()
        wait_for(lambda: max(reader.versions, default=-1) >= final_version, 60, "the reader to see the last version")
    finally:
        reader.stop.set()
        reader.join(timeout=30)

    assert reader.problems == [], "\n".join(reader.problems[:10])
    assert reader.reads >= 20 and len(reader.versions) >= 5, (reader.reads, len(reader.versions))
    final = pl.read_delta(location.uri, storage_options=location.storage_options()).select(COLUMNS)
    assert final.filter(pl.len().over(KEY) > 1).is_empty()
    assert_frame_equal(final.sort("movieId", "userId", "windowStart"), expected_rows(run.produced))
    resumes = "".join(job.output() for job in run.jobs)
    assert "already committed" in resumes, "no resume found its replayed versions in the log: the test missed the case"
