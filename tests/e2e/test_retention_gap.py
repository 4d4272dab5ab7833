"""The job resumed after retention deleted records it had not read: it reads all that is left."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from polars.testing import assert_frame_equal

from producers.movie_impressions import TrafficShape, generate, produce
from tests.support.data import read_s3_rows
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows
from tests.support.runs import impressions_env

HOUR_MS = 3_600_000


def test_a_resume_past_retention_reads_from_the_log_start_and_reports_the_gap(kafka, s3, tmp_path: Path) -> None:
    env = impressions_env(kafka, s3, "ret", input_partitions=1)  # one partition: offset n is the n-th event
    topic, bucket = env["IMPRESSIONS_TOPIC"], env["S3_BUCKET"]
    store = init_recovery(tmp_path / "recovery")
    before = list(generate(TrafficShape(count=1_000, movies=5, users=10, step_ms=1_000, jitter_ms=0, seed=5)))
    produce(iter(before), kafka.bootstrap, topic)
    assert run_dataflow(FLOWS["movie-impressions"], env, recovery=store).returncode == 0

    # While the job is down, 800 more arrive and retention deletes the first 300 of them.
    shape = TrafficShape(
        count=800, movies=5, users=10, start_ms=1_546_844_400_000 + 3 * HOUR_MS, step_ms=1_000, jitter_ms=0, seed=6
    )
    after = list(generate(shape))
    produce(iter(after), kafka.bootstrap, topic)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, len(before) + 300)]).values():
        future.result(timeout=30)

    resumed = run_dataflow(FLOWS["movie-impressions"], env, recovery=store)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    gap_lines = [line for line in resumed.stderr.splitlines() if "lost to retention" in line]
    assert len(gap_lines) == 1 and f"0-{topic}: 300 records lost to retention" in gap_lines[0], gap_lines
    rows = read_s3_rows(s3, bucket, "impressions").drop("object").sort(pl.all())
    assert_frame_equal(rows, pl.concat([expected_rows(before), expected_rows(after[300:])]).sort(pl.all()))
