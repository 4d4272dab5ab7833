"""A run never deletes output it cannot prove it wrote itself and did not commit.

A start with a fresh recovery store (or none) used to start every sink partition at
seq 0 and "roll back" the committed output of an earlier run into the same prefix.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from producers.movie_impressions import GeneratedEvent, TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import expected_rows

FLOW = FLOWS["movie-impressions"]
HOUR_MS = 3_600_000


def traffic(seed: int, start_ms: int) -> list[GeneratedEvent]:
    return list(generate(TrafficShape(count=3_000, movies=6, users=20, start_ms=start_ms, step_ms=1_200, seed=seed)))


@pytest.fixture
def world(kafka, s3) -> dict[str, str]:
    """Two input topics (one per run: the second run gets new data only), one bucket and prefix."""
    run_id = uuid.uuid4().hex[:8]
    topics = [f"first-{run_id}", f"second-{run_id}", f"dead-{run_id}", f"late-{run_id}"]
    make_topics(kafka, *topics)
    s3.create_bucket(f"out-{run_id}")
    return {
        "first": topics[0],
        "second": topics[1],
        "KAFKA_BROKERS": kafka.bootstrap,
        "DEAD_LETTER_TOPIC": topics[2],
        "LATE_TOPIC": topics[3],
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"out-{run_id}",
        "S3_PREFIX": "impressions",
        "BOUNDED": "true",
        "SINK_PARTITIONS": "2",
    }


def job_env(world: dict[str, str], topic: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in world.items() if k.isupper()}
    return {**env, "IMPRESSIONS_TOPIC": world[topic], **extra}


def rows_in_bucket(s3, world: dict[str, str]) -> pl.DataFrame:
    rows = read_s3_rows(s3, world["S3_BUCKET"], world["S3_PREFIX"])
    return rows.drop("object").sort(pl.all())


def oracle(*batches: list[GeneratedEvent]) -> pl.DataFrame:
    # Each run aggregates its own events: a key in both batches is two rows, one per run.
    return pl.concat([expected_rows(b) for b in batches]).sort(pl.all())


def last_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_a_fresh_store_over_committed_output_stops_or_appends_but_never_deletes(kafka, s3, world, tmp_path: Path):
    first = traffic(seed=1, start_ms=1_546_844_400_000)
    second = traffic(seed=2, start_ms=1_546_844_400_000 + 2 * HOUR_MS)
    produce(iter(first), kafka.bootstrap, world["first"])
    produce(iter(second), kafka.bootstrap, world["second"])

    done = run_dataflow(FLOW, job_env(world, "first"), recovery=init_recovery(tmp_path / "store-1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_frame_equal(rows_in_bucket(s3, world), oracle(first))

    # A new store over that prefix: refused by default, with one line naming the setting...
    store = init_recovery(tmp_path / "store-2")
    refused = run_dataflow(FLOW, job_env(world, "second"), recovery=store, timeout=120)
    assert refused.returncode != 0
    line = last_line(refused)
    assert line.startswith("movie_impressions: ") and "ON_EXISTING_OUTPUT=append" in line, line
    assert_frame_equal(rows_in_bucket(s3, world), oracle(first))  # nothing touched

    # ...and with ON_EXISTING_OUTPUT=append it adds its own output next to the first run's.
    appended = run_dataflow(FLOW, job_env(world, "second", ON_EXISTING_OUTPUT="append"), recovery=store)
    assert appended.returncode == 0, appended.stderr[-3000:]
    assert "written after the restored snapshot" not in appended.stderr, "a fresh run took another run's output"
    assert_frame_equal(rows_in_bucket(s3, world), oracle(first, second))


def test_no_recovery_store_is_refused_unless_allowed_and_then_appends(kafka, s3, world, tmp_path: Path):
    first = traffic(seed=3, start_ms=1_546_844_400_000)
    second = traffic(seed=4, start_ms=1_546_844_400_000 + 2 * HOUR_MS)
    produce(iter(first), kafka.bootstrap, world["first"])
    produce(iter(second), kafka.bootstrap, world["second"])

    refused = run_dataflow(FLOW, job_env(world, "first", ALLOW_NO_RECOVERY="false"), timeout=120)
    assert refused.returncode != 0
    line = last_line(refused)
    assert (
        "ALLOW_NO_RECOVERY=true" in line and "python -m connectors.recovery_store init" in line and "-r <dir>" in line
    ), line

    allowed = {"ALLOW_NO_RECOVERY": "true"}
    assert run_dataflow(FLOW, job_env(world, "first", **allowed)).returncode == 0
    assert_frame_equal(rows_in_bucket(s3, world), oracle(first))
    again = run_dataflow(FLOW, job_env(world, "second", **allowed, ON_EXISTING_OUTPUT="append"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_frame_equal(rows_in_bucket(s3, world), oracle(first, second))
