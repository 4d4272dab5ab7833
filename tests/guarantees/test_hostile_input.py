"""Hostile messages through the running jobs on the real broker.

Each job gets HOSTILE_MESSAGES hostile messages (a seeded 1,000 in `make test`,
10,000 in `make test-guarantees`) mixed into ordinary traffic, plus valid messages of
unusual shape. The job must exit 0, its dead-letter topic must hold exactly the
hostile messages, and its output must equal the oracle over the valid ones.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from polars.testing import assert_frame_equal

from producers.bookings import BookingTraffic, GeneratedBooking, generate_bookings, messages_for
from producers.kafka_producer import produce_messages
from producers.movie_impressions import GeneratedEvent, TrafficShape, generate
from tests.support.data import make_topics, read_s3_rows, read_topic
from tests.support.hostile import MUTATIONS, hostile, odd_but_valid, odd_format
from tests.support.jobs import FLOWS, Job, init_recovery, run_dataflow, wait_for
from tests.support.oracles import expected_rows, raw_of
from tests.support.runs import check_booking_outputs

HOSTILE = int(os.environ.get("HOSTILE_MESSAGES", "1000"))
SEED = 13
ODD_PREFIXES = ["..-", "/-", "\U0001f3ac-", "\u05d0\u05d1-", "e\u0301-", "\\-"]


def impressions_with_hostile(hostile_count: int, seed: int) -> list[GeneratedEvent]:
    """Valid traffic with `hostile_count` hostile messages and 5 % odd-but-valid ones spread through it."""
    rng = random.Random(seed)
    valid = list(
        generate(TrafficShape(count=max(3000, hostile_count // 2), movies=6, users=20, jitter_ms=1500, seed=seed))
    )
    after = Counter(rng.randrange(len(valid)) for _ in range(hostile_count))
    out: list[GeneratedEvent] = []
    for i, event in enumerate(valid):
        out.append(event)
        record = json.loads(event.value)
        for _ in range(after[i]):
            _, raw = hostile(rng, record, rng.choice(["movieId", "userId"]), "timestamp")
            out.append(GeneratedEvent(b"hostile", raw, "invalid"))
        if rng.random() < 0.05:  # same event time as its neighbour: never late
            meant, raw = odd_but_valid(rng, record, rng.choice(["movieId", "userId"]))
            out.append(GeneratedEvent(b"odd", raw, "valid", meant["movieId"], meant["userId"], meant["timestamp"]))
    return out


def impressions_env(kafka, s3, run_id: str) -> dict[str, str]:
    topics = {
        "IMPRESSIONS_TOPIC": f"hostile-in-{run_id}",
        "DEAD_LETTER_TOPIC": f"hostile-dead-{run_id}",
        "LATE_TOPIC": f"hostile-late-{run_id}",
    }
    make_topics(kafka, *topics.values())
    s3.create_bucket(f"hostile-{run_id}")
    return {
        **topics,
        "KAFKA_BROKERS": kafka.bootstrap,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "S3_BUCKET": f"hostile-{run_id}",
        "BOUNDED": "true",
    }


def assert_impressions_outcome(kafka, s3, env: dict[str, str], sent: list[GeneratedEvent]) -> None:
    dead = [json.loads(v) for _, v in read_topic(kafka.bootstrap, env["DEAD_LETTER_TOPIC"])]
    assert Counter(map(raw_of, dead)) == Counter(e.value for e in sent if e.kind == "invalid")
    assert {d["kind"] for d in dead} == {"invalid"}, "hostile input made our own code fail"
    assert read_topic(kafka.bootstrap, env["LATE_TOPIC"]) == []
    rows = read_s3_rows(s3, env["S3_BUCKET"], "impressions")
    assert_frame_equal(rows.drop("object").sort("movieId", "userId", "windowStart"), expected_rows(sent))


def test_impressions_job_dead_letters_every_hostile_message(kafka, s3, tmp_path: Path) -> None:
    env = impressions_env(kafka, s3, uuid.uuid4().hex[:8])
    sent = impressions_with_hostile(HOSTILE, SEED)
    assert {e.value for e in sent if e.kind == "invalid"}, "the traffic must hold hostile messages"
    produce_messages(((env["IMPRESSIONS_TOPIC"], e.key, e.value) for e in sent), kafka.bootstrap)

    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=init_recovery(tmp_path / "recovery"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_impressions_outcome(kafka, s3, env, sent)


def committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    """The sum of a consumer group's committed offsets on a topic (the job commits at every snapshot)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    except KafkaException:  # the group coordinator of a fresh broker is still loading
        return 0
    finally:
        consumer.close()


def test_a_restart_over_hostile_messages_passes_them(kafka, s3, tmp_path: Path) -> None:
    """Killed, then restarted over a topic whose next records are one hostile message of every kind."""
    env = {**impressions_env(kafka, s3, uuid.uuid4().hex[:8]), "CONSUMER_GROUP": f"g-{uuid.uuid4().hex[:8]}"}
    recovery = init_recovery(tmp_path / "recovery")
    rng = random.Random(SEED)
    traffic = list(generate(TrafficShape(count=2000, movies=4, users=10, jitter_ms=1500, seed=SEED)))
    first, second = traffic[:1000], traffic[1000:]
    record = json.loads(first[-1].value)
    bad = [GeneratedEvent(b"hostile", m(rng, record, "movieId", "timestamp"), "invalid") for m in MUTATIONS.values()]

    produce_messages(((env["IMPRESSIONS_TOPIC"], e.key, e.value) for e in first), kafka.bootstrap)
    job = Job(FLOWS["movie-impressions"], {**env, "BOUNDED": "false"}, tmp_path / "run-1.log", recovery=recovery)
    try:
        wait_for(
            lambda: committed_offsets(kafka.bootstrap, env["CONSUMER_GROUP"], env["IMPRESSIONS_TOPIC"]) == len(first),
            120,
            "a snapshot at the end of the first part",
            job,
        )
    finally:
        job.kill()
    produce_messages(((env["IMPRESSIONS_TOPIC"], e.key, e.value) for e in bad + second), kafka.bootstrap)

    result = run_dataflow(FLOWS["movie-impressions"], env, recovery=recovery)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_impressions_outcome(kafka, s3, env, first + bad + second)


def bookings_with_hostile(hostile_count: int, seed: int) -> list[GeneratedBooking]:
    rng = random.Random(seed)
    traffic = generate_bookings(BookingTraffic(count=max(2000, hostile_count // 4), step_ms=200, seed=seed))
    # Odd but valid ids on both sides of 5 % of the bookings.
    renamed = {m.booking_id: rng.choice(ODD_PREFIXES) + str(m.booking_id) for m in traffic if rng.random() < 0.05}
    out: list[GeneratedBooking] = []
    after = Counter(rng.randrange(len(traffic)) for _ in range(hostile_count))
    for i, m in enumerate(traffic):
        assert m.record is not None and m.booking_id is not None
        record = {**m.record, "bookingId": renamed.get(m.booking_id, m.booking_id)}
        ts_field = "createdAt" if m.side == "created" else "timestamp"
        value = odd_format(rng, record, "bookingId") if rng.random() < 0.05 else json.dumps(record).encode()
        out.append(GeneratedBooking(m.side, m.key, value, m.send_at, m.kind, record["bookingId"], record))
        for _ in range(after[i]):
            _, raw = hostile(rng, record, "bookingId", ts_field)
            out.append(GeneratedBooking(m.side, b"hostile", raw, m.send_at, "invalid"))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_booking_job_dead_letters_every_hostile_message(kafka, tmp_path: Path, workers: int) -> None:
    run_id = uuid.uuid4().hex[:8]
    env = {
        "CREATED_TOPIC": f"hostile-created-{run_id}",
        "EVENTS_TOPIC": f"hostile-events-{run_id}",
        "ALERTS_TOPIC": f"hostile-alerts-{run_id}",
        "UNMATCHED_TOPIC": f"hostile-unmatched-{run_id}",
        "DEAD_LETTER_TOPIC": f"hostile-dead-{run_id}",
    }
    make_topics(kafka, *env.values())
    sent = bookings_with_hostile(HOSTILE // 2, SEED + workers)
    produce_messages(messages_for(sent, env["CREATED_TOPIC"], env["EVENTS_TOPIC"]), kafka.bootstrap)
    env = {**env, "KAFKA_BROKERS": kafka.bootstrap, "BOOKING_TIMEOUT_SECONDS": "300", "BOUNDED": "true"}

    result = run_dataflow(
        FLOWS["booking-correlation"], env, workers=workers, recovery=init_recovery(tmp_path / "recovery")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_booking_outputs(kafka, env, sent, allow_identical_repeats=False)
