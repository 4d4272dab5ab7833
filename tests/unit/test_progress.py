"""The progress line of bounded runs."""

from __future__ import annotations

import logging

import pytest

from connectors.transports.progress import BoundedProgress


def test_progress_sums_partitions_and_estimates_the_time_left(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = BoundedProgress(every_s=10, clock=lambda: now[0])
    progress.register("0-t", 1_000, 5_000)  # resumed at 1,000: 4,000 to go
    progress.register("1-t", 0, 6_000)
    with caplog.at_level(logging.INFO):
        progress.advance("0-t", 3_000)
        assert not caplog.records  # not due yet
        now[0] = 110.0
        progress.advance("1-t", 3_000)
    [record] = caplog.records
    # 5,000 of 10,000 in 10 s: 500/s, 10 s left.
    assert record.getMessage() == "progress: 5,000 of 10,000 events (50.0 %), 500 events/s, about 10 s left"


def test_reading_past_the_registered_end_counts_no_more_than_the_range() -> None:
    progress = BoundedProgress(every_s=10, clock=lambda: 1.0)
    progress.register("0-t", 0, 10)
    progress.advance("0-t", 50)
    assert progress.line(2.0).startswith("progress: 10 of 10 events (100.0 %)")
