"""The resume epoch bytewax 0.21.1 computes, and how `python -m bytewax.run` names the store."""

from __future__ import annotations

from pathlib import Path

from connectors.recovery_store import recovery_directory, resume_epoch


def test_resume_epoch_is_the_slowest_workers_furthest_frontier() -> None:
    # Worker 0 reported 5 then 7; worker 1 only 6: the cluster finished epochs < 6.
    assert resume_epoch(2, 3, [(0, 5), (0, 7), (1, 6)]) == 6


def test_a_worker_that_reported_nothing_holds_the_resume_at_the_executions_start() -> None:
    assert resume_epoch(3, 4, [(0, 9), (1, 9)]) == 4


def test_an_execution_without_progress_resumes_where_it_started() -> None:
    assert resume_epoch(1, 12, []) == 12


def test_recovery_directory_from_the_flag_or_the_environment() -> None:
    argv = ["dataflows.movie_impressions:flow", "-w", "2", "-r", "/data/rec", "-s", "1", "-b", "0"]
    assert recovery_directory(argv, {}) == Path("/data/rec")
    assert recovery_directory(["x:flow", "--recovery-directory=/a"], {}) == Path("/a")
    assert recovery_directory(["x:flow"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}) == Path("/env")
    assert recovery_directory(["x:flow", "-r", "/flag"], {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}) == Path("/flag")
    assert recovery_directory(["x:flow", "-w", "2"], {}) is None
