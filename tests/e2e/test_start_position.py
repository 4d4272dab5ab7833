"""START_POSITION through the job: a fresh store starts where it says; a resume ignores it."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import read_s3_rows
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows
from tests.support.runs import impressions_env

HOUR_MS = 3_600_000


def test_a_fresh_store_from_a_kafka_timestamp_then_a_resume_that_ignores_it(kafka, s3, tmp_path: Path) -> None:
    env = impressions_env(kafka, s3, "sp")
    topic, bucket = env["IMPRESSIONS_TOPIC"], env["S3_BUCKET"]
    old = list(generate(TrafficShape(count=1_500, movies=4, users=10, step_ms=1_000, seed=11)))
    new = list(
        generate(TrafficShape(count=1_500, movies=4, users=10, start_ms=1_546_844_400_000 + 3 * HOUR_MS, seed=12))
    )
    produce(iter(old), kafka.bootstrap, topic)
    # Kafka stamps records with their produce time: every old record is before `cut`, every new one at or after.
    cut = int(time.time() * 1000) + 1
    while time.time() * 1000 < cut + 1:
        time.sleep(0.001)
    produce(iter(new), kafka.bootstrap, topic)

    store = init_recovery(tmp_path / "recovery")
    first = run_dataflow(FLOWS["movie-impressions"], {**env, "START_POSITION": f"timestamp:{cut}"}, recovery=store)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = read_s3_rows(s3, bucket, "impressions").drop("object").sort(pl.all())
    assert_frame_equal(rows, expected_rows(new).sort(pl.all()))

    # A resume follows its snapshots (the end of the topic), whatever START_POSITION now says.
    more = list(
        generate(TrafficShape(count=500, movies=4, users=10, start_ms=1_546_844_400_000 + 6 * HOUR_MS, seed=13))
    )
    produce(iter(more), kafka.bootstrap, topic)
    resumed = run_dataflow(FLOWS["movie-impressions"], {**env, "START_POSITION": "earliest"}, recovery=store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "START_POSITION=earliest applies only to partitions without recovery state" in resumed.stderr
    rows = read_s3_rows(s3, bucket, "impressions").drop("object").sort(pl.all())
    assert_frame_equal(rows, pl.concat([expected_rows(new), expected_rows(more)]).sort(pl.all()))


@pytest.mark.parametrize("job", ["movie-impressions", "booking-correlation"])
def test_a_bad_start_position_is_one_line(job: str) -> None:
    result = run_dataflow(FLOWS[job], {"START_POSITION": "timestamp:last tuesday"}, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"{job.replace('-', '_')}: START_POSITION='timestamp:last tuesday': 'last tuesday' is neither an "
        "ISO-8601 time nor epoch milliseconds: e.g. timestamp:2026-11-25T06:00:00Z"
    )
