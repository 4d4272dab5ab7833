"""The movie-impressions job end to end: real broker, real S3, run as a user runs it."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from producers.movie_impressions import GeneratedEvent, TrafficShape, generate, produce
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.jobs import FLOWS, init_recovery, run_dataflow
from tests.support.oracles import WINDOW_MS, expected_rows, raw_of

# 24,000 events, one every 360 ms of event time: 2.4 h, ten 15-minute windows.
SHAPE = TrafficShape(
    count=24_000,
    movies=12,
    users=60,
    step_ms=360,
    jitter_ms=5_000,
    invalid_fraction=0.03,
    late_fraction=0.01,
    seed=42,
)


@pytest.fixture(scope="module")
def produced(kafka, unique) -> tuple[str, list[GeneratedEvent]]:
    topic = f"impressions-{unique}"
    make_topics(kafka, topic, partitions=3)
    events = list(generate(SHAPE))
    produce(iter(events), kafka.bootstrap, topic)
    return topic, events


@pytest.fixture(scope="module")
def unique() -> str:  # module-wide: the produced topic is shared by the runs below
    import uuid

    return uuid.uuid4().hex[:8]


def job_env(kafka, s3, topic: str, dead_topic: str, late_topic: str, bucket: str, prefix: str) -> dict[str, str]:
    """A bounded run of the job against the test services."""
    return {
        "KAFKA_BROKERS": kafka.bootstrap,
        "IMPRESSIONS_TOPIC": topic,
        "DEAD_LETTER_TOPIC": dead_topic,
        "LATE_TOPIC": late_topic,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": bucket,
        "S3_PREFIX": prefix,
        "BOUNDED": "true",
    }


def test_traffic_exercises_the_hard_cases(produced) -> None:
    """The generated input really has what the test below claims to cover."""
    _, events = produced
    valid = [e for e in events if e.kind == "valid"]
    late = [e for e in events if e.kind == "late"]
    assert len(events) >= 20_000 and len({e.timestamp // WINDOW_MS for e in valid}) >= 4
    assert max(e.timestamp for e in valid) - min(e.timestamp for e in valid) >= 2 * 3600 * 1000
    assert 0.02 < sum(e.kind == "invalid" for e in events) / len(events) < 0.05
    # Out of order within the bound...
    assert any(b.timestamp < a.timestamp for a, b in itertools.pairwise(valid))
    # ...and late events for movies that had no impressions for over a window: no open window left.
    last_seen = {}
    for_quiet_keys = 0
    for e in events:
        if e.kind == "valid":
            last_seen[e.movie_id] = e.timestamp
        elif e.kind == "late" and e.timestamp is not None:
            if last_seen.get(e.movie_id, 0) < e.timestamp - e.timestamp % WINDOW_MS:
                for_quiet_keys += 1
    assert len(late) >= 50 and for_quiet_keys >= 10


@pytest.mark.parametrize(("workers", "reader"), [(1, "confluent"), (2, "confluent"), (2, "native")])
def test_output_equals_independent_computation(kafka, s3, produced, tmp_path: Path, workers: int, reader: str) -> None:
    topic, events = produced
    run_id = f"w{workers}{reader[0]}-{tmp_path.name[-12:]}"
    dead_topic, late_topic, bucket, prefix = f"dead-{run_id}", f"late-{run_id}", f"bucket-{run_id}".lower(), "out/impr"
    make_topics(kafka, dead_topic, late_topic)
    s3.create_bucket(bucket)
    env = {**job_env(kafka, s3, topic, dead_topic, late_topic, bucket, prefix), "KAFKA_BATCH_SIZE": "500"}
    env["KAFKA_READER"] = reader
    result = run_dataflow(
        FLOWS["movie-impressions"], env, workers=workers, recovery=init_recovery(tmp_path / "recovery")
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = read_s3_rows(s3, bucket, prefix)
    expected = expected_rows(events)
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected)

    # Every row sits in <prefix>/<yyyy-MM-dd--HH of its window start, UTC>/<movieId>/.
    folders = rows.select(
        pl.col("object").str.extract(r"^(.*)/[^/]+$"),
        pl.format(
            "{}/{}/{}",
            pl.lit(prefix),
            pl.from_epoch("windowStart", time_unit="ms").dt.strftime("%Y-%m-%d--%H"),
            pl.col("movieId"),
        ).alias("expected"),
    )
    assert (folders["object"] == folders["expected"]).all()
    assert rows["object"].str.ends_with(".parquet").all()

    dead = [json.loads(v) for _, v in read_topic(kafka.bootstrap, dead_topic)]
    assert Counter(raw_of(d) for d in dead) == Counter(e.value for e in events if e.kind == "invalid")
    assert all(d["error"] and d["topic"] == topic and d["offset"] is not None for d in dead)

    late = [json.loads(v) for _, v in read_topic(kafka.bootstrap, late_topic)]
    assert Counter(raw_of(r) for r in late) == Counter(e.value for e in events if e.kind == "late")
    assert all(r["windowEnd"] <= r["watermark"] for r in late)


def test_csv_output(kafka, s3, tmp_path: Path, unique: str) -> None:
    topic, dead_topic, late_topic, bucket = (
        f"csv-in-{unique}",
        f"csv-dead-{unique}",
        f"csv-late-{unique}",
        f"csv-{unique}",
    )
    make_topics(kafka, topic, dead_topic, late_topic)
    s3.create_bucket(bucket)
    events = list(generate(TrafficShape(count=3000, movies=3, users=5, step_ms=1000, seed=3)))
    produce(iter(events), kafka.bootstrap, topic)
    env = {**job_env(kafka, s3, topic, dead_topic, late_topic, bucket, "csv"), "OUTPUT_FORMAT": "csv"}
    result = run_dataflow(FLOWS["movie-impressions"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_s3_rows(s3, bucket, "csv", fmt="csv")
    assert rows["object"].str.ends_with(".csv").all()
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))
