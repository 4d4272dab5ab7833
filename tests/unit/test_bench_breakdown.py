"""`make bench`'s per-event cost breakdown (bench/breakdown.py) and its table (bench/report.py)."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import numpy as np
import polars as pl

from bench.breakdown import Cost, Stopwatch, closable, per_event, step_and_close
from bench.report import breakdown_section, render
from connectors.transports.batch import RecordBatch
from dataflows.settings import MovieImpressionsSettings
from producers.movie_impressions import TrafficShape, generate


def test_each_part_is_per_event_and_the_remainder_is_the_job_minus_their_sum() -> None:
    parts = {"read": Cost(wall=1.0, cpu=0.5), "step": Cost(wall=2.0, cpu=1.5)}
    out = per_event(parts, Cost(wall=2.5, cpu=3.0), events=1_000_000)
    assert out["read"] == {"wall_us": 1.0, "cpu_us": 0.5}
    assert out["step"] == {"wall_us": 2.0, "cpu_us": 1.5}
    assert out["parts"] == {"wall_us": 3.0, "cpu_us": 2.0}
    assert out["job"] == {"wall_us": 2.5, "cpu_us": 3.0}
    # Wall: the parts overlap in the job, so the remainder can be negative; CPU adds up.
    assert out["other"] == {"wall_us": -0.5, "cpu_us": 1.0}


def test_a_window_closes_once_the_watermark_reaches_its_end() -> None:
    open_windows = {(900_000, "movies-01"), (0, "movies-02"), (0, "movies-01"), (1_800_000, "movies-00")}
    assert closable(open_windows, 899_999, 900_000) == []
    assert closable(open_windows, 900_000, 900_000) == [(0, "movies-01"), (0, "movies-02")]
    assert closable(open_windows, 2**62, 900_000) == sorted(open_windows)


def test_every_event_reaches_exactly_one_closed_window_row_through_the_jobs_own_step_and_close() -> None:
    shape = TrafficShape(count=20_000, movies=20, users=100, step_ms=360, jitter_ms=2_000, seed=1)  # 2 h
    events = list(generate(shape))
    values: list[list[bytes | None]] = [[], []]
    for e in events:  # two partitions by key, as the producer's
        values[zlib.crc32(e.key) % 2].append(e.value)
    batches = {
        p: [
            RecordBatch("t", p, part[i : i + 3_000], np.arange(i, min(i + 3_000, len(part)), dtype=np.int64))
            for i in range(0, len(part), 3_000)
        ]
        for p, part in enumerate(values)
    }
    settings = replace(MovieImpressionsSettings.from_env({"IMPRESSIONS_TOPIC": "t"}), bounded=True)
    step, close = Stopwatch(), Stopwatch()

    closes = step_and_close(settings, batches, step, close)

    rows = pl.concat([item.rows for items in closes for _, item in items])
    decoded = pl.DataFrame([json.loads(e.value) for e in events])
    expected = (
        decoded.group_by("movieId", "userId", windowStart=pl.col("timestamp") // 900_000 * 900_000)
        .agg(impressions=pl.len().cast(pl.Int64), latestImpression=pl.col("timestamp").max())
        .sort("movieId", "userId", "windowStart")
    )
    got = rows.select(expected.columns).sort("movieId", "userId", "windowStart")
    assert got.equals(expected)  # each (movie, user, window) once: every window closed, none twice
    assert len(closes) > 1  # closed as the watermark passed, not all at the end
    assert step.wall > 0 and step.cpu > 0 and close.wall > 0


def test_the_table_has_a_row_per_part_and_a_column_pair_per_reader() -> None:
    rest = {"step": Cost(1.2, 1.1), "close": Cost(0.1, 0.1), "sink": Cost(0.5, 0.4), "startup": Cost(1.0, 1.2)}
    figures = per_event({"read": Cost(1.0, 0.8), **rest}, Cost(3.0, 4.0), events=1_000_000)
    native = per_event({"read": Cost(0.4, 0.3), **rest}, Cost(2.5, 3.5), events=1_000_000)
    lines = breakdown_section({"events": 1_000_000, "readers": {"confluent": figures, "native": native}})
    assert lines[2:5] == [
        "| part | confluent-kafka, wall | CPU | native reader, wall | CPU |",
        "|---|---:|---:|---:|---:|",
        "| read: the job's read loop, a reader per partition | 1.00 | 0.80 | 0.40 | 0.30 |",
    ]
    assert "| sum of the parts | 3.80 | 3.60 | 3.20 | 3.10 |" in lines
    assert "| **the job, end to end** | 3.00 | 4.00 | 2.50 | 3.50 |" in lines
    assert "| engine/other: the job minus the parts | -0.80 | 0.40 | -0.70 | 0.40 |" in lines
    # In the results page, under its workload.
    page = render(
        {"machine": "m", "date": "d", "runs": 3, "workloads": {"high": {"breakdown": {"events": 1, "readers": {}}}}}
    )
    assert "### Workload `high`" in page and "Per event, µs, over 1 events" in page
