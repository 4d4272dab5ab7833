"""Exactly-once where readers look: a reader of the Delta log during SIGKILLs and resumes."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from polars.testing import assert_frame_equal

from connectors.sinks.delta_table import DeltaLocation
from tests.support.oracles import expected_rows
from tests.support.readers import COLUMNS, KEY, PollingReader, crash_and_resume
from tests.support.runs import ImpressionsRun, traffic


def version(location: DeltaLocation) -> int:
    try:
        return DeltaTable(location.uri, storage_options=location.storage_options()).version()
    except TableNotFoundError:
        return -1


def log_reader(location: DeltaLocation, versions: set[int]) -> PollingReader:
    """Reads the table through its log, as polars, DuckDB or Spark do."""

    def read() -> tuple[str, pl.DataFrame] | None:
        try:
            table = DeltaTable(location.uri, storage_options=location.storage_options())
        except TableNotFoundError:
            return None
        # One snapshot of the log: the version and its rows belong together.
        versions.add(table.version())
        return f"version {table.version()}", pl.read_delta(table)

    return PollingReader(read)


@pytest.mark.parametrize("workers", [2])  # 2 workers: the harder case (1 worker runs in the crash tests)
def test_a_delta_reader_never_sees_a_doubled_or_vanishing_row_through_sigkills(new_run, workers: int) -> None:
    run: ImpressionsRun = new_run(output_format="delta")
    location = DeltaLocation(f"s3://{run.bucket}/{run.prefix}", run.env["S3_ENDPOINT_URL"], "us-east-1")
    versions: set[int] = set()
    reader = log_reader(location, versions)
    reader.start()
    try:
        # Right after a sink partition's next commit: the epoch's other partitions, and bytewax's
        # snapshot of it, are usually not stored yet, so the resume replays versions the log holds.
        def next_commit() -> Callable[[], bool]:
            target = version(location) + 1
            return lambda: version(location) >= target

        crash_and_resume(run, workers, traffic(24_000, seed=20 + workers), next_commit, "a Delta commit", kills=4)
        reader.wait_for_a_full_read()
    finally:
        reader.stop.set()
        reader.join(timeout=30)

    assert reader.problems == [], "\n".join(reader.problems[:10])
    assert reader.reads >= 20 and len(versions) >= 5, (reader.reads, len(versions))
    assert max(versions) == version(location), "the reader never read the last version"
    final = pl.read_delta(location.uri, storage_options=location.storage_options()).select(COLUMNS)
    assert final.filter(pl.len().over(KEY) > 1).is_empty()
    assert_frame_equal(final.sort("movieId", "userId", "windowStart"), expected_rows(run.produced))
    resumes = "".join(job.output() for job in run.jobs)
    assert "already committed" in resumes, "no resume found its replayed versions in the log: the test missed the case"
