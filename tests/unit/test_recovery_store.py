"""The resume epoch bytewax 0.21.1 computes, and how `python -m bytewax.run` names the store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from connectors.recovery_store.resume import epoch_interval, recovery_directory
from connectors.recovery_store.resume_epoch import PartitionProgress, missing_partitions, resume_epoch, resume_epoch_of


def test_resume_epoch_is_the_slowest_workers_furthest_frontier() -> None:
    # Worker 0 reported 5 then 7; worker 1 only 6: the cluster finished epochs < 6.
    assert resume_epoch(2, 3, [(0, 5), (0, 7), (1, 6)]) == 6


def test_a_worker_that_reported_nothing_holds_the_resume_at_the_executions_start() -> None:
    assert resume_epoch(3, 4, [(0, 9), (1, 9)]) == 4


def test_an_execution_without_progress_resumes_where_it_started() -> None:
    assert resume_epoch(1, 12, []) == 12


def test_resume_epoch_of_partitions_takes_the_last_execution_wherever_its_rows_are() -> None:
    # bytewax hashes each row to a partition: the execution's row and its workers' fronts
    # can be in different partitions; older executions' fronts do not count.
    parts = [
        PartitionProgress(0, 3, ((1, 2, 1),), ((2, 1, 8), (1, 0, 40))),
        PartitionProgress(1, 3, ((2, 2, 6),), ((2, 0, 9),)),
        PartitionProgress(2, 3, (), ((2, 0, 7),)),
    ]
    assert resume_epoch_of(parts) == 8
    assert resume_epoch_of([PartitionProgress(0, 1, (), ())]) == 1  # nothing ran yet


def test_missing_partitions_of_a_spread_store() -> None:
    assert missing_partitions([PartitionProgress(1, 3, (), ())]) == [0, 2]
    assert missing_partitions([PartitionProgress(i, 2, (), ()) for i in (1, 0)]) == []


def test_recovery_directory_from_the_flag_or_the_environment() -> None:
    argv = ["dataflows.movie_impressions:flow", "-w", "2", "-r", "/data/rec", "-s", "1", "-b", "0"]
    assert recovery_directory(argv, {}) == Path("/data/rec")
    assert recovery_directory(["x:flow", "--recovery-directory=/a"], {}) == Path("/a")
    assert recovery_directory(["x:flow"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}) == Path("/env")
    assert recovery_directory(["x:flow", "-r", "/flag"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}) == Path("/flag")
    assert recovery_directory(["x:flow", "-w", "2"], {}) is None


def test_epoch_interval_from_the_flag_or_the_environment_or_bytewax_s_default() -> None:
    argv = ["dataflows.booking_correlation:flow", "-r", "/data/rec", "-s", "5", "-b", "0"]
    assert epoch_interval(argv, {}) == timedelta(seconds=5)
    assert epoch_interval(["x:flow", "--snapshot-interval=3"], {}) == timedelta(seconds=3)
    assert epoch_interval(["x:flow"], {"BYTEWAX_SNAPSHOT_INTERVAL": "10"}) == timedelta(seconds=10)
    assert epoch_interval(["x:flow", "-s", "2"], {"BYTEWAX_SNAPSHOT_INTERVAL": "10"}) == timedelta(seconds=2)
    assert epoch_interval(["x:flow"], {}) == timedelta(seconds=10)
