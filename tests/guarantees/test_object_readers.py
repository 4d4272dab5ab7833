"""Exactly-once where readers look: a reader listing and reading the object layout during SIGKILLs and resumes."""

from __future__ import annotations

import io
from collections.abc import Callable

import polars as pl
import pytest

from tests.support.faults import FlakyProxy
from tests.support.readers import PollingReader, crash_and_resume
from tests.support.runs import ImpressionsRun, SecondObjectOfAWrite, traffic


def object_reader(run: ImpressionsRun) -> PollingReader:
    """Lists the prefix and reads every data object in it, as `scan_parquet("…/**/*.parquet")` does."""
    client = run.s3.client()
    rows_of: dict[tuple[str, str], pl.DataFrame] = {}  # (key, ETag) -> rows: an object is read again if it changes

    def read() -> tuple[str, pl.DataFrame] | None:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=run.bucket, Prefix=f"{run.prefix}/")
        listed = [(o["Key"], o["ETag"]) for p in pages for o in p.get("Contents", []) if "/_sink/" not in o["Key"]]
        for key, etag in listed:
            if (key, etag) not in rows_of:
                # IfMatch: an object deleted or replaced since the listing fails the read, as it would a query.
                body = client.get_object(Bucket=run.bucket, Key=key, IfMatch=etag)["Body"].read()
                rows_of[key, etag] = pl.read_parquet(io.BytesIO(body))
        if not listed:
            return None
        return f"a read of {len(listed)} objects", pl.concat([rows_of[entry] for entry in listed])

    return PollingReader(read)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_object_reader_never_sees_a_doubled_or_vanishing_row_through_sigkills(s3, new_run, workers: int) -> None:
    proxy = FlakyProxy(s3.port)  # the job's S3; the reader reads S3 directly
    run: ImpressionsRun = new_run(proxy.url)
    reader = object_reader(run)
    reader.start()

    def half_a_write() -> Callable[[], bool]:
        # A write hangs after its manifest and first object: what a reader may see of a write
        # whose epoch bytewax never stores, so the resume replays it. Killed there.
        before = len(run.data_objects())  # counted first: a write may begin as soon as the stall is armed
        proxy.stall_when(SecondObjectOfAWrite())
        return lambda: proxy.stalled > 0 and len(run.data_objects()) > before

    try:
        # 2 kills per worker count keep the test near a minute.
        events = traffic(16_000, seed=30 + workers)
        crash_and_resume(
            run,
            workers,
            events,
            half_a_write,
            "half of a sink write",
            kills=2,
            after_kill=lambda: proxy.set_mode("pass"),
        )
        reader.wait_for_a_full_read()
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        proxy.close()

    assert reader.problems == [], "\n".join(reader.problems[:10])
    assert reader.reads >= 10, reader.reads
    run.assert_exact()  # the oracle, no doubled row, every object in a manifest
    resumes = "".join(job.output() for job in run.jobs)
    assert "written after the restored snapshot stay" in resumes, "no resume found writes past its snapshot"
