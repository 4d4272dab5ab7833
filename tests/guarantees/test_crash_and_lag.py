"""Nothing lost, nothing doubled: SIGKILL at chosen points, downtime, lag and backfill."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.faults import FlakyProxy
from tests.support.jobs import wait_for
from tests.support.runs import BOUND_S, SecondObjectOfAWrite, traffic


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_window_after_snapshot_and_during_s3_write(s3, new_run, workers: int) -> None:
    proxy = FlakyProxy(s3.port)
    run = new_run(proxy.url)
    events = traffic(30_000, seed=workers)
    try:
        # 1. Mid-window: windows have closed and been written, others are open.
        run.produce(events[:12_000])
        job = run.start(workers)
        wait_for(lambda: len(run.data_objects()) > 0, 60, "first objects", job)
        job.kill()
        time.sleep(BOUND_S + 1)  # down longer than the lateness bound

        # 2. Right after a snapshot was stored.
        run.produce(events[12_000:20_000])
        job = run.start(workers)
        before = run.newest_snapshot_epoch()
        wait_for(lambda: run.newest_snapshot_epoch() > before, 60, "a snapshot", job)
        job.kill()
        time.sleep(BOUND_S + 1)

        # 3. During an S3 write: the second object of one sink write hangs, the first is in.
        proxy.stall_when(SecondObjectOfAWrite())
        job = run.start(workers)
        feeder = threading.Thread(target=run.produce, args=(events[20_000:], 3000.0))
        feeder.start()
        wait_for(lambda: proxy.stalled > 0, 60, "an S3 write to hang half-way", job)
        job.kill()
        feeder.join()
        proxy.set_mode("pass")
        assert run.data_objects() - run.manifest_objects() == set()
        assert run.manifest_objects() - run.data_objects(), "the kill did not interrupt a write"
        time.sleep(BOUND_S + 1)

        run.finish(workers)
    finally:
        proxy.close()
    run.assert_exact()


def test_large_backlog_then_catch_up(new_run) -> None:
    """The job starts far behind and runs at full speed: nothing in-order is judged late."""
    run = new_run()
    run.produce(traffic(100_000, seed=7))
    assert run.consumer_lag() == 100_000
    run.finish(workers=2)
    run.assert_exact()


def test_artificially_slowed_job_keeps_up_with_nothing_late(new_run) -> None:
    """SIGSTOP/SIGCONT throttles the job to a fraction of its speed while traffic flows."""
    run = new_run()
    events = traffic(20_000, seed=8)
    job = run.start()
    feeder = threading.Thread(target=run.produce, args=(events, 4000.0))
    feeder.start()
    wait_for(lambda: run.consumer_offsets()[1] > 0, 60, "the job's first committed offsets", job)
    job.pause()  # one long stall: 3 s of traffic piles up
    time.sleep(3)
    lag = run.consumer_lag()
    job.resume()
    while feeder.is_alive():  # then a 20% duty cycle
        job.pause()
        time.sleep(0.4)
        job.resume()
        time.sleep(0.1)
    feeder.join()
    assert lag > 2_000, f"the stalled job was only {lag} events behind"
    job.kill()
    run.finish()
    run.assert_exact()
