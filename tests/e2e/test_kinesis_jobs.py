"""Both jobs on Kinesis in and out (TRANSPORT=kinesis), against the local Kinesis server."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from connectors.transports.kinesis.records import split_id
from devstack.kinesis import read_stream
from producers.bookings import BookingTraffic, GeneratedBooking, generate_bookings
from producers.movie_impressions import TrafficShape, generate
from tests.support.data import read_s3_rows
from tests.support.jobs import FLOWS, Job, init_recovery, run_dataflow, wait_for
from tests.support.kinesis import merge, open_shards, put, split
from tests.support.oracles import expected_rows, raw_of
from tests.support.runs import check_booking_records, newest_snapshot_epoch

BOUND_S = 2


def booking_streams(kinesis, kinesis_stream) -> dict[str, str]:
    return {
        "TRANSPORT": "kinesis",
        "KINESIS_ENDPOINT_URL": kinesis.endpoint_url,
        "KINESIS_DISCOVERY_SECONDS": "1",
        "CREATED_TOPIC": kinesis_stream(2),
        "EVENTS_TOPIC": kinesis_stream(2),
        "ALERTS_TOPIC": kinesis_stream(1),
        "UNMATCHED_TOPIC": kinesis_stream(1),
        "DEAD_LETTER_TOPIC": kinesis_stream(1),
        "BOOKING_TIMEOUT_SECONDS": "300",
        "MAX_OUT_OF_ORDERNESS_SECONDS": str(BOUND_S),
    }


def put_bookings(client, env: dict[str, str], messages: list[GeneratedBooking]) -> None:
    for side, setting in (("created", "CREATED_TOPIC"), ("event", "EVENTS_TOPIC")):
        put(client, env[setting], [(m.key.decode(), m.value) for m in messages if m.side == side])


def read_once(client, stream: str) -> list[tuple[str, bytes]]:
    """The stream's records as the job made them (without the sink's `outputId`): each id once."""
    records = [(key, *split_id(data)) for key, data in read_stream(client, stream)]
    ids = Counter(rid for _, rid, _ in records)
    assert None not in ids and [i for i, n in ids.items() if n > 1] == [], f"{stream}: repeated or missing outputIds"
    return [(key, value) for key, _, value in records]


def check_bookings(client, env: dict[str, str], messages: list[GeneratedBooking], *, repeats: bool) -> None:
    check_booking_records(
        read_once(client, env["ALERTS_TOPIC"]),
        read_once(client, env["UNMATCHED_TOPIC"]),
        read_once(client, env["DEAD_LETTER_TOPIC"]),
        messages,
        allow_identical_repeats=repeats,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_booking_correlation_on_kinesis_equals_the_oracle(
    kinesis, kinesis_stream, tmp_path: Path, workers: int
) -> None:
    env = {**booking_streams(kinesis, kinesis_stream), "BOUNDED": "true"}
    messages = generate_bookings(BookingTraffic(count=1500, step_ms=200, invalid_fraction=0.02, seed=workers))
    put_bookings(kinesis.client(), env, messages)

    result = run_dataflow(FLOWS["booking-correlation"], env, workers=workers, recovery=init_recovery(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    check_bookings(kinesis.client(), env, messages, repeats=False)


def test_booking_correlation_survives_resharding_and_a_sigkill(kinesis, kinesis_stream, tmp_path: Path) -> None:
    """Split and merge while the job runs and traffic flows; then SIGKILL, down past the
    lateness bound, and a resume: every alert once (repeats byte-identical), nothing lost."""
    env = booking_streams(kinesis, kinesis_stream)
    client = kinesis.client()
    messages = generate_bookings(BookingTraffic(count=3000, step_ms=200, invalid_fraction=0.01, seed=5))
    third = len(messages) // 3
    thirds = [messages[:third], messages[third : 2 * third], messages[2 * third :]]
    recovery = init_recovery(tmp_path / "r")
    job = Job(FLOWS["booking-correlation"], {**env, "BOUNDED": "false"}, tmp_path / "run-1.log", recovery=recovery)
    try:
        put_bookings(client, env, thirds[0])
        wait_for(lambda: read_stream(client, env["ALERTS_TOPIC"]), 60, "first alerts", job)
        for setting in ("CREATED_TOPIC", "EVENTS_TOPIC"):
            split(client, env[setting], open_shards(client, env[setting])[0]["ShardId"])
        put_bookings(client, env, thirds[1])
        for setting in ("CREATED_TOPIC", "EVENTS_TOPIC"):
            first, second = open_shards(client, env[setting])[:2]  # adjacent by hash range
            merge(client, env[setting], first["ShardId"], second["ShardId"])
        put_bookings(client, env, thirds[2])
        stored = newest_snapshot_epoch(recovery)
        wait_for(lambda: newest_snapshot_epoch(recovery) > stored + 1, 60, "snapshots after the last traffic", job)
    finally:
        job.kill()
    time.sleep(BOUND_S + 1)  # down longer than the lateness bound

    result = run_dataflow(FLOWS["booking-correlation"], {**env, "BOUNDED": "true"}, recovery=recovery)
    assert result.returncode == 0, result.stderr[-3000:]
    check_bookings(client, env, messages, repeats=True)


def test_movie_impressions_from_kinesis_into_s3_is_exact(kinesis, kinesis_stream, s3, tmp_path: Path) -> None:
    bucket = f"kin-{tmp_path.name[-8:]}".lower().replace("_", "-")
    s3.create_bucket(bucket)
    env = {
        "TRANSPORT": "kinesis",
        "KINESIS_ENDPOINT_URL": kinesis.endpoint_url,
        "IMPRESSIONS_TOPIC": kinesis_stream(2),
        "DEAD_LETTER_TOPIC": kinesis_stream(1),
        "LATE_TOPIC": kinesis_stream(1),
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": bucket,
        "BOUNDED": "true",
    }
    events = list(
        generate(
            TrafficShape(
                count=4000, movies=6, users=20, step_ms=2000, invalid_fraction=0.02, late_fraction=0.01, seed=4
            )
        )
    )
    put(kinesis.client(), env["IMPRESSIONS_TOPIC"], [(e.key.decode(), e.value) for e in events])

    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_s3_rows(s3, bucket, "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(events))
    dead = [json.loads(v) for _, v in read_stream(kinesis.client(), env["DEAD_LETTER_TOPIC"])]
    assert Counter(map(raw_of, dead)) == Counter(e.value for e in events if e.kind == "invalid")
    late = [json.loads(v) for _, v in read_stream(kinesis.client(), env["LATE_TOPIC"])]
    assert Counter(map(raw_of, late)) == Counter(e.value for e in events if e.kind == "late")
